"""Cross-entropy with every sequence weighted alike, whatever its number of scored tokens.

The token mean of ``ce`` lets long targets outweigh short ones: in a batch mixing distilling step-by-step's two tasks
(Hsieh et al. 2023), a rationale of 30 tokens would count six times a 5-token answer. ``sequence_ce`` averages the
cross-entropy over each sequence's scored tokens first, then over the sequences; with as many answer as rationale
samples that is the paper's L_label + L_rationale with equal weights (halved). Classification logits (N, C) are one
row per sample: the plain mean.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from ...types import Batch, Outputs
from .base import LossTerm, Params, register_loss
from .response import _float32, hard_label_ce, no_rows, scored_positions


def sequence_mean_ce(logits: torch.Tensor, y: torch.Tensor, keep: torch.Tensor,
                     label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean over the sequences with a scored token of each one's mean cross-entropy; logits (B, T, V), targets and
    ``keep`` (B, T)."""
    per_token = F.cross_entropy(logits.flatten(0, 1), y.clamp_min(0).flatten(), reduction="none",
                                label_smoothing=label_smoothing).view_as(y)
    per_token = torch.where(keep, per_token, 0.0)
    tokens = keep.sum(1)
    rows = tokens > 0
    return (per_token.sum(1)[rows] / tokens[rows]).mean()


class SequenceCEParams(Params):
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)


@register_loss
class SequenceCE(LossTerm):
    name = "sequence_ce"
    description = ("cross-entropy with the true labels, averaged per sequence, then over the sequences: a short "
                   "answer weighs as much as a long rationale (distilling step-by-step's multi-task loss)")
    paper = "Hsieh et al. 2023, Distilling Step-by-Step! (multi-task training with rationales)"
    needs_teacher = False
    Params = SequenceCEParams

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> torch.Tensor:
        s, y = student.logits, batch.y
        if s.dim() != 3:
            return hard_label_ce(_float32(s), y, self.params.label_smoothing)
        keep = scored_positions(s, batch, student.mask)
        if not bool(keep.any()):
            return no_rows(s)
        return sequence_mean_ce(_float32(s), y, keep, self.params.label_smoothing)
