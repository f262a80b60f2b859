"""Online distillation: no pre-trained teacher; peers learn together and teach each other as they go (the terms:
losses/online.py).

The peers (any architectures, the same classes) live in one ``Peers`` module, which the trainer trains as its
"student": ``forward`` returns peer 0's logits (what is validated and checkpointed as best) and forward hooks
capture every peer's logits at ``peers.{k}``, so one loss term sees them all. Summing each peer's own objective
gives every peer exactly the gradient of its own loss, since what it learns from the others is detached.

* ``dml``: deep mutual learning, each peer CE + mean over the others of KL(p_other ‖ p_self).
* ``peer_ensemble``: ONE / KDCL-style, each peer CE + KD from the detached average of all peers' logits.

The scheme: ``Online``.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from ...data.spec import Split
from ...inference import predict_logits
from ...recipe import DistillConfig, ModelConfig
from ..losses.online import DML, OnlineParams, PeerEnsemble, PeerEnsembleParams, Peers  # noqa: F401  (the scheme's terms)
from .base import Prepared, Scheme
from .registry import register_scheme


def peer_accuracies(peers: Peers, split: Split) -> list[float]:
    """Top-1 accuracy of every peer on ``split``."""
    return [(predict_logits(p, split.x).argmax(1) == split.y).float().mean().item() for p in peers.peers]


@register_scheme
class Online(Scheme):
    """No pre-trained teacher in the loop: the student (peer 0) and ``distill.peers`` (default: one copy of the
    student, initialised differently) learn together through a ``dml`` or ``peer_ensemble`` term. The teacher is
    still trained, as the reference the report compares with."""

    name = "online"
    phrase = "Online distillation with its peers"
    fields = ("peers",)
    teacher_in_loop = False
    takes_unlabelled = False
    checked_paths = ()  # the peers' paths (peers.{k}.<path>) exist only in training
    variant_words = {"peer_": "Peer"}
    TERMS = ("dml", "peer_ensemble")

    @classmethod
    def check_chosen(cls, d: DistillConfig) -> None:
        if not any(l.name in cls.TERMS for l in d.losses):
            raise ValueError("scheme online needs an online loss term: losses: [{name: dml}] or "
                             "[{name: peer_ensemble}]")
        super().check_chosen(d)

    @classmethod
    def term_params(cls, name: str, params: dict, d: DistillConfig) -> dict:
        if name in cls.TERMS:  # the online terms are told how many peers there are, unless the recipe says
            params.setdefault("peers", 1 + max(1, len(d.peers)))
        return params

    @classmethod
    def extra_models(cls, d: DistillConfig) -> list[tuple[str, ModelConfig, bool]]:
        return [(f"distill.peers[{i}]", cfg, False) for i, cfg in enumerate(d.peers)]

    @classmethod
    def variant_configs(cls, d: DistillConfig) -> dict[str, ModelConfig]:
        return {f"peer_{i}": cfg for i, cfg in enumerate(d.peers, start=2)}

    def prepare(self, teacher: nn.Module, student: nn.Module) -> Prepared:
        return None, None, self.ctx.bundle.train

    def trained_module(self, student: nn.Module) -> nn.Module:
        """The Peers group whose peer 0 is the student; the other peers become variants ``peer_2``, ``peer_3``..."""
        r = self.ctx.recipe
        configs = list(self.d.peers) or [r.student]
        others = []
        for i, cfg in enumerate(configs, start=2):
            if self.d.peers:
                model = self.ctx.build(cfg.model, cfg.kwargs, f"distill.peers[{i - 2}]", r.seed + 200 + i)
            else:  # the student's architecture, initialised differently
                model = copy.deepcopy(student)
                torch.manual_seed(r.seed + 200 + i)
                for m in model.modules():
                    if m is not model and hasattr(m, "reset_parameters"):
                        m.reset_parameters()
            others.append(model)
            self.models[f"peer_{i}"] = model  # trained in place with the student; measured after training
        self.facts["peers"] = ["student", *(f"peer_{i}" for i in range(2, len(others) + 2))]
        return Peers([student, *others])
