"""What a dataset looks like to the rest of tinykd: its input spec and its three splits."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class InputSpec:
    """Shape of one input (without batch), number of classes, modality and class names."""

    shape: tuple[int, ...]
    num_classes: int
    modality: str  # "image" | "signal" | "audio" | "tabular"
    class_names: tuple[str, ...] = ()

    def __post_init__(self):
        if not self.class_names:
            object.__setattr__(self, "class_names", tuple(str(i) for i in range(self.num_classes)))

    def to_dict(self) -> dict:
        return {"shape": list(self.shape), "num_classes": self.num_classes,
                "modality": self.modality, "class_names": list(self.class_names)}


@dataclass
class Split:
    """Inputs ``x`` (float32, N x *shape) and integer labels ``y`` (N,) of one split."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class DataBundle:
    """Train/val/test splits plus the input spec; ``name`` identifies the source in reports."""

    name: str
    spec: InputSpec
    train: Split
    val: Split
    test: Split
    info: dict = field(default_factory=dict)  # provenance: files read, front-end settings, split sizes
    # Training inputs whose labels are not used (data.labelled): only the teacher labels them, for distillation.
    unlabelled: torch.Tensor | None = None
