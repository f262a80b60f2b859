"""The student stages: the from-scratch baseline (the same student on the labels alone) and the distilled student,
taught as the recipe's scheme says (``distill.scheme``, a class of ``tinykd.distill.schemes.SCHEMES``)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from torch import nn

from .. import distributed as dist
from ..data import load_dataset
from ..data.spec import DataBundle
from ..distill.callbacks import default_callbacks
from ..distill.schemes import Scheme, SchemeContext, get_scheme
from ..distill.trainer import Trainer, TrainResult
from ..errors import RecipeError, TinyKDError
from ..measure import count_params
from ..models.transformer import init_from_teacher
from ..recipe import Recipe
from ..tasks import get_task
from .common import EnergyTracker, build_terms, ce_terms, create, fresh_student, resolve_dir
from .teacher import train_or_load


@dataclass
class ScratchResult:
    """The student trained on the labels alone: the baseline distillation is measured against."""

    student: nn.Module
    history: list[dict]
    folder: Path  # its checkpoints (trained_weights)


@dataclass
class DistillResult:
    """The distilled student and what its scheme made and says."""

    student: nn.Module
    history: list[dict]  # training rows of the scheme's extra models, then of the student
    scheme: dict  # the scheme's facts (metrics.json "scheme")
    helper_params: int  # parameters the loss terms' helpers added for training (never exported)
    calibration: np.ndarray | None  # int8 calibration inputs the scheme asks for (None: a training subset)
    models: dict[str, nn.Module]  # the scheme's extra variants (teacher_2, assistant1, peer_2, ...), then "student"
    recipe: Recipe  # the recipe as the scheme resolved it (e.g. the automatic assistant filled in)
    result: TrainResult  # the student's training: best epoch, its validation accuracy, rows
    trained: nn.Module  # what the trainer trained and checkpointed: the student, or the group it trained in
    folders: dict[str, Path]  # the checkpoint folder of each model trained here (trained_weights), by variant


def train_scratch(recipe: Recipe, bundle: DataBundle, run_dir: Path, *, student: nn.Module | None = None,
                  tracked: EnergyTracker | None = None, console: Console | None = None,
                  progress: bool = True) -> ScratchResult:
    """A fresh student (the recipe's, or a copy of the module ``student``) trained on the labels in
    ``run_dir/student_scratch``."""
    console = console or Console(quiet=not progress)
    tracked = tracked or EnergyTracker(recipe, run_dir)
    scratch = fresh_student(recipe, bundle.spec, student)
    with tracked("student_scratch"):
        res = Trainer(scratch, ce_terms(recipe.student.train), recipe.student.train, out_dir=run_dir / "student_scratch",
                      label="student_scratch", seed=recipe.seed, console=console, progress=progress,
                      task=get_task(bundle.spec.task)).fit(bundle.train, bundle.val)
    return ScratchResult(scratch, res.history, Path(run_dir) / "student_scratch")


def scheme_context(recipe: Recipe, bundle: DataBundle, run_dir: Path, *, tracked: EnergyTracker | None = None,
                   console: Console | None = None, progress: bool = True) -> SchemeContext:
    """What a scheme may use of this run: the stages' model builder, teacher training and loss terms."""
    console = console or Console(quiet=not progress)
    tracked = tracked or EnergyTracker(recipe, run_dir)
    return SchemeContext(
        recipe, bundle, Path(run_dir), console, progress,
        build=lambda name, kwargs, where, seed: create(name, kwargs, bundle.spec, where, seed),
        train_or_load=lambda model, cfg, label, where: train_or_load(model, cfg, label, where, recipe, bundle, run_dir,
                                                                     tracked=tracked, console=console,
                                                                     progress=progress),
        terms=lambda: build_terms(recipe), resolve_dir=lambda path: resolve_dir(path, recipe.base_dir))


def distill(recipe: Recipe, bundle: DataBundle, run_dir: Path, teacher: nn.Module | None, *,
            student: nn.Module | None = None, terms: list | None = None, tracked: EnergyTracker | None = None,
            console: Console | None = None, progress: bool = True, callbacks: list | None = None) -> DistillResult:
    """A fresh student (the recipe's, or a copy of the module ``student``) distilled from the frozen ``teacher`` in
    ``run_dir/student`` with ``distill.losses`` (or ``terms``, already built), by the recipe's scheme; transfer
    inputs and a labelling budget's unlabelled inputs are labelled by the teacher. Schemes without a teacher in the
    loop (online, self) take ``teacher=None``. ``callbacks`` (``tinykd.distill.callbacks.Callback``) join the
    student's default ones, after them (a search reports each epoch's validation accuracy to its trial)."""
    console = console or Console(quiet=not progress)
    tracked = tracked or EnergyTracker(recipe, run_dir)
    terms = build_terms(recipe) if terms is None else terms
    distilled = init_student(recipe, fresh_student(recipe, bundle.spec, student), teacher, console)
    transfer = distill_inputs(recipe, bundle, terms, console)
    scheme: Scheme = get_scheme(recipe.distill.scheme)(
        scheme_context(recipe, bundle, run_dir, tracked=tracked, console=console, progress=progress))
    source, batches, train = scheme.prepare(teacher, distilled)
    trained = scheme.trained_module(distilled)
    train, extra = lm_policy(recipe, teacher, train, run_dir, console)
    extra += list(callbacks or [])
    with tracked("student"):
        res = Trainer(trained, terms, recipe.student.train, out_dir=run_dir / "student", label="student",
                      seed=recipe.seed, teacher=source, console=console, progress=progress, transfer=transfer,
                      callbacks=extra,
                      mixup=recipe.distill.mixup, batches=batches, task=get_task(bundle.spec.task)
                      ).fit(train, bundle.val)
    helper_params = sum(count_params(t) for _, t in terms)
    facts = scheme.finish(source, res, distilled)
    return DistillResult(distilled, scheme.history + res.history, facts, helper_params,
                         scheme.calibration(recipe.quantize.calibration_samples), {**scheme.models, "student": distilled},
                         recipe.model_copy(update={"distill": scheme.resolved(recipe.distill)}), res, trained,
                         {**scheme.folders, "student": Path(run_dir) / "student"})


def lm_policy(recipe: Recipe, teacher: nn.Module | None, train, run_dir: Path, console: Console):
    """The training split and trainer callbacks of the distilled student: for a language model, the teacher's
    generations in place of the blocks (``distill.sequence_kd``, generated once and kept in
    ``student/sequence_kd.safetensors``) and GKD's on-policy batches (``distill.on_policy``); otherwise the split
    unchanged and the default callbacks."""
    from ..io import load_tensors, save_tensors

    d = recipe.distill
    callbacks = default_callbacks(recipe.student.train)
    if d.sequence_kd is not None and train is not None:
        from ..data.spec import Split
        from ..distill.lm_policy import sequence_kd_split

        path = Path(run_dir) / "student" / "sequence_kd.safetensors"

        def generate(train):
            s = d.sequence_kd
            with console.status(f"sequence-level KD: the teacher continues {len(train):,} training prompts"):
                train = sequence_kd_split(teacher, train, s.prompt_tokens, temperature=s.temperature, top_k=s.top_k,
                                          seed=recipe.seed)
            save_tensors(path, {"x": train.x, "y": train.y, "mask": train.mask})

        if not path.is_file():
            dist.from_main(generate, train)  # several processes: rank 0 generates, the others read its file
        saved = load_tensors(path)
        train = Split(saved["x"], saved["y"], saved["mask"])
        console.print(f"sequence-level KD: the student learns the teacher's continuations of {len(train):,} prompts "
                      f"of {d.sequence_kd.prompt_tokens} tokens")
    if d.on_policy is not None:
        from ..distill.lm_policy import OnPolicy

        p = d.on_policy
        callbacks.append(OnPolicy(p.fraction, p.prompt_tokens, p.temperature, p.top_k, teacher_mix=p.teacher_mix))
    return train, callbacks


def init_student(recipe: Recipe, student: nn.Module, teacher: nn.Module | None,
                 console: Console | None = None) -> nn.Module:
    """``student`` with the teacher's weights copied in when ``student.init_layers`` asks for DistilBERT's
    initialisation (the kept teacher layers, embeddings, pooler and classifier); unchanged otherwise. A layer list or
    a student that does not fit the teacher is a RecipeError naming the teacher's layers."""
    layers = recipe.student.init_layers
    if layers is None:
        return student
    if teacher is None:
        raise RecipeError(f"student.init_layers copies the teacher's layers into the student, but the "
                          f"'{recipe.distill.scheme}' scheme has no teacher", "leave student.init_layers out",
                          where="student.init_layers")
    try:
        kept = init_from_teacher(student, teacher, layers)
    except TinyKDError as err:
        raise RecipeError(err.what, err.fix, where="student.init_layers") from None
    if console is not None:
        console.print(f"student initialised from the teacher's layers {kept} (embeddings, pooler, classifier too)")
    return student


def distill_inputs(recipe: Recipe, bundle: DataBundle, terms: list, console: Console) -> torch.Tensor | None:
    """Inputs only the teacher labels for the distilled student: the transfer set and the unlabelled training
    inputs of a labelling budget (``data.labelled``, used when a loss term learns from the teacher and the scheme
    lets the teacher label them, ``Scheme.takes_unlabelled``)."""
    parts = [transfer_inputs(recipe, bundle, console)] if recipe.distill.transfer else []
    if bundle.unlabelled is not None and len(bundle.unlabelled):
        if any(t.needs_teacher for _, t in terms) and get_scheme(recipe.distill.scheme).takes_unlabelled:
            parts.append(bundle.unlabelled)
            console.print(f"unlabelled training inputs: {len(bundle.unlabelled)} (teacher-labelled, for the "
                          f"distilled student; {len(bundle.train)} keep their labels)")
        else:
            console.print(f"[yellow]{len(bundle.unlabelled)} unlabelled training inputs unused: no loss term of this "
                          "scheme learns from a teacher[/]")
    return torch.cat(parts) if parts else None


def transfer_inputs(recipe: Recipe, bundle: DataBundle, console: Console) -> torch.Tensor:
    """Inputs of the unlabelled transfer set, standardised like the labelled training set."""
    t = recipe.distill.transfer
    with console.status(f"loading transfer set {t.name}"):
        extra = load_dataset(t.name, path=t.path, seed=recipe.seed, normalize=False, limit=t.limit,
                             base_dir=recipe.base_dir, **t.options)
    if tuple(extra.spec.shape) != tuple(bundle.spec.shape):
        raise RecipeError(f"distill.transfer: inputs shaped {tuple(extra.spec.shape)} do not match the training data's "
                          f"{tuple(bundle.spec.shape)}", "use a transfer set with the same input shape and front end")
    x = torch.cat([getattr(extra, s).x for s in t.splits])
    norm = bundle.info.get("normalize")
    if norm:
        x = (x - norm["mean"]) / norm["std"]
    console.print(f"transfer set: {len(x)} unlabelled inputs from {extra.name} (labels dropped, teacher-labelled)")
    return x
