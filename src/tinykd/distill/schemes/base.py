"""The Scheme protocol: who teaches the distilled student. One class per scheme, registered by its recipe name
(``distill.scheme``) in ``registry.SCHEMES``; adding a scheme is one file with one ``@register_scheme`` class.

A scheme owns four things:

* its recipe section: which ``distill.*`` lists only it reads (``fields``) and the checks of its settings, run
  by the recipe while it validates (classmethods ``check_section`` and ``check_recipe``);
* a run: what teaches (``prepare``: the teacher source, a batch source, the training split), what the trainer
  trains (``trained_module``), the extra models it makes (``models``: measured as variants), their training rows
  (``history``), and the int8 calibration inputs it asks for (``calibration``);
* its facts for metrics.json (``finish``);
* what the report says of it (``report(facts)``, ``phrase``), from metrics.json alone.

Schemes never import the stages: what they need of them (building a model for a recipe field, training a teacher,
fresh loss terms) comes in a ``SchemeContext``.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from rich.console import Console
from torch import nn

from ...data.spec import DataBundle, Split
from ...recipe import DistillConfig, ModelConfig, Recipe
from ..cache import TeacherCache
from ..sources import BatchSource


@dataclass
class SchemeContext:
    """What a scheme may use of the run it serves."""

    recipe: Recipe
    bundle: DataBundle
    run_dir: Path
    console: Console
    progress: bool
    build: Callable[[str, dict, str, int], nn.Module]  # (model, kwargs, recipe field, seed) -> a fresh registry model
    train_or_load: Callable[[nn.Module, ModelConfig, str, str], list[dict]]  # (model, config, label, field) -> rows
    terms: Callable[[], list]  # fresh (weight, term) pairs of distill.losses
    resolve_dir: Callable[[str], Path]  # a folder the recipe names, relative to the recipe's folder when not here


@dataclass
class SchemeFigure:
    """A figure of the report's Scheme section, an image file the run wrote."""

    path: str  # relative to the run folder
    id: str
    alt: str
    title: str
    caption: str


@dataclass
class SchemeReport:
    """What the report's Scheme section shows, as plain text and data (the report renders it)."""

    shown: bool = True
    intro: str | None = None
    stages: list[dict] | None = None  # a chain: one table row per stage (stage, label, teacher, params, ...)
    teachers: list[str] | None = None  # an ensemble: its members' variant names
    notes: list[str] = field(default_factory=list)
    figure: SchemeFigure | None = None


Prepared = tuple[object | None, BatchSource | None, Split | None]  # (teacher source, batch source, training split)


class Scheme:
    """Who teaches the distilled student, and what the recipe, metrics.json and the report say of it."""

    name: ClassVar[str]
    phrase: ClassVar[str] = "Distillation"  # the report's name for what taught the student ("Distillation lifts ...")
    fields: ClassVar[tuple[str, ...]] = ()  # distill.<field> lists that only this scheme reads
    teacher_in_loop: ClassVar[bool] = True  # a teacher teaches during training (else no term may need one)
    takes_unlabelled: ClassVar[bool] = True  # the teacher labels a labelling budget's unlabelled training inputs
    checked_paths: ClassVar[tuple[str, ...]] = ("student",)  # models whose layer paths preflight checks
    preflight_setup: ClassVar[bool] = False  # preflight builds the terms' helpers against the one teacher model
    variant_words: ClassVar[dict[str, str]] = {}  # numbered variants it makes: {"teacher_": "Teacher"}

    # ----- the recipe section ----------------------------------------------------------------------------------
    @classmethod
    def check_section(cls, d: DistillConfig, chosen: bool) -> None:
        """Raise ValueError (the recipe's validators turn it into a RecipeError) when ``d`` misuses this scheme's
        settings: its own lists set for another scheme, or, when ``chosen``, settings it cannot honour."""
        if chosen:
            cls.check_chosen(d)
            return
        for name in cls.fields:
            if getattr(d, name):
                raise ValueError(f"distill.{name} is used only by scheme {cls.name}: set distill.scheme={cls.name}")

    @classmethod
    def check_chosen(cls, d: DistillConfig) -> None:
        """The checks of ``d`` when this scheme is the one chosen."""
        if not cls.teacher_in_loop and (d.cache or d.transfer or d.mixup):
            raise ValueError(f"scheme {cls.name} has no teacher in the loop: remove distill.cache, "
                             "distill.transfer and distill.mixup")

    @classmethod
    def check_recipe(cls, recipe: Recipe) -> None:
        """Checks across the recipe's sections when this scheme is chosen (ValueError)."""

    @classmethod
    def term_params(cls, name: str, params: dict, d: DistillConfig) -> dict:
        """The hyper-parameters of loss term ``name`` in this scheme (defaults it fills in)."""
        return params

    @classmethod
    def extra_models(cls, d: DistillConfig) -> list[tuple[str, ModelConfig, bool]]:
        """(recipe field, config, whether its checkpoint is loaded) of every model the scheme builds besides the
        teacher and the student: preflight builds each."""
        return []

    @classmethod
    def variant_configs(cls, d: DistillConfig) -> dict[str, ModelConfig]:
        """The recipe config of each variant the scheme makes, by variant name."""
        return {}

    # ----- a run -----------------------------------------------------------------------------------------------
    def __init__(self, ctx: SchemeContext):
        self.ctx = ctx
        self.d = ctx.recipe.distill
        self.facts: dict = {"name": self.name}
        self.models: dict[str, nn.Module] = {}  # extra variants, in the order they are measured
        self.history: list[dict] = []  # training rows of the extra models
        self.folders: dict[str, Path] = {}  # where each extra model trained (its checkpoints)

    def prepare(self, teacher: nn.Module, student: nn.Module) -> Prepared:
        """(teacher source, batch source or None, training split or None) for the distilled student."""
        raise NotImplementedError

    def trained_module(self, student: nn.Module) -> nn.Module:
        """What the trainer trains: the student itself, unless the scheme trains it inside a group."""
        return student

    def resolved(self, d: DistillConfig) -> DistillConfig:
        """The section as this run resolved it (e.g. the automatic assistant filled in): a new config."""
        return d

    def cached(self, source):
        """``source`` behind the teacher-output cache when ``distill.cache`` is on."""
        if not self.d.cache:
            return source
        folder = self.ctx.resolve_dir(self.d.cache_dir) if self.d.cache_dir else self.ctx.run_dir / "teacher_cache"
        if self.ctx.bundle.spec.task == "causal_lm":  # an N x T x vocab store is impossible: the teacher's top-k
            from ...tasks.causal_lm import CausalLM
            from ..lm_cache import LMTopKCache

            source = LMTopKCache(source, folder, k=min(self.d.cache_top_k, self.ctx.bundle.spec.vocab_size),
                                 collate=CausalLM().collate)
        else:
            source = TeacherCache(source, folder, preprocessing=self.ctx.bundle.info.get("normalize"))
        self.facts["cache_dir"] = str(folder)
        return source

    def finish(self, source, result, student: nn.Module) -> dict:
        """The scheme's facts for metrics.json once the student has trained (``result``: its TrainResult)."""
        if hasattr(source, "stats") and self.d.cache:  # TeacherCache, LMTopKCache
            self.facts["cache_stats"] = dict(source.stats)
            if hasattr(source, "bytes_per_token"):
                self.facts["cache_bytes_per_token"] = source.bytes_per_token
        return self.facts

    def calibration(self, n: int) -> np.ndarray | None:
        """Int8 calibration inputs the scheme asks for (standardised like the training split); None: the default,
        a class-balanced training subset."""
        return None

    # ----- the report ------------------------------------------------------------------------------------------
    @classmethod
    def report(cls, facts: dict) -> SchemeReport:
        """The report's Scheme section from the scheme's facts in metrics.json."""
        out = SchemeReport()
        stats = facts.get("cache_stats")
        if stats:
            out.notes.append(
                f"Teacher-output cache ({facts.get('cache_dir', '')}): {stats.get('hits', 0):,} samples served from the "
                f"store, {stats.get('computed', 0):,} computed and stored, {stats.get('live', 0):,} run live (no "
                "cacheable index, e.g. mixed or transfer inputs).")
        return out
