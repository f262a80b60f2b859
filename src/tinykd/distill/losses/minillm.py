"""MiniLLM (Gu, Dong, Wei & Huang, ICLR 2024): the sequence-level reverse KL KL(q_θ(y) ‖ p(y)) of a student q_θ
from a teacher p, minimised by policy gradient on the student's own samples."""
from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field

from ...errors import RecipeError, TinyKDError
from ...types import Batch, Outputs
from .base import LossTerm, Params, SetupContext, register_loss
from .response import _float32, hard_label_ce, no_rows, scored_positions, token_rows


def is_generated(batch: Batch) -> bool:
    """A batch the student sampled (``distill.on_policy``): every sample carries index -1 (no dataset row)."""
    return batch.index.numel() > 0 and bool((batch.index == -1).all())


def later_rewards(r: torch.Tensor, keep: torch.Tensor, length_norm: bool) -> torch.Tensor:
    """R_{t+1} = Σ_{t'>t} r_{t'} over the scored positions of each row of ``r`` (B, T) (``r`` is 0 where unscored),
    divided by the number of those positions when ``length_norm`` (0 where there is none)."""
    later = r.flip(1).cumsum(1).flip(1) - r
    if not length_norm:
        return later
    count = keep.flip(1).cumsum(1).flip(1) - keep.long()
    return later / count.clamp_min(1)


def mix_weights(log_q: torch.Tensor, log_p: torch.Tensor, alpha: float, clip: float | None) -> torch.Tensor:
    """w = q / p̃ with p̃ = α·p + (1 − α)·q, from the log-probabilities of the sampled tokens, optionally clipped
    at ``clip``; all ones at α = 0. w ≤ 1/(1 − α), so clipping matters only for α near 1."""
    if alpha <= 0:
        return torch.ones_like(log_q)
    parts = [log_p + math.log(alpha)] + ([log_q + math.log1p(-alpha)] if alpha < 1 else [])
    w = (log_q - torch.stack(parts).logsumexp(0)).exp()
    return w if clip is None else w.clamp(max=clip)


class MiniLLMParams(Params):
    teacher_mix: float = Field(0.0, ge=0.0, le=1.0)  # α: must equal distill.on_policy.teacher_mix
    length_norm: bool = True
    clip_weight: float | None = Field(None, gt=0.0)
    pt_weight: float = Field(1.0, ge=0.0)


@register_loss
class MiniLLM(LossTerm):
    """MiniLLM's policy gradient of the reverse KL on the student's samples, and the next-token cross-entropy on
    the corpus.

    On a batch the student generated (``distill.on_policy``; every ``batch.index`` is -1), with the scored positions
    t (target y_t ≥ 0), p the teacher and q_θ the student, both at temperature 1:

    - r_t = log p(y_t | y<t) − log q_θ(y_t | y<t), detached (the per-token reward);
    - R_{t+1} = Σ_{t'>t} r_{t'} over the later scored positions of the sequence; with ``length_norm`` (the paper's
      R^Norm) divided by their number, 0 at the last position;
    - w_t = q_θ(y_t) / p̃(y_t) with p̃ = α·p + (1 − α)·q_θ (α = ``teacher_mix``, the teacher-mixed sampling
      distribution), detached, clipped at ``clip_weight`` when set; w_t = 1 at α = 0. Since w_t ≤ 1/(1 − α), the
      clip matters only for α near 1;
    - loss = mean over scored tokens of  w_t · KL(q_θ(·|y<t) ‖ p(·|y<t))  −  w_t · R_{t+1} · log q_θ(y_t | y<t).

    The first part is the paper's single-step term, exact over the vocabulary (its gradient flows through q_θ);
    the second is the long-term policy gradient. At α = 0 without ``length_norm``, the expected gradient over
    y ~ q_θ is that of KL(q_θ(y) ‖ p(y)) / (the number of scored tokens): the constant −1 of the paper's
    (R_t − 1) has zero expectation and is dropped. The mean per scored token (not the paper's sum per sequence) is
    the normalisation of the project's other LM terms. Computed in float32 (float64 kept).

    On a corpus batch (not generated) the term is ``pt_weight`` · the next-token cross-entropy over the scored
    tokens: the paper's pretraining loss L_PT, here on the training corpus itself (the paper uses a separate
    pretraining corpus). ``distill.on_policy.fraction`` then sets the mix of the two kinds of batch.

    Left out: PPO's ratio clipping (each sample makes one update, so the ratio is 1), a reward baseline (none is
    subtracted from R_{t+1}; it would only lower the variance), and the paper's separate pretraining corpus.
    The per-token w_t is the paper's stand-in for the sequence-level ratio q_θ(y) / p̃(y) (lower variance, biased);
    it needs ``teacher_mix`` equal to ``distill.on_policy.teacher_mix`` and the student sampling at temperature 1
    without top-k (preflight checks both).
    """

    name = "minillm"
    description = ("MiniLLM: policy gradient of the sequence-level reverse KL on the student's samples (exact "
                   "single-step KL + long-term reward term, teacher-mix importance weights, R^Norm); "
                   "next-token CE (L_PT) on corpus batches; needs distill.on_policy")
    paper = "Gu, Dong, Wei & Huang, ICLR 2024, MiniLLM: Knowledge Distillation of Large Language Models"
    Params = MiniLLMParams
    token_models_only: ClassVar[bool] = True  # reads a language model's sequence logits: checks on other models skip it

    def setup(self, ctx: SetupContext) -> None:
        if ctx.student_example.logits.dim() != 3:
            raise RecipeError("loss term 'minillm' scores the student's generated sequences, and this run's logits "
                              f"are {tuple(ctx.student_example.logits.shape)} (not a language model's)",
                              "use minillm with text_corpus data, a GPT student and distill.on_policy",
                              where="distill.losses")

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> torch.Tensor:
        p = self.params
        if not is_generated(batch):
            s, _, y = token_rows(student, None, batch, self.name)
            pt = hard_label_ce(s, y) if len(s) else no_rows(s)
            self.parts = {"pt": pt.detach()}
            return p.pt_weight * pt
        if teacher is None:
            raise TinyKDError("minillm: a generated batch came without the teacher's logits",
                              "run minillm with a teacher in the loop (distill.scheme: offline)")
        s, t = _float32(student.logits), _float32(teacher.logits.detach())
        if s.dim() != 3 or s.shape != t.shape:
            raise TinyKDError(f"minillm: student logits {tuple(s.shape)} and teacher logits {tuple(t.shape)} are not "
                              "one pair of (B, T, V) sequence logits", "give both models the data's vocabulary")
        keep = scored_positions(s, batch, student.mask)  # (B, T)
        if not bool(keep.any()):
            return no_rows(s)
        # Rows of the scored tokens only (padding never reaches the graph); R_{t+1} is summed back in (B, T).
        log_q, log_p = F.log_softmax(s[keep], -1), F.log_softmax(t[keep], -1)  # (N, V)
        y = batch.y[keep][:, None]
        lq_y, lp_y = log_q.gather(-1, y)[:, 0], log_p.gather(-1, y)[:, 0]  # (N,): the sampled tokens
        r = torch.zeros(keep.shape, dtype=s.dtype, device=s.device)
        r[keep] = (lp_y - lq_y).detach()
        later = later_rewards(r, keep, p.length_norm)[keep]
        w = mix_weights(lq_y.detach(), lp_y, p.teacher_mix, p.clip_weight)
        kl = (log_q.exp() * (log_q - log_p)).sum(-1)  # KL(q_θ(·|y<t) ‖ p(·|y<t)), (N,)
        single = (w * kl).mean()
        long = -(w * later * lq_y).mean()
        self.parts = {"single": single.detach(), "long": long.detach(), "reward": r[keep].mean(),
                      "weight": w.mean()}
        return single + long
