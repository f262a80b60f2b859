"""CIFAR-style ResNet of He, Zhang, Ren & Sun 2016, "Deep Residual Learning for Image Recognition", section 4.2.

A 3x3 conv with 16 channels, then three stages of n basic blocks on 16, 32 and 64 channels (the
last two start with stride 2), global average pooling and a fully connected layer: 6n+2 layers.
Where a block changes shape the shortcut is a 1x1 conv + BN projection (the paper's option B)
rather than option A's zero padding, so every op is a plain Conv/BN/Add that exporters handle.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from tinykd.errors import TinyKDError
from tinykd.models.checks import IMAGE_FIX, check_in_shape, check_int, check_positive
from tinykd.models.registry import register_model


class BasicBlock(nn.Module):
    """``relu2(bn2(conv2(relu1(bn1(conv1(x))))) + shortcut(x))`` with two 3x3 convs."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(OrderedDict(
                conv=nn.Conv2d(c_in, c_out, 1, stride, bias=False), bn=nn.BatchNorm2d(c_out)))
        else:
            self.shortcut = nn.Identity()
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(out + self.shortcut(x))


class ResNet(nn.Module):
    """``conv1, bn1, relu -> layer1..3 (n BasicBlocks each) -> pool -> fc``; depth = 6n + 2."""

    def __init__(self, in_shape: tuple[int, ...], num_classes: int, depth: int = 20, width: float = 1.0):
        super().__init__()
        check_in_shape(in_shape, 3, "(C, H, W)", IMAGE_FIX)
        depth = check_int("depth", depth, minimum=8)
        if (depth - 2) % 6:
            nearest = max(8, 6 * round((depth - 2) / 6) + 2)
            raise TinyKDError(f"argument 'depth' must be 6n+2 for n >= 1 (e.g. 8, 20, 32, 56, 110), got {depth}",
                              f"use depth={nearest}")
        blocks = (depth - 2) // 6
        width = check_positive("width", width)
        # Width scales the paper's 16/32/64 channels, e.g. width=0.5 gives a thin student.
        c1, c2, c3 = (max(1, round(c * width)) for c in (16, 32, 64))
        self.conv1 = nn.Conv2d(in_shape[0], c1, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c1)
        self.relu = nn.ReLU()
        self.layer1 = self._stage(c1, c1, blocks, stride=1)
        self.layer2 = self._stage(c1, c2, blocks, stride=2)
        self.layer3 = self._stage(c2, c3, blocks, stride=2)
        # Adaptive pooling makes any H x W work, e.g. 28x28 MNIST (7x7 maps) as well as 32x32 CIFAR (8x8).
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(c3, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):  # the paper initialises as in He et al. 2015 ("Delving deep into rectifiers")
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    @staticmethod
    def _stage(c_in: int, c_out: int, blocks: int, stride: int) -> nn.Sequential:
        return nn.Sequential(*(BasicBlock(c_in if i == 0 else c_out, c_out, stride if i == 0 else 1)
                               for i in range(blocks)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.flatten(self.pool(x)))


@register_model("resnet", "CIFAR ResNet (He et al. 2016) of any depth 6n+2 and channel width multiplier")
def resnet(*, num_classes: int, in_shape: tuple[int, ...], depth: int = 20, width: float = 1.0) -> ResNet:
    return ResNet(in_shape, num_classes, depth, width)


@register_model("resnet8", "CIFAR ResNet-8 (He et al. 2016): 1 basic block per stage")
def resnet8(*, num_classes: int, in_shape: tuple[int, ...], width: float = 1.0) -> ResNet:
    return ResNet(in_shape, num_classes, 8, width)


@register_model("resnet20", "CIFAR ResNet-20 (He et al. 2016): 3 basic blocks per stage, 0.27M params")
def resnet20(*, num_classes: int, in_shape: tuple[int, ...], width: float = 1.0) -> ResNet:
    return ResNet(in_shape, num_classes, 20, width)


@register_model("resnet32", "CIFAR ResNet-32 (He et al. 2016): 5 basic blocks per stage, 0.46M params")
def resnet32(*, num_classes: int, in_shape: tuple[int, ...], width: float = 1.0) -> ResNet:
    return ResNet(in_shape, num_classes, 32, width)


@register_model("resnet56", "CIFAR ResNet-56 (He et al. 2016): 9 basic blocks per stage, 0.85M params")
def resnet56(*, num_classes: int, in_shape: tuple[int, ...], width: float = 1.0) -> ResNet:
    return ResNet(in_shape, num_classes, 56, width)
