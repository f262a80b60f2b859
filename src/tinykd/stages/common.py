"""Small pieces the stages share: building a model for a recipe field, finding a recipe's files, loading a
checkpoint, the recipe's loss terms, pruning with KD fine-tuning, the training-energy tracker and the display
labels of variants."""
from __future__ import annotations

import contextlib
import copy
from pathlib import Path

import torch
from rich.console import Console
from torch import nn

from .. import distributed as dist
from ..compress.prune import iterative_prune
from ..data.spec import DataBundle
from ..distill.losses import build_loss
from ..distill.schemes import get_scheme, schemes
from ..errors import RecipeError, TinyKDError
from ..io import check_finite, load_state_dict, load_tensors, load_weights
from ..models import accepts, create_model
from ..recipe import PruneConfig, Recipe, TrainConfig

LABELS = {"teacher": "Teacher (fp32)", "student_scratch": "Student from scratch (fp32)",
          "student": "Distilled student (fp32)", "student_int8": "Distilled student (int8, ORT)",
          "teacher_pruned": "Pruned teacher (fp32)", "student_pruned": "Pruned student (fp32)",
          "student_pruned_int8": "Pruned student (int8, ORT)", "student_lowrank": "Low-rank student (fp32)",
          "student_lowrank_int8": "Low-rank student (int8, ORT)", "student_qat": "QAT-KD student (int8, ORT)",
          "student_fp16": "Distilled student (fp16, ORT)", "student_dynamic_int8": "Distilled student (dynamic int8, ORT)",
          "student_tflite": "Distilled student (fp32, TFLite)", "student_tflite_int8": "Distilled student (int8, TFLite)",
          "student_pte": "Distilled student (fp32, ExecuTorch)"}


def label(name: str) -> str:
    """The display label of a variant: teacher_2 → "Teacher 2 (fp32)", assistant1 → "Assistant 1 (fp32)" (the
    numbered prefixes are the schemes' own, ``Scheme.variant_words``)."""
    if name in LABELS:
        return LABELS[name]
    for scheme in schemes():
        for prefix, word in scheme.variant_words.items():
            if name.startswith(prefix) and name[len(prefix):].isdigit():
                return f"{word} {name[len(prefix):]} (fp32)"
    return name


def create(name: str, kwargs: dict, spec, role: str, seed: int) -> nn.Module:
    """A fresh registry model for the recipe field ``role`` (errors name ``<role>.model``), seeded with ``seed``."""
    torch.manual_seed(seed)
    try:
        if getattr(spec, "vocab_size", 0) and accepts(name, "vocab_size") and "vocab_size" not in kwargs:
            kwargs = {**kwargs, "vocab_size": spec.vocab_size}  # a token model's embedding fits the data's vocabulary
        return create_model(name, num_classes=spec.num_classes, in_shape=tuple(spec.shape), **kwargs)
    except TinyKDError as err:
        raise type(err)(err.what, err.fix, where=f"{role}.model") from None


def fresh_student(recipe: Recipe, spec, given: nn.Module | None) -> nn.Module:
    """A newly initialised student: from the recipe, or a deep copy of a user module's initial weights."""
    if given is not None:
        return copy.deepcopy(given)
    return create(recipe.student.model, recipe.student.kwargs, spec, "student", recipe.seed + 1)


def resolve_file(path: str, base_dir: str | None, field_name: str) -> Path:
    """A file a recipe names: relative to the current folder, else to the recipe's folder."""
    p = Path(path)
    tried = [p] if p.is_absolute() else [Path.cwd() / p] + ([Path(base_dir) / p] if base_dir else [])
    for c in tried:
        if c.is_file():
            return c
    raise RecipeError(f"{field_name}: file '{path}' not found (tried {', '.join(str(t) for t in tried)})",
                      "give a path relative to the current folder or to the recipe file, or an absolute path")


def resolve_dir(path: str, base_dir: str | None) -> Path:
    """A folder a recipe names: as given when absolute or present here, else below the recipe's folder."""
    p = Path(path)
    return p if p.is_absolute() or base_dir is None or Path.cwd().joinpath(p).exists() else Path(base_dir) / p


def load_checkpoint(model: nn.Module, checkpoint: str, where: str, recipe: Recipe) -> Path:
    """Load ``checkpoint`` (a recipe's ``<where>.checkpoint``) into ``model``: the architecture must match and every
    weight be finite (a NaN teacher would otherwise surface as a diverging student)."""
    path = resolve_file(checkpoint, recipe.base_dir, f"{where}.checkpoint")
    try:
        state = load_state_dict(path)
        load_weights(model, state, source=str(path))
        check_finite(state, source=f"checkpoint '{path}'")
    except TinyKDError as err:
        raise type(err)(err.what, err.fix, where=f"{where}.checkpoint") from None
    return path


def trained_weights(folder: Path, which: str = "best") -> dict[str, torch.Tensor]:
    """The model weights a training stage left in its folder (``TeacherResult.folder``, ``DistillResult.folders``):
    ``best``, of the best validation epoch, or ``last``, of the last epoch (the model part of the resumable
    checkpoint, which also holds the helpers' and the optimizer's state)."""
    if which == "best":
        return load_tensors(Path(folder) / "best.safetensors")
    if which != "last":
        raise ValueError(f"which must be 'best' or 'last', got {which!r}")
    return {k[len("model."):]: v for k, v in load_tensors(Path(folder) / "last.safetensors").items()
            if k.startswith("model.")}


def build_terms(recipe: Recipe) -> list:
    """Fresh (weight, term) pairs of ``distill.losses`` (each call builds new helpers), with the scheme's defaults
    (an online run tells its terms how many peers there are); a RecipeError for a term that learns from a teacher
    in a scheme without one in the loop."""
    d = recipe.distill
    scheme = get_scheme(d.scheme)
    out = []
    for i, l in enumerate(d.losses):
        term = build_loss(l.name, scheme.term_params(l.name, l.params(), d), where=f"distill.losses[{i}]")
        if not scheme.teacher_in_loop and term.needs_teacher:
            raise RecipeError(f"'{l.name}' learns from a teacher, and scheme {d.scheme} has "
                              "none in the loop", "use terms that need no teacher (ce, dml, peer_ensemble, byot, "
                              "pskd), or scheme offline", where=f"distill.losses[{i}]")
        out.append((l.weight, term))
    return out


def ce_terms(cfg: TrainConfig) -> list:
    """Cross-entropy on the labels alone: how a teacher and the scratch baseline learn."""
    return [(1.0, build_loss("ce", {"label_smoothing": cfg.label_smoothing}))]


def finetune_cfg(base: TrainConfig, epochs: int, lr: float) -> TrainConfig:
    """``base`` with a fine-tuning budget: ``epochs`` at ``lr``, no warm-up."""
    return base.model_copy(update={"epochs": epochs, "lr": lr, "warmup_epochs": 0})


class EnergyTracker:
    """CodeCarbon's offline tracker around each training stage when ``energy.track_training`` is on; what each
    measured lands in ``emissions`` by stage label (metrics.json ``training_energy``)."""

    def __init__(self, recipe: Recipe, run_dir: Path):
        self.recipe, self.run_dir = recipe, Path(run_dir)
        self.emissions: dict[str, dict] = {}

    @contextlib.contextmanager
    def __call__(self, label: str):
        if not self.recipe.energy.track_training or not dist.is_main():  # several processes: rank 0's alone
            yield
            return
        from ..measure.energy import track_training

        with track_training(label, self.run_dir / "emissions" / label, self.recipe.energy.country) as result:
            yield
        self.emissions[label] = result.as_dict()


def prune(cfg: PruneConfig, model: nn.Module, teacher: nn.Module, train_cfg: TrainConfig, losses, bundle: DataBundle,
          out_dir: Path, seed: int, role: str, console: Console, progress: bool) -> tuple[nn.Module, list[dict]]:
    """A pruned copy of ``model``, fine-tuned with ``losses`` (KD from ``teacher``) after each of ``cfg.steps``
    (the teacher before it teaches, the student after); one row per step. Errors name ``compress.prune_<role>``."""
    structured = cfg.method == "structured"
    target = None if cfg.macs_target is not None else cfg.amount
    console.print(f"pruning the {role}: {cfg.method}, "
                  + (f"to {cfg.macs_target:,} MACs" if cfg.macs_target else f"amount {cfg.amount:g}")
                  + f", {cfg.steps} step(s) × {cfg.finetune_epochs} fine-tuning epoch(s)")
    try:
        pruned, rows = iterative_prune(copy.deepcopy(model).train().requires_grad_(True), teacher, bundle.train,
                                       bundle.val, target_sparsity=target, macs_target=cfg.macs_target,
                                       steps=cfg.steps, finetune_cfg=finetune_cfg(train_cfg, cfg.finetune_epochs, cfg.lr),
                                       losses=losses, structured=structured, out_dir=out_dir, seed=seed,
                                       progress=progress)
    except TinyKDError as err:
        raise type(err)(err.what, err.fix, where=f"compress.prune_{role}") from None
    last = rows[-1]
    console.print(f"pruned {role}: {last['params']:,} params ({last['nonzero_params']:,} non-zero), "
                  f"{last['macs']:,} MACs, val acc {100 * last['val_accuracy']:.2f}%")
    return pruned, rows
