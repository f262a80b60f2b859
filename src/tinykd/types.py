"""The values every stage passes around: a mini-batch and what a model produced on it. Imports only torch."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Batch:
    """One mini-batch: inputs, labels (-1 where a sample has no label) and dataset indices."""

    x: torch.Tensor
    y: torch.Tensor
    index: torch.Tensor

    def to(self, device: torch.device) -> Batch:
        """The batch with its three tensors on ``device`` (tensors already there are not copied)."""
        return Batch(self.x.to(device), self.y.to(device), self.index.to(device))


@dataclass
class Outputs:
    """What a loss term sees of one model on one batch: logits and captured features by module path."""

    logits: torch.Tensor
    features: dict[str, torch.Tensor] = field(default_factory=dict)

    def to(self, device: torch.device) -> Outputs:
        """The outputs with the logits and every feature on ``device`` (a cache serves them from the CPU)."""
        return Outputs(self.logits.to(device), {k: v.to(device) for k, v in self.features.items()})
