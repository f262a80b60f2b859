"""The one module that holds everything a distillation run trains: the student and the loss terms' helpers."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import nn


class DistillModule(nn.Module):
    """The student plus every trainable helper of its loss terms: regressors, embeddings, discriminators, auxiliary
    heads. Online peers are the student itself (a ``Peers`` module). Its ``parameters()`` are exactly what the
    optimizer updates, so one wrapper around it (DistributedDataParallel, a parameter count) sees them all.

    Checkpoints keep the two parts apart (``model.*`` and ``helpers.*``), so the student's weights load on their own.
    """

    def __init__(self, student: nn.Module, helpers: Sequence[nn.Module] = ()):
        super().__init__()
        self.student = student
        self.helpers = nn.ModuleList(helpers)

    def forward(self, *args, run: Callable[[], Any] | None = None, **kwargs):
        """The student's forward pass; or, given ``run``, ``run()``: a whole training step's forward (the student
        through its feature hooks, then the loss terms with their helpers). A wrapper that hooks ``forward``
        (DistributedDataParallel) then sees every parameter the step's loss uses, helpers included, and reduces all
        their gradients."""
        if run is not None:
            return run()
        return self.student(*args, **kwargs)

    def helper_params(self) -> int:
        """Parameters the helpers add for training only (nothing of them is exported)."""
        return sum(p.numel() for p in self.helpers.parameters())
