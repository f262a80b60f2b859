"""The compression stage: pruned, low-rank and QAT-with-KD variants of the distilled student, each fine-tuned with
knowledge distillation from the teacher, as ``compress.*`` asks."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import torch
from rich.console import Console
from torch import nn

from ..compress.prune import DEFAULT_LOSSES, finetune
from ..compress.quantize import calibration_subset
from ..data.spec import DataBundle
from ..distill.losses import build_loss
from ..errors import TinyKDError
from ..recipe import Recipe
from .common import EnergyTracker, finetune_cfg, prune


@dataclass
class CompressResult:
    """The compressed students, the QAT model and what each step did."""

    models: dict[str, nn.Module] = field(default_factory=dict)  # student_pruned, student_lowrank
    qat: nn.Module | None = None  # the QAT-with-KD student (exported as int8 QDQ ONNX)
    facts: dict = field(default_factory=dict)  # metrics.json "compression": prune_student, lowrank, qat


def logit_losses(recipe: Recipe) -> list:
    """The recipe's distillation losses if none reads intermediate features (QAT graphs have no module paths)."""
    terms = [build_loss(l.name, l.params()) for l in recipe.distill.losses]
    if any(t.student_paths or t.teacher_paths for t in terms):
        return list(DEFAULT_LOSSES)
    return list(recipe.distill.losses)


def compress(recipe: Recipe, bundle: DataBundle, run_dir: Path, student: nn.Module, teacher: nn.Module, *,
             tracked: EnergyTracker | None = None, console: Console | None = None,
             progress: bool = True) -> CompressResult:
    """Pruned (``compress.prune_student``), low-rank (``compress.lowrank``) and QAT-with-KD (``compress.qat``)
    variants of the distilled ``student``, fine-tuned with KD from ``teacher``; ``student`` itself is not changed."""
    console = console or Console(quiet=not progress)
    tracked = tracked or EnergyTracker(recipe, run_dir)
    c, base_cfg, out = recipe.compress, recipe.student.train, CompressResult()
    if c.prune_student is not None:
        with tracked("student_pruned"):
            out.models["student_pruned"], out.facts["prune_student"] = prune(
                c.prune_student, student, teacher, base_cfg, list(recipe.distill.losses), bundle,
                run_dir / "student_pruned", recipe.seed, "student", console, progress)
    if c.lowrank is not None:
        from ..compress.lowrank import lowrank_factorize

        low = copy.deepcopy(student)
        try:
            report = lowrank_factorize(low, energy=None if c.lowrank.param_budget else c.lowrank.energy,
                                       param_budget=c.lowrank.param_budget)
        except TinyKDError as err:
            raise type(err)(err.what, err.fix, where="compress.lowrank") from None
        console.print(f"low-rank student: {report['params_before']:,} → {report['params_after']:,} params; "
                      f"KD fine-tuning {c.lowrank.finetune_epochs} epoch(s)")
        with tracked("student_lowrank"):
            res = finetune(low, teacher, bundle.train, bundle.val,
                           finetune_cfg(base_cfg, c.lowrank.finetune_epochs, c.lowrank.lr),
                           list(recipe.distill.losses), run_dir / "student_lowrank", label="student_lowrank",
                           seed=recipe.seed, progress=progress)
        out.facts["lowrank"] = {**report, "finetune_best_val_accuracy": res.best_val_accuracy}
        out.models["student_lowrank"] = low
    if c.qat is None:
        return out
    from ..compress.qat import qat_distill

    losses = logit_losses(recipe)
    console.print(f"quantization-aware distillation: {c.qat.epochs} epoch(s), losses "
                  f"{', '.join(l['name'] if isinstance(l, dict) else l.name for l in losses)}")
    calib = torch.as_tensor(calibration_subset(bundle.train.x, bundle.train.y, recipe.quantize.calibration_samples,
                                               recipe.seed))
    with tracked("student_qat"):
        out.qat = qat_distill(student, teacher, bundle.train, bundle.val, finetune_cfg(base_cfg, c.qat.epochs, c.qat.lr),
                              losses, run_dir / "student_qat", calib=calib, seed=recipe.seed, progress=progress)
    out.facts["qat"] = {"epochs": c.qat.epochs, "lr": c.qat.lr,
                        "losses": [l if isinstance(l, dict) else l.model_dump() for l in losses],
                        "history": getattr(out.qat, "history", [])}
    return out
