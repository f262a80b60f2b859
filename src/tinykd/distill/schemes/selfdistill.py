"""Self-distillation: the student teaches itself, no separate teacher (the terms: losses/selfdistill.py).

* ``byot`` (Be Your Own Teacher): shallow classifiers on intermediate layers learn from the labels, from the
  deepest classifier's predictions and from its feature. They are helpers of the loss term, so the exported
  student never contains them, unless ``EarlyExits`` keeps them as early exits.
* ``pskd`` (progressive self-knowledge distillation): the targets mix the label with the model's own prediction
  for that sample in the previous epoch, the mix growing over training.
* ``born_again``: generations of the same network, each taught by the previous one.

The scheme: ``SelfDistill`` (``distill.scheme: self``).
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from rich.console import Console
from torch import nn

from ...data.spec import Split
from ...errors import TinyKDError
from ...recipe import TrainConfig
from ..capture import FeatureCapture
from ..losses.selfdistill import (BYOT, PSKD, BYOTParams, ExitHead, PSKDParams,  # noqa: F401  (the scheme's terms)
                                  pooled)
from .assistant import StageResult, TermFactory, distill_chain
from .base import Prepared, Scheme
from .registry import register_scheme


class EarlyExits(nn.Module):
    """The student with BYOT's shallow classifiers kept: ``forward`` returns every exit's logits, shallow to deep
    (the last is the student's own output). Shares the trained modules; nothing is copied."""

    def __init__(self, student: nn.Module, byot: BYOT):
        super().__init__()
        if not len(byot.heads):
            raise TinyKDError("the byot term has no exit heads yet", "train with it first (its setup builds the heads)")
        self.student, self.heads = student, byot.heads
        self.paths = list(byot.params.exits)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with FeatureCapture(self.student, self.paths, role="student") as cap:
            out = cap(x)
        return (*(head(out.features[p])[1] for p, head in zip(self.paths, self.heads)), out.logits)


# ----- born-again networks ------------------------------------------------------------------------
def born_again(make_model: Callable[[], nn.Module], train: Split, val: Split, cfg: TrainConfig, *, out_dir: Path,
               generations: int = 2, terms: TermFactory | None = None, seed: int = 0,
               console: Console | None = None, progress: bool = False) -> list[StageResult]:
    """Furlanello et al. (ICML 2018), Born-Again Neural Networks: generation 0 learns from the labels, then each of
    ``generations`` copies of the same architecture learns from the previous one (``terms``, default kd).
    One row per generation; stages finished in ``out_dir`` are reused, an interrupted one resumes."""
    if generations < 1:
        raise TinyKDError(f"born_again needs at least 1 generation after the first, got {generations}", "generations=2")
    models = [(f"gen{g}", make_model()) for g in range(generations + 1)]
    return distill_chain(models, train, val, cfg, out_dir=out_dir, terms=terms, seed=seed, console=console,
                         progress=progress)


@register_scheme
class SelfDistill(Scheme):
    """The student teaches itself (``byot``, ``pskd``): no teacher in the loop. The teacher is still trained, as
    the reference the report compares with."""

    name = "self"
    phrase = "Self-distillation"
    teacher_in_loop = False
    takes_unlabelled = False

    def prepare(self, teacher: nn.Module, student: nn.Module) -> Prepared:
        return None, None, self.ctx.bundle.train
