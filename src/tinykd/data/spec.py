"""What a dataset looks like to the rest of tinykd: its input spec and its three splits."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class InputSpec:
    """Shape of one input (without batch), number of classes, modality and class names. Text inputs are token ids
    shaped ``(max_length,)`` from a vocabulary of ``vocab_size`` tokens (0 for dense inputs). ``task`` names the
    Task that reads the data (``tinykd.tasks``): "classification", or "causal_lm" for a corpus whose samples are
    blocks of ``max_length`` tokens and whose "classes" are the ``vocab_size`` next tokens."""

    shape: tuple[int, ...]
    num_classes: int
    modality: str  # "image" | "signal" | "audio" | "tabular" | "text"
    class_names: tuple[str, ...] = ()
    vocab_size: int = 0
    task: str = "classification"

    def __post_init__(self):
        if not self.class_names:
            object.__setattr__(self, "class_names", tuple(str(i) for i in range(self.num_classes)))

    def to_dict(self) -> dict:
        out = {"shape": list(self.shape), "num_classes": self.num_classes,
               "modality": self.modality, "class_names": list(self.class_names)}
        if self.vocab_size:
            out["vocab_size"] = self.vocab_size
        if self.task != "classification":
            out["task"] = self.task
        return out


@dataclass
class Split:
    """Inputs ``x`` and integer labels ``y`` (N,) of one split. Dense inputs are float32 (N x *shape); text is int64
    token ids (N x max_length) with ``mask`` (N x max_length, 1 where a position holds a token, 0 for padding).
    For a language model ``y`` is (N x max_length): the next token of every position, -1 where none is scored (a
    prompt, padding)."""

    x: torch.Tensor
    y: torch.Tensor
    mask: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.y)

    def take(self, idx: torch.Tensor) -> Split:
        """The samples at ``idx`` (an index tensor or a boolean mask), inputs, labels and mask together."""
        return Split(self.x[idx], self.y[idx], None if self.mask is None else self.mask[idx])

    def cat(self, other: Split) -> Split:
        """This split followed by ``other`` (same kind of inputs)."""
        if (self.mask is None) != (other.mask is None):
            raise ValueError("cannot join a split of token ids with one of dense inputs")
        mask = None if self.mask is None else torch.cat([self.mask, other.mask])
        return Split(torch.cat([self.x, other.x]), torch.cat([self.y, other.y]), mask)


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
    unlabelled_mask: torch.Tensor | None = None  # text: the padding mask of ``unlabelled``'s token ids
    tokenizer: object | None = None  # text: the TextTokenizer that made the token ids (saved with the run)
    texts: dict[str, list[str]] = field(default_factory=dict)  # text: each split's raw texts, in split order
