"""Distillation chains: teacher → assistant(s) → student, each stage a full offline distillation.

Mirzadeh et al. (AAAI 2020), Improved Knowledge Distillation via Teacher Assistant: when the gap between teacher
and student is large, an intermediate-size assistant distilled from the teacher teaches the student better than
the teacher does. ``assistant_kwargs`` picks assistant sizes between the two (geometric interpolation of the
parameter counts, found by a width sweep of one model family); ``distill_chain`` runs the stages in order, each in
its own folder, so a finished stage is reused and an interrupted one resumes (born-again generations are a chain
of one architecture). The scheme: ``Assistant``.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from torch import nn

from ...data.spec import Split
from ...errors import RecipeError, TinyKDError
from ...inference import predict_logits
from ...io import read_json
from ...models import count_params, create_model
from ...recipe import DistillConfig, ModelConfig, TrainConfig
from ..losses.base import LossTerm, build_loss
from ..trainer import Trainer
from .base import Prepared, Scheme, SchemeReport
from .registry import register_scheme

TermFactory = Callable[[], list[tuple[float, LossTerm]]]


def default_kd() -> list[tuple[float, LossTerm]]:
    """Hinton KD, T = 4, α = 0.9: the loss of every distilled stage unless told otherwise."""
    return [(1.0, build_loss("kd", {"temperature": 4.0, "alpha": 0.9}))]


@dataclass
class StageResult:
    """One stage of a chain: who learned from whom, and how well."""

    stage: int
    label: str
    teacher: str | None  # the previous stage's label; None for a stage trained on labels alone
    params: int
    best_epoch: int
    best_val_accuracy: float
    epochs: int
    reused: bool  # a finished checkpoint in the stage folder was loaded instead of training
    out_dir: Path
    model: nn.Module = field(repr=False)

    def row(self) -> dict:
        """The result as a plain dict (no model), e.g. for a table or metrics.json."""
        out = {k: v for k, v in self.__dict__.items() if k != "model"}
        out["out_dir"] = str(self.out_dir)
        return out


def _finished(folder: Path) -> bool:
    state = folder / "last.json"
    return state.is_file() and bool(read_json(state).get("finished"))


def distill_chain(models: Sequence[tuple[str, nn.Module]], train: Split, val: Split, cfg: TrainConfig, *,
                  out_dir: Path, terms: TermFactory | None = None, first_cfg: TrainConfig | None = None,
                  train_first: bool = True, seed: int = 0, console: Console | None = None,
                  progress: bool = False) -> list[StageResult]:
    """Train ``models`` in order, each taught by the one before; the first learns from the labels
    (``train_first``) or is used as given (already trained). ``terms`` makes each distilled stage's loss terms
    (fresh per stage; default kd). Stage i lives in ``out_dir/stage{i}-{label}``. One StageResult per stage."""
    if len(models) < 2:
        raise TinyKDError(f"a chain needs a teacher and at least one student, got {len(models)} models",
                          "pass [(label, teacher), (label, assistant), ..., (label, student)]")
    labels = [label for label, _ in models]
    if len(set(labels)) != len(labels):
        raise TinyKDError(f"chain stage labels must be unique, got {labels}", "name every stage differently")
    terms = terms or default_kd
    out_dir = Path(out_dir)
    results: list[StageResult] = []
    for i, (label, model) in enumerate(models):
        folder = out_dir / f"stage{i}-{label}"
        teacher = results[-1] if results else None
        if i == 0 and not train_first:
            model.eval()
            results.append(StageResult(0, label, None, count_params(model), 0, _accuracy(model, val), 0, True,
                                       folder, model))
            continue
        reused = _finished(folder)
        stage_terms = [(1.0, build_loss("ce", {}))] if teacher is None else terms()
        res = Trainer(model, stage_terms, (first_cfg or cfg) if i == 0 else cfg, out_dir=folder, label=label,
                      seed=seed, teacher=teacher.model if teacher else None, console=console,
                      progress=progress).fit(train, val)
        model.eval()
        results.append(StageResult(i, label, teacher.label if teacher else None, count_params(model), res.best_epoch,
                                   res.best_val_accuracy, len(res.history), reused, folder, model))
    return results


def _accuracy(model: nn.Module, split: Split) -> float:
    if len(split) == 0:
        return float("nan")
    return (predict_logits(model, split.x).argmax(1) == split.y).float().mean().item()


# ----- assistant sizes ----------------------------------------------------------------------------
def scale_width(value: object, scale: float) -> object:
    """A width argument times ``scale``: ints and lists of ints rounded (at least 1), floats multiplied."""
    if isinstance(value, bool):
        raise TinyKDError(f"cannot scale the width argument {value!r}", "name a numeric width argument")
    if isinstance(value, int):
        return max(1, round(value * scale))
    if isinstance(value, float):
        return value * scale
    ints = isinstance(value, (list, tuple)) and value and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    if ints:
        return [max(1, round(v * scale)) for v in value]
    raise TinyKDError(f"cannot scale the width argument {value!r}",
                      "give an int, a float multiplier or a list of ints (e.g. widths=[8, 16])")


def assistant_kwargs(model: str, kwargs: dict, *, width_arg: str, num_classes: int, in_shape: tuple[int, ...],
                     teacher_params: int, student_params: int, count: int = 1,
                     scales: Sequence[float] | None = None) -> list[dict]:
    """Keyword arguments of ``count`` assistants of family ``model``, largest first, whose parameter counts are
    closest (in log scale) to the geometric interpolation P_s^(1−i/(n+1)) · P_t^(i/(n+1)) between the student's
    and the teacher's; found by scaling ``kwargs[width_arg]`` over ``scales`` (default 1/32 … 32).

    With one assistant the target is √(P_s·P_t), the geometric mean."""
    if width_arg not in kwargs:
        raise TinyKDError(f"width argument '{width_arg}' is not in the assistant's kwargs {sorted(kwargs)}",
                          f"pass kwargs with {width_arg} set, e.g. {{'{width_arg}': ...}}")
    if not 0 < student_params < teacher_params:
        raise TinyKDError(f"an assistant fits between student and teacher only when the student is smaller "
                          f"({student_params:,} vs {teacher_params:,} parameters)", "swap teacher and student")
    scales = list(scales) if scales is not None else [2 ** (e / 8) for e in range(-40, 41)]
    sweep: dict[int, dict] = {}
    for s in scales:
        trial = {**kwargs, width_arg: scale_width(kwargs[width_arg], s)}
        n = count_params(create_model(model, num_classes=num_classes, in_shape=tuple(in_shape), **trial))
        sweep.setdefault(n, trial)
    chosen = []
    for i in range(count, 0, -1):
        f = i / (count + 1)
        target = math.exp((1 - f) * math.log(student_params) + f * math.log(teacher_params))
        best = min(sweep, key=lambda n: abs(math.log(n) - math.log(target)))
        chosen.append(sweep[best])
    return chosen


def teacher_assistant_chain(teacher: nn.Module, assistants: Sequence[nn.Module], student: nn.Module, train: Split,
                            val: Split, cfg: TrainConfig, *, out_dir: Path, teacher_trained: bool = True,
                            **kwargs) -> list[StageResult]:
    """teacher → assistant1 → … → student; ``teacher_trained`` False trains the teacher first (stage 0)."""
    models = [("teacher", teacher), *((f"assistant{i + 1}", a) for i, a in enumerate(assistants)), ("student", student)]
    return distill_chain(models, train, val, cfg, out_dir=out_dir, train_first=not teacher_trained, **kwargs)


# ----- the scheme ---------------------------------------------------------------------------------
WIDTH_ARGS = ("widths", "width", "hidden", "channels", "width_mult", "base")  # tried in order to size an assistant


@register_scheme
class Assistant(Scheme):
    """teacher → ``distill.assistants`` → student, each stage a full distillation with ``distill.losses``; with no
    assistants listed, one of the student's family whose size is the geometric mean of teacher and student."""

    name = "assistant"
    phrase = "Distillation through the teacher-assistant chain"
    fields = ("assistants",)
    variant_words = {"assistant": "Assistant"}

    @classmethod
    def extra_models(cls, d: DistillConfig) -> list[tuple[str, ModelConfig, bool]]:
        return [(f"distill.assistants[{i}]", cfg, False) for i, cfg in enumerate(d.assistants)]

    @classmethod
    def variant_configs(cls, d: DistillConfig) -> dict[str, ModelConfig]:
        return {f"assistant{i}": cfg for i, cfg in enumerate(d.assistants, start=1)}

    def __init__(self, ctx):
        super().__init__(ctx)
        self.assistants: list[ModelConfig] = list(self.d.assistants)

    def resolved(self, d: DistillConfig) -> DistillConfig:
        return d if list(d.assistants) == self.assistants else d.model_copy(update={"assistants": self.assistants})

    def prepare(self, teacher: nn.Module, student: nn.Module) -> Prepared:
        ctx, r = self.ctx, self.ctx.recipe
        if not self.assistants:
            self.assistants = [self._automatic(teacher, student)]
        stages = [("teacher", teacher)]
        for i, cfg in enumerate(self.assistants, start=1):
            stages.append((f"assistant{i}", ctx.build(cfg.model, cfg.kwargs, f"distill.assistants[{i - 1}]",
                                                      r.seed + 100 + i)))
        chain = distill_chain(stages, ctx.bundle.train, ctx.bundle.val, r.student.train, out_dir=ctx.run_dir / "chain",
                              terms=ctx.terms, train_first=False, seed=r.seed, console=ctx.console,
                              progress=ctx.progress)
        for st in chain[1:]:
            self.models[st.label] = st.model.requires_grad_(False)
            self.folders[st.label] = st.out_dir
            state = st.out_dir / "last.json"
            if state.is_file():
                self.history += read_json(state).get("history", [])
        self.facts["stages"] = [{k: v for k, v in st.row().items() if k != "out_dir"} for st in chain]
        return self.cached(chain[-1].model), None, ctx.bundle.train

    def _automatic(self, teacher: nn.Module, student: nn.Module) -> ModelConfig:
        """The student's family at the width whose parameter count is nearest √(P_teacher · P_student)."""
        r, spec = self.ctx.recipe, self.ctx.bundle.spec
        if not type(student).__module__.startswith("tinykd"):
            raise RecipeError("an automatic assistant needs a registry student (the assistant is the student's "
                              "family at a larger width)", "list the assistants in distill.assistants",
                              where="distill.assistants")
        arg = self.d.assistant_width_arg or next((a for a in WIDTH_ARGS if a in r.student.kwargs), None)
        if arg is None:
            raise RecipeError(f"cannot size an assistant: student.kwargs {sorted(r.student.kwargs)} name no width "
                              f"argument ({', '.join(WIDTH_ARGS)})", "set distill.assistant_width_arg to the "
                              "student's width keyword, or list distill.assistants", where="distill.assistants")
        try:
            (kwargs,) = assistant_kwargs(r.student.model, dict(r.student.kwargs), width_arg=arg,
                                         num_classes=spec.num_classes, in_shape=tuple(spec.shape),
                                         teacher_params=count_params(teacher), student_params=count_params(student))
        except TinyKDError as err:
            raise type(err)(err.what, err.fix, where="distill.assistants") from None
        self.ctx.console.print(f"assistant chosen: {r.student.model} {arg}={kwargs[arg]} "
                               "(parameters nearest the geometric mean of teacher and student)")
        return r.student.model_copy(update={"kwargs": kwargs, "checkpoint": None})

    def finish(self, source, result, student: nn.Module) -> dict:
        super().finish(source, result, student)
        stages = self.facts["stages"]
        stages.append({"stage": len(stages), "label": "student", "teacher": stages[-1]["label"],
                       "params": count_params(student), "best_epoch": result.best_epoch,
                       "best_val_accuracy": result.best_val_accuracy})
        return self.facts

    @classmethod
    def report(cls, facts: dict) -> SchemeReport:
        out = super().report(facts)
        out.intro = ("Teacher-assistant chain (Mirzadeh et al. 2020): each stage was distilled from the one before it, "
                     "so the student learned from the last assistant, not from the teacher.")
        out.stages = facts.get("stages") or []
        return out
