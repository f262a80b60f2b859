"""The Task protocol: what a kind of problem means to every stage (see ``tinykd.tasks``). Imports only torch, the
batch types and the data spec, so any layer may use it."""
from __future__ import annotations


import torch
from torch import nn

from ..data.spec import InputSpec, Split
from ..types import Batch, Outputs


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
    # The history key that picks the best epoch, and whether larger ("max") or smaller ("min") is better.
    selection: tuple[str, str] = ("val_accuracy", "max")

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
