"""Classification: one label per sample, scored by accuracy."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..data.spec import InputSpec, Split
from ..types import Batch
from .base import Task


class Classification(Task):
    """One label per sample, scored by accuracy. Dense inputs (images, signals, audio features, tables) are passed
    to the model as one tensor ``x``; token ids as ``(input_ids, attention_mask)``, cut per batch to its longest
    sequence (ids padded on the right), so padding costs no compute and changes no logit."""

    name = "classification"

    def collate(self, split: Split, idx: torch.Tensor) -> Batch:
        y = split.y[idx]
        if split.mask is None:
            return Batch({"x": split.x[idx]}, y, idx)
        mask = split.mask[idx]
        longest = int(mask.sum(1).max().item()) if len(idx) else 1
        mask = mask[:, :max(1, longest)]
        return Batch({"input_ids": split.x[idx, :mask.shape[1]], "attention_mask": mask}, y, idx, mask)

    def evaluate(self, model: nn.Module, split: Split) -> dict[str, float]:
        if len(split) == 0:
            return {"accuracy": float("nan"), "loss": float("nan")}
        logits = self.predict(model, split)
        return {"accuracy": (logits.argmax(1) == split.y).float().mean().item(),
                "loss": F.cross_entropy(logits, split.y).item()}

    def example_inputs(self, spec: InputSpec, n: int = 1, *, length: int | None = None) -> tuple[torch.Tensor, ...]:
        """Inputs for export and latency: zeros for dense inputs; for text, token ids 1.. of ``length`` (the spec's
        max_length by default) with a full mask."""
        if spec.modality != "text":
            return (torch.zeros(n, *spec.shape),)
        length = length or spec.shape[0]
        ids = (torch.arange(n * length).reshape(n, length) % max(1, spec.vocab_size - 1)) + 1
        return ids.long(), torch.ones(n, length, dtype=torch.long)

    def input_names(self, spec: InputSpec) -> list[str]:
        return ["input_ids", "attention_mask"] if spec.modality == "text" else ["input"]

    def dynamic_axes(self, spec: InputSpec) -> dict[str, dict[int, str]]:
        if spec.modality == "text":
            return {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
                    "logits": {0: "batch"}}
        return {"input": {0: "batch"}, "logits": {0: "batch"}}
