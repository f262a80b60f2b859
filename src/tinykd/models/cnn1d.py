"""1-D CNN for signals shaped (C, L), after the CNN of Greydanus 2020, "Scaling down Deep Learning" (MNIST-1D).

The paper's CNN is three stride-2 conv1d layers of 25 channels (kernels 5, 3, 3) with ReLU and a linear
layer, 94% on MNIST-1D. Here every conv has the same kernel with 'same' padding and is followed by
BatchNorm and ReLU, with optional max-pooling per stage; BN makes it train at higher learning rates.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from tinykd.errors import TinyKDError
from tinykd.models.checks import SIGNAL_FIX, check_dropout, check_in_shape, check_int, check_ints
from tinykd.models.registry import register_model


class CNN1d(nn.Module):
    """``features.i`` (conv, bn, relu[, pool]) -> ``head`` (flatten, drop, fc)."""

    def __init__(self, in_shape: tuple[int, ...], num_classes: int, widths: Sequence[int] = (32, 32, 32),
                 kernel_size: int = 5, stride: int = 2, pool: int = 1, dropout: float = 0.0):
        super().__init__()
        check_in_shape(in_shape, 2, "(C, L)", SIGNAL_FIX)
        widths = check_ints("widths", widths, "[32, 32, 32]")
        kernel_size = check_int("kernel_size", kernel_size)
        stride = check_int("stride", stride)
        pool = check_int("pool", pool)
        dropout = check_dropout(dropout)
        channels, length = in_shape
        padding = kernel_size // 2  # 'same' for odd kernels, so only stride and pool shrink the signal
        stages = []
        for c_in, c_out in zip([channels, *widths[:-1]], widths):
            stage: OrderedDict[str, nn.Module] = OrderedDict(
                conv=nn.Conv1d(c_in, c_out, kernel_size, stride, padding, bias=False),  # BN supplies the shift
                bn=nn.BatchNorm1d(c_out),
                relu=nn.ReLU(),
            )
            length = (length + 2 * padding - kernel_size) // stride + 1
            if pool > 1:
                stage["pool"] = nn.MaxPool1d(pool)
                length //= pool
            if length < 1:
                raise TinyKDError(
                    f"input length {in_shape[1]} is too short for {len(widths)} stages of stride {stride} "
                    f"and pool {pool}", "use fewer 'widths', a smaller 'stride' or 'pool'")
            stages.append(nn.Sequential(stage))
        self.features = nn.Sequential(*stages)
        self.head = nn.Sequential(OrderedDict(
            flatten=nn.Flatten(), drop=nn.Dropout(dropout), fc=nn.Linear(widths[-1] * length, num_classes)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@register_model("cnn1d", "1-D CNN for signals (MNIST-1D): stride-2 conv1d-BN-ReLU stages, then a linear layer")
def cnn1d(*, num_classes: int, in_shape: tuple[int, ...], widths: Sequence[int] = (32, 32, 32),
          kernel_size: int = 5, stride: int = 2, pool: int = 1, dropout: float = 0.0) -> CNN1d:
    return CNN1d(in_shape, num_classes, widths, kernel_size, stride, pool, dropout)
