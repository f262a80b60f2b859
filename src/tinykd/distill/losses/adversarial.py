"""Adversarial terms: a discriminator tells teacher from student outputs and the student learns to fool it."""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ...errors import RecipeError, TinyKDError
from ...types import Batch, Outputs
from .base import LossTerm, Params, SetupContext, register_loss


class _GradientReversal(torch.autograd.Function):
    """Identity forward; multiplies the gradient by −scale backward (Ganin & Lempitsky 2015)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return -ctx.scale * grad, None


def grad_reverse(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """``x`` unchanged, but whatever is upstream of it is trained to *maximise* the loss (scaled by ``scale``)."""
    return _GradientReversal.apply(x, scale)


def pool(x: torch.Tensor) -> torch.Tensor:
    """(N, C, *spatial) -> (N, C) by global average pooling; (N, C) passes through."""
    return x.flatten(2).mean(-1) if x.dim() > 2 else x


class AdversarialParams(Params):
    on: Literal["logits", "feature"] = "logits"
    student: str | None = None  # module paths, only with on: feature
    teacher: str | None = None
    hidden: int = Field(64, ge=1)  # width of the discriminator's two hidden layers
    grl_lambda: float = Field(1.0, ge=0.0)  # scale of the reversed gradient that reaches the student


@register_loss
class Adversarial(LossTerm):
    """BCE(D(teacher), 1) + BCE(D(GRL(student)), 0): the discriminator D minimises it, the student maximises it.

    Xu, Hsu & Huang (2018) train a discriminator on logits to tell teacher from student and the student to
    fool it, with the GAN objective of Goodfellow et al. (2014, eq. 1):
        min_S max_D  E[log D(t(x))] + E[log(1 − D(s(x)))].
    Both players are updated in the same backward pass: a gradient reversal layer (Ganin & Lempitsky 2015)
    between the student and D flips the sign of D's gradient on the student's side, so the student ascends
    the discriminator's BCE while D descends it (the minimax form; the logged value is D's loss, 2·ln 2 ≈ 1.386
    when D cannot tell them apart). ``on: feature`` applies the same game to globally pooled intermediate
    features (Belagiannis et al. 2018, Adversarial Network Compression), with a linear projection on the
    student side when the channel counts differ. D is unconditional: Xu et al.'s class-conditioning is omitted.
    """

    name = "adversarial"
    description = "a discriminator tells teacher from student logits/features; the student learns to fool it (GRL)"
    paper = ("Xu, Hsu & Huang 2018, Training Shallow and Thin Networks for Acceleration via Knowledge Distillation "
             "with Conditional Adversarial Networks; Ganin & Lempitsky 2015 (gradient reversal)")
    Params = AdversarialParams

    def __init__(self, params: AdversarialParams):
        super().__init__(params)
        paths = (params.student, params.teacher)
        if params.on == "feature":
            if None in paths:
                raise RecipeError("adversarial with on: feature needs both 'student' and 'teacher' module paths",
                                  "add e.g. student: features.1, teacher: features.1 (`tinykd layers MODEL` lists paths)")
            self.student_paths, self.teacher_paths = (params.student,), (params.teacher,)
        elif paths != (None, None):
            raise RecipeError("adversarial with on: logits takes no 'student'/'teacher' paths",
                              "remove them, or set on: feature to use intermediate features")
        self.projection: nn.Module = nn.Identity()
        self.discriminator: nn.Sequential | None = None

    def _inputs(self, student: Outputs, teacher: Outputs) -> tuple[torch.Tensor, torch.Tensor]:
        """Discriminator inputs (N, D): logits, or pooled features; the teacher's are always detached."""
        if self.params.on == "logits":
            return student.logits, teacher.logits.detach()
        return pool(student.features[self.params.student]), pool(teacher.features[self.params.teacher]).detach()

    def setup(self, ctx: SetupContext) -> None:
        """Build the discriminator (and the student-side projection) from the example outputs' widths."""
        s, t = self._inputs(ctx.student_example, ctx.teacher_example)
        where = "logits" if self.params.on == "logits" else f"'{self.params.student}' / '{self.params.teacher}'"
        if s.dim() != 2 or t.dim() != 2:
            raise TinyKDError(f"adversarial: cannot use {where}: shapes {tuple(s.shape)} (student) and "
                              f"{tuple(t.shape)} (teacher) are not (N, C) or (N, C, *spatial)",
                              "pick layers whose outputs are (N, C) vectors or (N, C, H, W)/(N, C, L) maps")
        d_s, d_t = s.shape[1], t.shape[1]
        if self.params.on == "logits" and d_s != d_t:
            raise TinyKDError(f"adversarial: student logits {tuple(s.shape)} and teacher logits {tuple(t.shape)} "
                              "have different numbers of classes",
                              "give the student and the teacher the same num_classes")
        if d_s != d_t:
            self.projection = nn.Linear(d_s, d_t)  # student channels -> teacher channels
        h = self.params.hidden
        self.discriminator = nn.Sequential(nn.Linear(d_t, h), nn.LeakyReLU(0.2), nn.Linear(h, h),
                                           nn.LeakyReLU(0.2), nn.Linear(h, 1))

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> torch.Tensor:
        if self.discriminator is None:
            raise RuntimeError("adversarial: setup() must build the discriminator before the first forward")
        s, t = self._inputs(student, teacher)
        # The projection sits before the reversal: it belongs to the student's side and learns to fool D.
        s = grad_reverse(self.projection(s), self.params.grl_lambda)
        d_t, d_s = self.discriminator(t).squeeze(1), self.discriminator(s).squeeze(1)  # (N,) logits of "teacher"
        loss_t = F.binary_cross_entropy_with_logits(d_t, torch.ones_like(d_t))
        loss_s = F.binary_cross_entropy_with_logits(d_s, torch.zeros_like(d_s))
        accuracy = torch.cat([d_t > 0, d_s <= 0]).float().mean()
        self.parts = {"teacher": loss_t.detach(), "student": loss_s.detach(), "d_accuracy": accuracy}
        return loss_t + loss_s
