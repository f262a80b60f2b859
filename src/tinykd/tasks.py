"""What a kind of problem means to every stage: the Task protocol and the tasks tinykd has.

A Task owns what differs between kinds of data and models, so the trainer, the teacher sources, export and
measurement stay the same for all of them:

- ``collate``: the mini-batch of a split at some indices (dense inputs as they are; token ids cut to the longest
  sequence of the batch, with their padding mask);
- ``logits``: the adapter from whatever a model returns (a tensor, a tuple, a Hugging Face ``ModelOutput``) to the
  logits loss terms see;
- ``predict`` and ``evaluate``: batched inference and the validation/test metrics;
- ``reduce``: the mean of per-position values over the real (unpadded) positions;
- ``example_inputs``, ``input_names`` and ``dynamic_axes``: what export and latency feed a model;
- ``report``: what the report calls its metric.

Imports only torch, the batch types and the data spec, so any layer may use it.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .data.spec import InputSpec, Split
from .types import Batch, Outputs


def model_logits(out) -> torch.Tensor:
    """The logits in a model's raw output: the tensor itself, ``.logits`` of a Hugging Face ``ModelOutput`` (never its
    loss), or the first tensor of a tuple, list or dict."""
    if isinstance(out, torch.Tensor):
        return out
    logits = getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(out, dict):
        out = [out["logits"]] if isinstance(out.get("logits"), torch.Tensor) else list(out.values())
    if isinstance(out, (tuple, list)):
        for v in out:
            if isinstance(v, torch.Tensor):
                return v
    raise TypeError(f"the model returned {type(out).__name__}, which holds no logits tensor")


def _device(model: nn.Module) -> torch.device:
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")


class Task:
    """The protocol every task follows; ``Classification`` is the reference implementation."""

    name: str = ""
    metric: str = "accuracy"

    def collate(self, split: Split, idx: torch.Tensor) -> Batch:
        raise NotImplementedError

    def logits(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """The model's logits on ``batch`` (in its current train/eval mode)."""
        return model_logits(model(*batch.args()))

    def outputs(self, model: nn.Module, batch: Batch, features: dict | None = None) -> Outputs:
        return Outputs(self.logits(model, batch), dict(features or {}), batch.mask)

    @torch.no_grad()
    def predict(self, model: nn.Module, split: Split, batch_size: int = 512) -> torch.Tensor:
        """Logits of ``model`` in eval mode for all of ``split``, in batches, on the CPU (each batch runs on the device
        of the model's parameters); restores the training flag."""
        was_training = model.training
        model.eval()
        device = _device(model)
        try:
            out = [self.logits(model, self.collate(split, torch.arange(i, min(i + batch_size, len(split))))
                               .to(device)).cpu()
                   for i in range(0, len(split), batch_size)]
        finally:
            model.train(was_training)
        return torch.cat(out) if out else torch.empty(0)

    def epoch_order(self, split: Split, generator: torch.Generator, batch_size: int) -> torch.Tensor:
        """The order the samples of one training epoch are visited in, cut into batches of ``batch_size``: a random
        permutation. Token ids are grouped by length (sorted within windows of 50 batches, the batches then
        shuffled), so a batch pads to little more than its own texts; the last, partial batch stays last."""
        order = torch.randperm(len(split), generator=generator)
        if split.mask is None or len(split) <= batch_size:
            return order
        lengths = split.mask.sum(1)
        window = 50 * batch_size
        batches = []
        for i in range(0, len(order), window):
            w = order[i:i + window]
            batches.extend(w[torch.argsort(lengths[w], descending=True, stable=True)].split(batch_size))
        last = [batches.pop()] if len(batches[-1]) < batch_size else []
        shuffled = [batches[j] for j in torch.randperm(len(batches), generator=generator).tolist()]
        return torch.cat(shuffled + last)

    def evaluate(self, model: nn.Module, split: Split) -> dict[str, float]:
        raise NotImplementedError

    def reduce(self, values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """The mean of ``values`` (B, L, ...) over the positions where ``mask`` (B, L) is 1; the plain mean without
        a mask. Padding never changes the result."""
        if mask is None:
            return values.mean()
        m = mask.to(values.dtype)
        while m.dim() < values.dim():
            m = m.unsqueeze(-1)
        per_position = values.numel() // max(1, values.shape[0] * values.shape[1])
        return torch.where(m > 0, values, 0.0).sum() / (m.sum() * per_position).clamp_min(1)  # NaN in padding too

    def example_inputs(self, spec: InputSpec, n: int = 1, *, length: int | None = None) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def input_names(self, spec: InputSpec) -> list[str]:
        raise NotImplementedError

    def dynamic_axes(self, spec: InputSpec) -> dict[str, dict[int, str]]:
        raise NotImplementedError

    def report(self) -> dict:
        """What the report and metrics.json say of the task."""
        return {"task": self.name, "metric": self.metric}


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


TASKS: dict[str, Callable[[], Task]] = {"classification": Classification}


def get_task(name: str = "classification") -> Task:
    """A fresh task by name."""
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; tasks: {', '.join(sorted(TASKS))}")
    return TASKS[name]()
