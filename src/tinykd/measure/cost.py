"""Static costs of a model: parameters, MACs (torch.utils.flop_counter: FLOPs / 2) and file bytes."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..models import count_params


@torch.no_grad()
def count_macs(model: nn.Module, in_shape: tuple[int, ...], *, inputs: tuple[torch.Tensor, ...] | None = None) -> int:
    """Multiply-accumulates of one batch-1 forward pass in eval mode (FLOPs counted by PyTorch / 2), on zeros of
    ``in_shape`` or on the given batch-1 ``inputs`` (token ids and a mask of a stated length)."""
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter:
            model(*(inputs if inputs is not None else (torch.zeros(1, *in_shape),)))
    finally:
        model.train(was_training)
    return int(counter.get_total_flops() // 2)


def file_bytes(path: str | Path) -> int:
    """Bytes on disk of an artifact, including an ONNX external-data sidecar if there is one."""
    path = Path(path)
    total = path.stat().st_size
    sidecar = Path(f"{path}.data")
    return total + (sidecar.stat().st_size if sidecar.exists() else 0)


def weight_bytes(model: nn.Module, bits: int = 32) -> int:
    """Bytes the parameters occupy at ``bits`` per value (e.g. 8 for int8 weights)."""
    return count_params(model) * bits // 8


__all__ = ["count_params", "count_macs", "file_bytes", "weight_bytes"]
