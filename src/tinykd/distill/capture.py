"""Forward hooks that record the outputs of submodules by path, so feature losses need no model changes."""
from __future__ import annotations

import torch
from torch import nn

from ..errors import TinyKDError, closest
from ..inference import module_device
from ..tasks import model_logits
from ..types import Batch, Outputs  # defined in tinykd.types; still importable from here


def _first_tensor(out):
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    if isinstance(out, dict):
        for v in out.values():
            if isinstance(v, torch.Tensor):
                return v
    return None


def resolve_module(model: nn.Module, path: str, *, role: str = "model") -> nn.Module:
    """The submodule at ``path`` ("layer1.0.conv1"); a TinyKDError listing close paths when absent."""
    names = [n for n, _ in model.named_modules() if n]
    if path not in names:
        guess = closest(path, names)
        hint = f"did you mean '{guess}'? " if guess else ""
        raise TinyKDError(f"the {role} has no module at path '{path}'",
                          f"{hint}run `tinykd layers MODEL` to list valid paths")
    return model.get_submodule(path)


class FeatureCapture:
    """Context manager: while active, ``self.features[path]`` holds the latest output of each hooked module."""

    def __init__(self, model: nn.Module, paths: list[str] | tuple[str, ...], *, role: str = "model"):
        self.model = model
        self.paths = list(dict.fromkeys(paths))
        self.features: dict[str, torch.Tensor] = {}
        self._handles = []
        self._modules = {p: resolve_module(model, p, role=role) for p in self.paths}

    def _hook(self, path: str):
        def record(_module, _inputs, output):
            self.features[path] = _first_tensor(output)
        return record

    def __enter__(self) -> FeatureCapture:
        self._handles = [m.register_forward_hook(self._hook(p)) for p, m in self._modules.items()]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def __call__(self, *args: torch.Tensor, mask: torch.Tensor | None = None) -> Outputs:
        """Run the model on its positional inputs ``args`` (``batch.args()``) and return its logits with the captured
        features and the batch's padding ``mask``."""
        self.features = {}
        logits = model_logits(self.model(*args))
        return Outputs(logits, dict(self.features), mask)

    def batch(self, batch: Batch) -> Outputs:
        """``self(*batch.args(), mask=batch.mask)``."""
        return self(*batch.args(), mask=batch.mask)


def forward_with_features(model: nn.Module, x: torch.Tensor | Batch, paths: list[str] | tuple[str, ...] = (), *,
                          role: str = "model") -> Outputs:
    """One forward pass on ``x`` (a tensor, or a Batch of named inputs) recording the outputs of ``paths`` (in the
    model's current train/eval mode)."""
    args, mask = (x.args(), x.mask) if isinstance(x, Batch) else ((x,), None)
    if not paths:
        return Outputs(model_logits(model(*args)), {}, mask)
    with FeatureCapture(model, paths, role=role) as cap:
        return cap(*args, mask=mask)


def list_layers(model: nn.Module, in_shape: tuple[int, ...], *, inputs: tuple[torch.Tensor, ...] | None = None
                ) -> list[tuple[str, str, tuple[int, ...] | None]]:
    """(path, module type, output shape for batch 1) of every named submodule, in execution order; the model runs on
    zeros of ``in_shape``, or on the given batch-1 ``inputs`` (token ids and a mask)."""
    shapes: dict[str, tuple[int, ...] | None] = {}
    order: list[str] = []
    handles = []
    for name, module in model.named_modules():
        if not name:
            continue
        def record(_m, _i, out, name=name):
            t = _first_tensor(out)
            shapes[name] = tuple(t.shape) if t is not None else None
            order.append(name)
        handles.append(module.register_forward_hook(record))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            device = module_device(model)
            model(*(tuple(t.to(device) for t in inputs) if inputs is not None
                    else (torch.zeros(1, *in_shape, device=device),)))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    types = dict(model.named_modules())
    seen = list(dict.fromkeys(order))
    unseen = [n for n in types if n and n not in shapes]
    return [(n, type(types[n]).__name__, shapes.get(n)) for n in seen + unseen]
