"""Response-based terms: the student learns from the teacher's outputs (and from labels)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from ..capture import Outputs
from .base import Batch, LossTerm, Params, register_loss


def hard_label_ce(logits: torch.Tensor, y: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy over the labelled samples only (label -1 marks an unlabelled sample)."""
    mask = y >= 0
    if not bool(mask.any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits[mask], y[mask], label_smoothing=label_smoothing)


def soft_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(p_teacher^T || p_student^T) averaged over the batch and scaled by T².

    Hinton et al. (2015, §2): the gradients of the soft term scale as 1/T², so multiplying by T² keeps
    its contribution comparable to the hard term when the temperature changes.
    """
    log_p_s = F.log_softmax(student_logits / temperature, dim=-1)
    log_p_t = F.log_softmax(teacher_logits / temperature, dim=-1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * temperature**2


class CEParams(Params):
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)


@register_loss
class CrossEntropy(LossTerm):
    name = "ce"
    description = "cross-entropy with the true labels (the from-scratch objective)"
    paper = "—"
    needs_teacher = False
    Params = CEParams

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> torch.Tensor:
        return hard_label_ce(student.logits, batch.y, self.params.label_smoothing)


class KDParams(Params):
    temperature: float = Field(4.0, gt=0.0)
    alpha: float = Field(0.9, ge=0.0, le=1.0)


@register_loss
class HintonKD(LossTerm):
    """alpha · T² · KL(softmax(t/T) ‖ softmax(s/T)) + (1 − alpha) · CE(s, y)."""

    name = "kd"
    description = "Hinton KD: softened teacher probabilities at temperature T (T²-scaled) plus hard labels"
    paper = "Hinton, Vinyals & Dean 2015, Distilling the Knowledge in a Neural Network"
    Params = KDParams

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> torch.Tensor:
        p = self.params
        soft = soft_kl(student.logits, teacher.logits, p.temperature)
        hard = hard_label_ce(student.logits, batch.y)
        self.parts = {"soft": soft.detach(), "hard": hard.detach()}
        return p.alpha * soft + (1.0 - p.alpha) * hard
