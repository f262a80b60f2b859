"""The teacher stage: train the teacher on the labels (or load its checkpoint), freeze it, and prune it when the
recipe asks (``compress.prune_teacher``: the pruned teacher then teaches)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from torch import nn

from ..compress.prune import DEFAULT_LOSSES
from ..data.spec import DataBundle
from ..distill.trainer import Trainer
from ..recipe import ModelConfig, Recipe
from ..tasks import get_task
from .common import EnergyTracker, ce_terms, create, load_checkpoint, prune


@dataclass
class TeacherResult:
    """The frozen teacher, its training rows, and the pruned teacher when the recipe prunes it."""

    teacher: nn.Module
    history: list[dict]
    folder: Path | None = None  # where it trained (checkpoints); None when loaded from teacher.checkpoint
    pruned: nn.Module | None = None  # compress.prune_teacher: the pruned copy, frozen
    prune_rows: list[dict] | None = None  # one row per pruning step (metrics.json compression.prune_teacher)

    @property
    def teaching(self) -> nn.Module:
        """The model that teaches the student: the pruned teacher when there is one."""
        return self.pruned if self.pruned is not None else self.teacher

    @property
    def models(self) -> dict[str, nn.Module]:
        """The variants this stage made: ``teacher`` and, when pruned, ``teacher_pruned``."""
        return {"teacher": self.teacher, **({"teacher_pruned": self.pruned} if self.pruned is not None else {})}


def train_or_load(model: nn.Module, cfg: ModelConfig, label: str, where: str, recipe: Recipe, bundle: DataBundle,
                  run_dir: Path, *, tracked: EnergyTracker | None = None, console: Console | None = None,
                  progress: bool = True) -> list[dict]:
    """Load ``cfg.checkpoint`` into ``model`` or train it on the labels in ``run_dir/label`` (a finished folder is
    reused, an interrupted one resumes); freeze it. Its training rows. ``where``: the recipe field of ``cfg``."""
    console = console or Console(quiet=not progress)
    tracked = tracked or EnergyTracker(recipe, run_dir)
    history: list[dict] = []
    if cfg.checkpoint:
        path = load_checkpoint(model, cfg.checkpoint, where, recipe)
        console.print(f"{label}: loaded weights from {path}")
    else:
        with tracked(label):
            res = Trainer(model, ce_terms(cfg.train), cfg.train, out_dir=run_dir / label, label=label, seed=recipe.seed,
                          console=console, progress=progress, task=get_task(bundle.spec.task)
                          ).fit(bundle.train, bundle.val)
        history = res.history
    model.eval().requires_grad_(False)
    return history


def train_teacher(recipe: Recipe, bundle: DataBundle, run_dir: Path, *, teacher: nn.Module | None = None,
                  tracked: EnergyTracker | None = None, console: Console | None = None,
                  progress: bool = True) -> TeacherResult:
    """The recipe's teacher (or the module ``teacher``) trained in ``run_dir/teacher`` or loaded from
    ``teacher.checkpoint``, frozen; pruned with KD fine-tuning in ``run_dir/teacher_pruned`` when
    ``compress.prune_teacher`` is set."""
    console = console or Console(quiet=not progress)
    tracked = tracked or EnergyTracker(recipe, run_dir)
    model = teacher or create(recipe.teacher.model, recipe.teacher.kwargs, bundle.spec, "teacher", recipe.seed)
    out = TeacherResult(model, train_or_load(model, recipe.teacher, "teacher", "teacher", recipe, bundle, run_dir,
                                             tracked=tracked, console=console, progress=progress),
                        None if recipe.teacher.checkpoint else Path(run_dir) / "teacher")
    cfg = recipe.compress.prune_teacher
    if cfg is not None:
        with tracked("teacher_pruned"):
            pruned, out.prune_rows = prune(cfg, model, model, recipe.teacher.train, DEFAULT_LOSSES, bundle,
                                           run_dir / "teacher_pruned", recipe.seed, "teacher", console, progress)
        out.pruned = pruned.eval().requires_grad_(False)
    return out
