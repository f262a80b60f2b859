"""Multi-layer perceptron: flattens any input, then Linear-activation-dropout blocks and a Linear classifier.

The MNIST nets of Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network":
a 784-1200-1200-10 teacher trained with dropout and a 784-800-800-10 student.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from tinykd.models.checks import check_choice, check_dropout, check_ints
from tinykd.models.registry import register_model

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "relu6": nn.ReLU6, "gelu": nn.GELU, "tanh": nn.Tanh}


class MLP(nn.Module):
    """``flatten -> input dropout -> layers.i (fc, act, drop) -> fc``; with ``hidden=[]`` it is a linear classifier.
    ``input_dropout`` drops input values (Hinton et al. 2012 use 0.2 on MNIST pixels); ``dropout`` hidden units."""

    def __init__(self, in_shape: tuple[int, ...], num_classes: int, hidden: Sequence[int] = (256, 128),
                 dropout: float = 0.0, activation: str = "relu", input_dropout: float = 0.0):
        super().__init__()
        hidden = check_ints("hidden", hidden, "[256, 128]", allow_empty=True)
        dropout = check_dropout(dropout)
        act = ACTIVATIONS[check_choice("activation", activation, list(ACTIVATIONS))]
        self.flatten = nn.Flatten()
        self.input_dropout = check_dropout(input_dropout, "input_dropout")  # functional: no module when unused
        widths = [math.prod(in_shape), *hidden]
        self.layers = nn.Sequential(*(
            nn.Sequential(OrderedDict(fc=nn.Linear(w_in, w_out), act=act(), drop=nn.Dropout(dropout)))
            for w_in, w_out in zip(widths[:-1], widths[1:])
        ))
        self.fc = nn.Linear(widths[-1], num_classes)

    def extra_repr(self) -> str:
        return f"input_dropout={self.input_dropout}" if self.input_dropout else ""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.flatten(x)
        if self.input_dropout:
            x = F.dropout(x, self.input_dropout, self.training)
        return self.fc(self.layers(x))


@register_model("mlp", "MLP on the flattened input; hidden widths, dropout and activation are arguments")
def mlp(*, num_classes: int, in_shape: tuple[int, ...], hidden: Sequence[int] = (256, 128),
        dropout: float = 0.0, activation: str = "relu", input_dropout: float = 0.0) -> MLP:
    return MLP(in_shape, num_classes, hidden, dropout, activation, input_dropout)


@register_model("mlp_1200x2", "Hinton et al. 2015 MNIST teacher: two hidden layers of 1200 units, dropout 0.5")
def mlp_1200x2(*, num_classes: int, in_shape: tuple[int, ...], dropout: float = 0.5,
               activation: str = "relu", input_dropout: float = 0.0) -> MLP:
    return MLP(in_shape, num_classes, (1200, 1200), dropout, activation, input_dropout)


@register_model("mlp_800x2", "Hinton et al. 2015 MNIST student: two hidden layers of 800 units, no dropout")
def mlp_800x2(*, num_classes: int, in_shape: tuple[int, ...], dropout: float = 0.0,
              activation: str = "relu", input_dropout: float = 0.0) -> MLP:
    return MLP(in_shape, num_classes, (800, 800), dropout, activation, input_dropout)
