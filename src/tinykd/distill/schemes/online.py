"""Online distillation: no pre-trained teacher; peers learn together and teach each other as they go (the terms:
losses/online.py).

The peers (any architectures, the same classes) live in one ``Peers`` module, which the trainer trains as its
"student": ``forward`` returns peer 0's logits (what is validated and checkpointed as best) and forward hooks
capture every peer's logits at ``peers.{k}``, so one loss term sees them all. Summing each peer's own objective
gives every peer exactly the gradient of its own loss, since what it learns from the others is detached.

* ``dml``: deep mutual learning, each peer CE + mean over the others of KL(p_other ‖ p_self).
* ``peer_ensemble``: ONE / KDCL-style, each peer CE + KD from the detached average of all peers' logits.
"""
from __future__ import annotations

from ...data.spec import Split
from ...inference import predict_logits
from ..losses.online import DML, OnlineParams, PeerEnsemble, PeerEnsembleParams, Peers  # noqa: F401  (the scheme's terms)


def peer_accuracies(peers: Peers, split: Split) -> list[float]:
    """Top-1 accuracy of every peer on ``split``."""
    return [(predict_logits(p, split.x).argmax(1) == split.y).float().mean().item() for p in peers.peers]
