"""Depthwise-separable CNN for keyword spotting: DS-CNN of Zhang, Suda, Lai & Chandra 2017,
"Hello Edge: Keyword Spotting on Microcontrollers", as used by the MLPerf Tiny KWS reference.

A strided 10x4 conv, then blocks of (3x3 depthwise conv-BN-ReLU, 1x1 pointwise conv-BN-ReLU),
dropout, global average pooling and a fully connected layer. Splitting each 3x3 conv into a
per-channel 3x3 and a 1x1 cuts its weights and MACs about 8x at 64 channels, which is what fits it on an MCU.
The 10x4 kernel spans (H, W) of the input: Hello Edge feeds (time, frequency) = (49, 10) MFCCs,
so with (n_mels, frames) spectrograms its 10 taps run along frequency instead; both work.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from tinykd.errors import TinyKDError
from tinykd.models.checks import IMAGE_FIX, check_dropout, check_in_shape, check_int
from tinykd.models.registry import register_model


def ds_block(channels: int) -> nn.Sequential:
    """Depthwise 3x3 (one filter per channel, ``groups=channels``) then pointwise 1x1, each with BN and ReLU."""
    return nn.Sequential(OrderedDict(
        dw_conv=nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False),
        dw_bn=nn.BatchNorm2d(channels),
        dw_relu=nn.ReLU(),
        pw_conv=nn.Conv2d(channels, channels, 1, bias=False),
        pw_bn=nn.BatchNorm2d(channels),
        pw_relu=nn.ReLU(),
    ))


class DSCNN(nn.Module):
    """``conv1, bn1, relu1 -> blocks.i (dw_*, pw_*) -> drop -> pool -> fc``."""

    def __init__(self, in_shape: tuple[int, ...], num_classes: int, width: int = 64, blocks: int = 4,
                 dropout: float = 0.4):
        super().__init__()
        check_in_shape(in_shape, 3, "(C, H, W)", IMAGE_FIX)
        width = check_int("width", width)
        blocks = check_int("blocks", blocks, minimum=0)
        dropout = check_dropout(dropout)
        channels, height, length = in_shape
        if min(height, length) < 2:
            raise TinyKDError(f"input {height}x{length} is too small for the stride-2 first conv (needs H, W >= 2)",
                              "use cnn1d or mlp for this input")
        # Padding (4, 1) makes the stride-2 10x4 conv map (H, W) to (H // 2, W // 2), like TF's
        # 'same' padding in the reference, so small inputs such as (1, 40, 32) keep a usable map.
        self.conv1 = nn.Conv2d(channels, width, (10, 4), stride=2, padding=(4, 1), bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu1 = nn.ReLU()
        self.blocks = nn.Sequential(*(ds_block(width) for _ in range(blocks)))
        self.drop = nn.Dropout(dropout)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.relu1(self.bn1(self.conv1(x))))
        return self.fc(self.flatten(self.pool(self.drop(x))))


@register_model("dscnn", "DS-CNN (Hello Edge, MLPerf Tiny KWS reference): 64 channels, 4 depthwise-separable blocks")
def dscnn(*, num_classes: int, in_shape: tuple[int, ...], width: int = 64, blocks: int = 4,
          dropout: float = 0.4) -> DSCNN:
    return DSCNN(in_shape, num_classes, width, blocks, dropout)


@register_model("dscnn_small", "DS-CNN at half width: 32 channels, 4 depthwise-separable blocks, about 1/3 of dscnn's parameters")
def dscnn_small(*, num_classes: int, in_shape: tuple[int, ...], width: int = 32, blocks: int = 4,
                dropout: float = 0.4) -> DSCNN:
    return DSCNN(in_shape, num_classes, width, blocks, dropout)
