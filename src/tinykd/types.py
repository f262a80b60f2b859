"""The values every stage passes around: a mini-batch and what a model produced on it. Imports only torch."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


def _move(t: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    return None if t is None else t.to(device)


@dataclass
class Batch:
    """One mini-batch: named model inputs, labels (-1 where a sample has no label), dataset indices and, for
    sequences, the padding mask (B, L: 1 where a position holds a token, 0 for padding; None for dense inputs).

    ``inputs`` keeps the order of the model's positional arguments: an image or signal batch is ``{"x": x}``
    (``Batch(x, y, index)`` wraps a tensor so), a text batch ``{"input_ids": ids, "attention_mask": mask}``."""

    inputs: dict[str, torch.Tensor]
    y: torch.Tensor
    index: torch.Tensor
    mask: torch.Tensor | None = None

    def __post_init__(self):
        if isinstance(self.inputs, torch.Tensor):
            self.inputs = {"x": self.inputs}

    @property
    def x(self) -> torch.Tensor:
        """The first input: the images or signals of a dense batch, the token ids of a text batch."""
        return next(iter(self.inputs.values()))

    def args(self) -> tuple[torch.Tensor, ...]:
        """The inputs as the model's positional arguments."""
        return tuple(self.inputs.values())

    def __len__(self) -> int:
        return len(self.y)

    def take(self, idx: torch.Tensor) -> Batch:
        """The samples at ``idx`` of every tensor (a cache computes its misses on such a sub-batch)."""
        return Batch({k: v[idx] for k, v in self.inputs.items()}, self.y[idx], self.index[idx],
                     None if self.mask is None else self.mask[idx])

    def with_inputs(self, x: torch.Tensor) -> Batch:
        """The batch with its first input replaced (a shifted or mixed view of dense inputs)."""
        key = next(iter(self.inputs))
        return Batch({**self.inputs, key: x}, self.y, self.index, self.mask)

    def to(self, device: torch.device) -> Batch:
        """The batch with every tensor on ``device`` (tensors already there are not copied)."""
        return Batch({k: v.to(device) for k, v in self.inputs.items()}, self.y.to(device), self.index.to(device),
                     _move(self.mask, device))


@dataclass
class Outputs:
    """What a loss term sees of one model on one batch: logits, captured features by module path and, for
    sequences, the padding mask of the batch (B, L), so per-position terms can leave padding out."""

    logits: torch.Tensor
    features: dict[str, torch.Tensor] = field(default_factory=dict)
    mask: torch.Tensor | None = None

    def to(self, device: torch.device) -> Outputs:
        """The outputs with every tensor on ``device`` (a cache serves them from the CPU)."""
        return Outputs(self.logits.to(device), {k: v.to(device) for k, v in self.features.items()},
                       _move(self.mask, device))
