"""Online distillation's terms: peers learn together and teach each other as they go (the scheme: schemes/online.py).

The peers (any architectures, the same classes) live in one ``Peers`` module, which the trainer trains as its
"student": ``forward`` returns peer 0's logits (what is validated and checkpointed as best) and forward hooks
capture every peer's logits at ``peers.{k}``, so one loss term sees them all. Summing each peer's own objective
gives every peer exactly the gradient of its own loss, since what it learns from the others is detached.

* ``dml``: deep mutual learning, each peer CE + mean over the others of KL(p_other ‖ p_self).
* ``peer_ensemble``: ONE / KDCL-style, each peer CE + KD from the detached average of all peers' logits.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from pydantic import Field
from torch import nn

from ...errors import TinyKDError
from ...types import Batch, Outputs
from ..capture import _first_tensor
from .base import LossTerm, Params, SetupContext, register_loss
from .response import hard_label_ce, soft_kl


class Peers(nn.Module):
    """K networks trained together. ``forward`` returns peer 0's logits; peer k's are captured at ``peers.{k}``."""

    def __init__(self, peers: Sequence[nn.Module]):
        super().__init__()
        if len(peers) < 2:
            raise TinyKDError(f"online distillation needs at least 2 peers, got {len(peers)}",
                              "pass two or more models")
        self.peers = nn.ModuleList(peers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Every peer runs (its output hook fires); the first one answers for the group.
        return [_first_tensor(peer(x)) for peer in self.peers][0]

    def peer(self, k: int) -> nn.Module:
        """Peer ``k`` alone: what is exported."""
        return self.peers[k]


class OnlineParams(Params):
    peers: int = Field(2, ge=2)  # how many peers the Peers module holds
    temperature: float = Field(1.0, gt=0.0)
    alpha: float = Field(1.0, ge=0.0)  # weight of the distillation part of each peer's loss


class _OnlineTerm(LossTerm):
    needs_teacher = False
    Params = OnlineParams

    def __init__(self, params: OnlineParams):
        super().__init__(params)
        self.student_paths = tuple(f"peers.{k}" for k in range(params.peers))

    def setup(self, ctx: SetupContext) -> None:
        if not isinstance(ctx.student, Peers) or len(ctx.student.peers) != self.params.peers:
            found = len(ctx.student.peers) if isinstance(ctx.student, Peers) else "no Peers module"
            raise TinyKDError(f"{self.name}: expects the student to be Peers of {self.params.peers} models, "
                              f"got {found}",
                              f"train Peers([model_a, model_b, ...]) and set peers: {self.params.peers}")

    def peer_logits(self, student: Outputs) -> list[torch.Tensor]:
        return [student.features[p] for p in self.student_paths]


@register_loss
class DML(_OnlineTerm):
    """Σ_k [CE(z_k, y) + alpha · 1/(K−1) · Σ_{j≠k} T²·KL(p_j ‖ p_k)], p_j detached in peer k's term."""

    name = "dml"
    description = "deep mutual learning: peers trained together, each mimicking the others' predictions (KL)"
    paper = "Zhang, Xiang, Hospedales & Lu, CVPR 2018, Deep Mutual Learning (eq. 9–10)"

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> torch.Tensor:
        p = self.params
        logits = self.peer_logits(student)
        k = len(logits)
        total = logits[0].new_zeros(())
        parts = {}
        for i, z in enumerate(logits):
            ce = hard_label_ce(z, batch.y)
            # Zhang et al. update the peers in turn; here all at once, each on the others' current predictions.
            kl = sum(soft_kl(z, other.detach(), p.temperature) for j, other in enumerate(logits) if j != i) / (k - 1)
            total = total + ce + p.alpha * kl
            parts[f"peer{i}.ce"], parts[f"peer{i}.kl"] = ce.detach(), kl.detach()
        self.parts = parts
        return total


class PeerEnsembleParams(OnlineParams):
    temperature: float = Field(3.0, gt=0.0)
    ensemble_ce: float = Field(0.0, ge=0.0)  # weight of CE on the averaged logits (ONE trains its ensemble too)


@register_loss
class PeerEnsemble(_OnlineTerm):
    """Σ_k [CE(z_k, y) + alpha · T²·KL(softmax(z̄/T) ‖ softmax(z_k/T))] + ensemble_ce · CE(z̄, y), z̄ = mean_k z_k."""

    name = "peer_ensemble"
    description = "online KD from an on-the-fly teacher: the (detached) average of the peers' logits"
    paper = ("Lan, Zhu & Gong, NeurIPS 2018, Knowledge Distillation by On-the-Fly Native Ensemble (ONE); "
             "Guo et al., CVPR 2020, Online KD via Collaborative Learning (KDCL-Naive: averaged logits)")
    Params = PeerEnsembleParams

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> torch.Tensor:
        p = self.params
        logits = self.peer_logits(student)
        mean = torch.stack(logits).mean(0)
        target = mean.detach()
        total = p.ensemble_ce * hard_label_ce(mean, batch.y) if p.ensemble_ce else mean.new_zeros(())
        parts = {}
        for i, z in enumerate(logits):
            ce = hard_label_ce(z, batch.y)
            kd = soft_kl(z, target, p.temperature)
            total = total + ce + p.alpha * kd
            parts[f"peer{i}.ce"], parts[f"peer{i}.kd"] = ce.detach(), kd.detach()
        self.parts = parts
        return total
