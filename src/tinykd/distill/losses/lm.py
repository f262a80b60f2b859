"""Token-level terms written for language models (a vocabulary per position); like every response term they
take classification logits (N, C) or sequence logits (B, T, V), the latter per scored token (``token_rows``)."""
from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from ...types import Batch, Outputs
from .base import LossTerm, Params, register_loss
from .response import hard_label_ce, no_rows, token_rows


def total_variation(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """½ Σ_v |p_t^T − p_s^T| per row, (N,): the total variation distance, between 0 and 1."""
    p_s = F.softmax(student_logits / temperature, dim=-1)
    p_t = F.softmax(teacher_logits / temperature, dim=-1)
    return 0.5 * (p_t - p_s).abs().sum(-1)


class TVDParams(Params):
    temperature: float = Field(1.0, gt=0.0)
    alpha: float = Field(1.0, ge=0.0, le=1.0)


@register_loss
class TVD(LossTerm):
    """alpha · T · ½ Σ_v |p_t^T − p_s^T| + (1 − alpha) · CE(s, y), averaged over the rows (the scored tokens).

    Wen et al. (2023) compare TVD with forward KL, reverse KL and JS as f-divergences for distilling a language
    model; unlike the KLs it is symmetric and bounded (at most 1). Its gradient with respect to the logits
    shrinks as 1/T at high temperature (KL's as 1/T²), hence the factor T rather than Hinton's T²; at the
    default T = 1 the term is the plain TVD.
    """

    name = "tvd"
    description = ("total variation distance ½ Σ |p_teacher − p_student| at temperature T (T-scaled), "
                   "optional hard-label mix")
    paper = "Wen, Li, Du & Mou, ACL 2023, f-Divergence Minimization for Sequence-Level Knowledge Distillation (TVD)"
    Params = TVDParams

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> torch.Tensor:
        p = self.params
        s, t, y = token_rows(student, teacher, batch, self.name)
        if not len(s):
            return no_rows(s)
        soft = total_variation(s, t, p.temperature).mean() * p.temperature
        hard = hard_label_ce(s, y)
        self.parts = {"soft": soft.detach(), "hard": hard.detach()}
        return p.alpha * soft + (1.0 - p.alpha) * hard


def topk_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, k: int, temperature: float,
            missing_mass: str) -> torch.Tensor:
    """Forward KL from the teacher's k most likely tokens per row, (N,); see ``TopKKL`` for what is computed.

    Only the teacher's top-k values are read (its log-normaliser and, for ``uniform``, its rest mass aside), so
    teacher logits rebuilt from a top-k store give, at T = 1, the value of the live teacher truncated alike.
    """
    vocab = student_logits.shape[-1]
    k = min(k, vocab)
    z_t = teacher_logits / temperature
    top_z, idx = z_t.topk(k, dim=-1)  # (N, k)
    log_norm = z_t.logsumexp(-1, keepdim=True)
    top_log_p_t = top_z - log_norm  # log p_t^T of the top-k tokens
    log_p_s = F.log_softmax(student_logits / temperature, dim=-1)  # (N, V), over the full vocabulary
    top_log_p_s = log_p_s.gather(-1, idx)
    if missing_mass == "zero" or k == vocab:
        log_q = top_log_p_t - top_log_p_t.logsumexp(-1, keepdim=True)  # renormalised to sum 1 over the k tokens
        return (log_q.exp() * (log_q - top_log_p_s)).sum(-1)
    # The rest mass 1 − Σ top-k as a log-sum-exp over the other tokens: precise even when it is tiny.
    log_rest = z_t.scatter(-1, idx, -math.inf).logsumexp(-1) - log_norm.squeeze(-1)  # (N,)
    log_u = log_rest - math.log(vocab - k)  # each other token's share
    u = log_u.exp()
    others_log_p_s = log_p_s.sum(-1) - top_log_p_s.sum(-1)  # Σ over the V − k other tokens of log p_s
    # Σ_others u · (log u − log p_s); zero when the rest mass underflows (u = 0, log u = −inf).
    tail = torch.where(u > 0, u * ((vocab - k) * log_u - others_log_p_s), 0.0)
    return (top_log_p_t.exp() * (top_log_p_t - top_log_p_s)).sum(-1) + tail


class TopKKLParams(Params):
    k: int = Field(16, ge=1)
    missing_mass: Literal["zero", "uniform"] = "zero"
    temperature: float = Field(1.0, gt=0.0)
    alpha: float = Field(1.0, ge=0.0, le=1.0)


@register_loss
class TopKKL(LossTerm):
    """alpha · T² · KL(q_t ‖ p_s^T) + (1 − alpha) · CE(s, y), averaged over the rows (the scored tokens), where q_t
    is the teacher's p_t^T truncated to its k most likely tokens K of the row:

    - ``missing_mass: zero``: q_t = p_t^T / Σ_K p_t^T on K, 0 elsewhere, so the loss is
      Σ_{v∈K} q_t,v (log q_t,v − log p_s,v) with log p_s the student's log-softmax over the full vocabulary
      (the student is compared on the k tokens only, and its mass outside K is pushed into K);
    - ``missing_mass: uniform``: q_t = p_t^T on K and the rest mass r = 1 − Σ_K p_t^T spread evenly over the other
      V − k tokens, r/(V − k) each, a dense distribution compared on the full vocabulary.

    With k ≥ V both are the dense forward KL of Hinton KD. k is the number of log-probabilities per token a top-k
    teacher cache keeps; Anshumann et al. (2025) show that such a truncated teacher is a biased estimate of the
    full one.
    """

    name = "topk_kl"
    description = ("sparse forward KL from the teacher's top-k tokens per position (k), the rest mass dropped and "
                   "renormalised (missing_mass: zero) or spread uniformly (uniform); T²-scaled, optional hard-label mix")
    paper = ("Anshumann et al. 2025, Sparse Logit Sampling: Accelerating Knowledge Distillation in LLMs "
             "(top-k teacher probabilities and their bias)")
    Params = TopKKLParams

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> torch.Tensor:
        p = self.params
        s, t, y = token_rows(student, teacher, batch, self.name)
        if not len(s):
            return no_rows(s)
        soft = topk_kl(s, t, p.k, p.temperature, p.missing_mass).mean() * p.temperature**2
        hard = hard_label_ce(s, y)
        self.parts = {"soft": soft.detach(), "hard": hard.detach()}
        return p.alpha * soft + (1.0 - p.alpha) * hard
