"""LeNet-5 of LeCun, Bottou, Bengio & Haffner 1998, "Gradient-Based Learning Applied to Document Recognition",
as used by the data-free distillation papers (DAFL, Chen et al. 2019: LeNet-5 teacher, LeNet-5-half student).

conv5 (6) → ReLU → max-pool 2 → conv5 (16) → ReLU → max-pool 2 → conv5 (120) → ReLU → fc 84 → ReLU → fc.
LeNet-5 reads 32×32 fields; smaller inputs (MNIST's 28×28) are zero-padded to that by conv1's padding, as
LeCun et al. centred the digits in 32×32 fields. ``width`` scales every layer (0.5: LeNet-5-half, 3-8-60-42);
``batch_norm`` adds BatchNorm after each convolution (DeepInversion needs BN statistics in the teacher).
"""
from __future__ import annotations

import torch
from torch import nn

from tinykd.errors import TinyKDError
from tinykd.models.checks import IMAGE_FIX, check_in_shape, check_positive
from tinykd.models.registry import register_model


class LeNet5(nn.Module):
    """``conv1 relu1 pool1 conv2 relu2 pool2 conv3 relu3 flatten fc1 relu4 fc2`` (+ ``bn1..3`` with batch_norm)."""

    def __init__(self, in_shape: tuple[int, ...], num_classes: int, width: float = 1.0, batch_norm: bool = False):
        super().__init__()
        check_in_shape(in_shape, 3, "(C, H, W)", IMAGE_FIX)
        width = check_positive("width", width)
        c1, c2, c3, f1 = (max(1, round(c * width)) for c in (6, 16, 120, 84))
        channels, height, wide = in_shape
        pad = tuple(max(0, (32 - s + 1) // 2) for s in (height, wide))
        size = [s + 2 * p - 4 for s, p in zip((height, wide), pad)]  # after conv1 (5×5)
        size = [(s // 2 - 4) // 2 - 4 for s in size]  # pool, conv2, pool, conv3
        if min(size) < 1:
            raise TinyKDError(f"input {height}x{wide} is too small for LeNet-5", "use inputs of at least 28x28")
        self.conv1 = nn.Conv2d(channels, c1, 5, padding=pad, bias=not batch_norm)
        self.bn1 = nn.BatchNorm2d(c1) if batch_norm else nn.Identity()
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(c1, c2, 5, bias=not batch_norm)
        self.bn2 = nn.BatchNorm2d(c2) if batch_norm else nn.Identity()
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.conv3 = nn.Conv2d(c2, c3, 5, bias=not batch_norm)
        self.bn3 = nn.BatchNorm2d(c3) if batch_norm else nn.Identity()
        self.relu3 = nn.ReLU()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(c3 * size[0] * size[1], f1)
        self.relu4 = nn.ReLU()
        self.fc2 = nn.Linear(f1, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.bn1(self.conv1(x))))
        x = self.pool2(self.relu2(self.bn2(self.conv2(x))))
        x = self.flatten(self.relu3(self.bn3(self.conv3(x))))
        return self.fc2(self.relu4(self.fc1(x)))


@register_model("lenet5", "LeNet-5 (LeCun et al. 1998): 3 conv5 + 2 fc, 61.7k params on MNIST; width and BN options")
def lenet5(*, num_classes: int, in_shape: tuple[int, ...], width: float = 1.0, batch_norm: bool = False) -> LeNet5:
    return LeNet5(in_shape, num_classes, width, batch_norm)


@register_model("lenet5_half", "LeNet-5-half (DAFL's student, Chen et al. 2019): every layer half as wide")
def lenet5_half(*, num_classes: int, in_shape: tuple[int, ...], batch_norm: bool = False) -> LeNet5:
    return LeNet5(in_shape, num_classes, 0.5, batch_norm)
