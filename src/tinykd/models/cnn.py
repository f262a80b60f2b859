"""Plain 2-D CNN for images and spectrograms: VGG-style stages of 3x3 conv-BN-ReLU then 2x2 max-pool.

Only ops every edge runtime and quantizer handles (Conv, BatchNorm, ReLU, MaxPool, Linear), with
conv-bn-relu triples as named siblings so ``torch.ao.quantization.fuse_modules`` can fold them.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from tinykd.errors import TinyKDError
from tinykd.models.checks import IMAGE_FIX, check_dropout, check_in_shape, check_int, check_ints
from tinykd.models.registry import register_model


def conv_stage(c_in: int, c_out: int, convs: int) -> nn.Sequential:
    """``convs`` x (conv3x3-bn-relu), then a 2x2 max-pool that halves H and W."""
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    for i in range(convs):
        # One conv per stage reads as features.0.conv; several as features.0.conv1, conv2, ...
        suffix = "" if convs == 1 else str(i + 1)
        # No conv bias: the BatchNorm that follows has its own shift.
        layers[f"conv{suffix}"] = nn.Conv2d(c_in if i == 0 else c_out, c_out, 3, padding=1, bias=False)
        layers[f"bn{suffix}"] = nn.BatchNorm2d(c_out)
        layers[f"relu{suffix}"] = nn.ReLU()
    layers["pool"] = nn.MaxPool2d(2)
    return nn.Sequential(layers)


class CNN(nn.Module):
    """``features.i`` conv stages -> ``head`` (flatten, [fc1, relu], drop, fc)."""

    def __init__(self, in_shape: tuple[int, ...], num_classes: int, widths: Sequence[int] = (32, 64),
                 convs_per_stage: int = 1, hidden: int = 128, dropout: float = 0.0):
        super().__init__()
        check_in_shape(in_shape, 3, "(C, H, W)", IMAGE_FIX)
        widths = check_ints("widths", widths, "[32, 64]")
        convs_per_stage = check_int("convs_per_stage", convs_per_stage)
        hidden = check_int("hidden", hidden, minimum=0)
        dropout = check_dropout(dropout)
        channels, height, width = in_shape
        max_stages = min(height, width).bit_length() - 1  # each pool floors H / 2: n stages need H, W >= 2**n
        if len(widths) > max_stages:
            raise TinyKDError(
                f"input {height}x{width} is too small for {len(widths)} stages (each 2x2 max-pool halves H and W)",
                f"use at most {max_stages} stages (len(widths) <= {max_stages}) or a larger input" if max_stages
                else "use cnn1d or mlp for this input")
        self.features = nn.Sequential(*(
            conv_stage(c_in, c_out, convs_per_stage) for c_in, c_out in zip([channels, *widths[:-1]], widths)
        ))
        flat = widths[-1] * (height >> len(widths)) * (width >> len(widths))
        head: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
        if hidden:
            head.update(fc1=nn.Linear(flat, hidden), relu=nn.ReLU())
        head.update(drop=nn.Dropout(dropout), fc=nn.Linear(hidden or flat, num_classes))
        self.head = nn.Sequential(head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@register_model("cnn", "2-D CNN: stages of conv3x3-BN-ReLU + 2x2 max-pool, then an MLP head")
def cnn(*, num_classes: int, in_shape: tuple[int, ...], widths: Sequence[int] = (32, 64),
        convs_per_stage: int = 1, hidden: int = 128, dropout: float = 0.0) -> CNN:
    return CNN(in_shape, num_classes, widths, convs_per_stage, hidden, dropout)
