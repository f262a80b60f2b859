"""Training health checks: dead ReLU units.

A ReLU unit whose pre-activation is negative for every input outputs 0 everywhere, gets no gradient and never
recovers. Too large first steps kill many at once; Hinton KD at a high temperature is prone to it, because its
T²-scaled soft term behaves like a squared error on the logits, whose gradient (unlike cross-entropy's) grows with
the distance to the teacher. The trainer probes the student after every epoch and warns when a layer has lost a
large share of its units.

    dead = dead_units(model, x)            # {"layers.1": (402, 800), ...}
"""
from __future__ import annotations

from collections import Counter

import torch
from torch import nn

from ..inference import predict_logits

RELUS = (nn.ReLU, nn.ReLU6)
WARN_SHARE = 0.25  # warn when at least this share of a layer's units is dead
MIN_UNITS = 8  # layers narrower than this are not judged


def dead_units(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> dict[str, tuple[int, int]]:
    """For every ReLU (``nn.ReLU`` / ``nn.ReLU6`` module) of ``model``: (units that output 0 for every input of
    ``x``, units). A unit is a feature of a linear layer's output or a channel (dimension 1) of a convolution's,
    which is dead only when it is 0 at every position of every input. A ReLU module called more than once in a
    forward pass (a block that reuses its activation) is judged per call, named "path (call k)". Runs in eval mode
    on the model's device and restores the training flag."""
    calls: list[tuple[str, torch.Tensor]] = []  # (path, units alive) of each ReLU call in the current forward
    alive: dict[tuple[int, str], torch.Tensor] = {}  # (call number, path) -> units alive on any input so far

    def record(path: str):
        def hook(_module, _inputs, out):
            on = out.detach() > 0
            calls.append((path, on.transpose(0, 1).reshape(on.shape[1], -1).any(1) if on.dim() > 1
                          else on.any().reshape(1)))
        return hook

    def merge(_model, _inputs, _out):  # after each batch's forward pass
        for k, (path, on) in enumerate(calls):
            alive[k, path] = alive[k, path] | on if (k, path) in alive else on
        calls.clear()

    handles = [m.register_forward_hook(record(path)) for path, m in model.named_modules() if isinstance(m, RELUS)]
    handles.append(model.register_forward_hook(merge))
    try:
        predict_logits(model, x, batch_size)  # eval mode, batches on the model's device, training flag restored
    finally:
        for h in handles:
            h.remove()
    times = Counter(path for _, path in alive)
    numbered: Counter[str] = Counter()
    out: dict[str, tuple[int, int]] = {}
    for (_, path), units in alive.items():
        numbered[path] += 1
        name = path if times[path] == 1 else f"{path} (call {numbered[path]})"
        out[name] = (int((~units).sum()), units.numel())
    return out


def dead_warning(dead: dict[str, tuple[int, int]], probe: int, epoch: int) -> str | None:
    """A one-line warning naming the layers where at least WARN_SHARE of the units are dead, or None."""
    bad = [f"{n} of {total} units of '{path}'" for path, (n, total) in dead.items()
           if total >= MIN_UNITS and n >= WARN_SHARE * total]
    if not bad:
        return None
    return (f"{', '.join(bad)} output 0 for all of {probe} training inputs after epoch {epoch} (dead ReLUs: they get "
            "no gradient and never recover). Usually the first steps were too large: add train.warmup_epochs (e.g. 5) "
            "or lower train.lr")
