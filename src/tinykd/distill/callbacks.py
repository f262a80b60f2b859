"""What the training loop does besides the loss, as callbacks: random shifts of the inputs, max-norm weight
constraints, the dead-unit probe and the non-finite guard. ``default_callbacks`` builds the set a TrainConfig asks
for; the trainer calls each hook in list order."""
from __future__ import annotations

import math

import torch
from torch import nn

from ..data.augment import shift_batch
from ..data.spec import Split
from ..errors import TrainingError
from ..recipe import TrainConfig
from ..types import Batch
from .health import dead_units, dead_warning

DEAD_PROBE = 512  # training inputs (evenly spaced over the split) the dead-unit check runs on after every epoch


class Callback:
    """Hooks into one fit. ``changes_inputs``: the callback alters the inputs of training batches, so the teacher
    must see each batch's view live (a cache keyed by dataset index would answer for the unaltered input)."""

    changes_inputs = False

    def on_fit_start(self, trainer, train: Split) -> None:
        """Check that the callback applies to ``train`` (raise a TrainingError when it does not)."""

    def on_batch(self, trainer, batch: Batch) -> Batch:
        """The training batch the step uses (on the CPU, before mixup)."""
        return batch

    def on_step_end(self, trainer) -> None:
        """After each optimizer step."""

    def on_epoch_end(self, trainer, epoch: int, train: Split, row: dict) -> None:
        """After validation; may add entries to the epoch's history ``row`` or raise."""


class Shift(Callback):
    """Random translation of images (C, H, W) and signals (C, L) by up to ``pixels`` (train.shift)."""

    changes_inputs = True

    def __init__(self, pixels: int):
        self.pixels = pixels

    def on_fit_start(self, trainer, train: Split) -> None:
        if train.mask is not None or train.x.dim() not in (3, 4):
            shape = tuple(train.x.shape[1:])
            raise TrainingError(f"{trainer.label}: train.shift moves images (C, H, W) or signals (C, L), but the "
                                f"inputs are {'token ids' if train.mask is not None else 'shaped'} {shape}",
                                "set train.shift to 0 for these inputs")

    def on_batch(self, trainer, batch: Batch) -> Batch:
        return batch.with_inputs(shift_batch(batch.x, self.pixels))


@torch.no_grad()
def apply_max_norm(model: nn.Module, radius: float) -> None:
    """Project each unit's incoming weight vector of ``model`` into the L2 ball of ``radius``: the rows of every
    linear weight and the filters of every (non-transposed) convolution, w ← w · min(1, radius / ‖w‖₂)."""
    for m in model.modules():
        if isinstance(m, nn.Linear) or (isinstance(m, nn.modules.conv._ConvNd) and not m.transposed):
            m.weight.copy_(torch.renorm(m.weight, p=2, dim=0, maxnorm=radius))


class MaxNorm(Callback):
    """The max-norm constraint of train.max_norm after every step."""

    def __init__(self, radius: float):
        self.radius = radius

    def on_step_end(self, trainer) -> None:
        apply_max_norm(trainer.model, self.radius)


class FiniteGuard(Callback):
    """A TrainingError when the weights or the validation loss are NaN/inf after an epoch: a finite loss can still
    take a step that leaves NaN weights (a huge learning rate), and those must never be saved."""

    def on_epoch_end(self, trainer, epoch: int, train: Split, row: dict) -> None:
        named = [*trainer.model.named_parameters(), *trainer.model.named_buffers(),
                 *(("helpers." + n, t) for n, t in trainer.helpers.named_parameters())]
        bad = next((n for n, t in named if t.is_floating_point() and not bool(torch.isfinite(t).all())), None)
        if bad is not None:
            raise trainer.diverged(f"its weights hold NaN/inf after epoch {epoch} (e.g. '{bad}')", epoch)
        if trainer.val_size and not math.isfinite(row["val_loss"]):
            raise trainer.diverged(f"its validation loss is {row['val_loss']} after epoch {epoch}", epoch)


class DeadUnitProbe(Callback):
    """The warning, once per fit, when a layer of the model has lost many ReLU units (see distill.health); for models
    of one dense input (a batch source makes its own inputs; token ids and several inputs are not probed)."""

    def __init__(self):
        self.warned = False

    def on_epoch_end(self, trainer, epoch: int, train: Split, row: dict) -> None:
        if self.warned or trainer.batches is not None or len(train) == 0 or train.mask is not None:
            return
        n = len(train)
        idx = torch.arange(n) if n <= DEAD_PROBE else torch.linspace(0, n - 1, DEAD_PROBE).long()  # spread out:
        # a split sorted by class would otherwise show only some classes, and units of the others would look dead
        batch = trainer.task.collate(train, idx)
        if list(batch.inputs) != ["x"]:  # a model of several inputs: the probe feeds one tensor
            return
        probe = batch.x
        message = dead_warning(dead_units(trainer.model, probe), len(probe), epoch)
        self.warned = bool(message)
        if message:
            row["dead_units"] = message  # kept in the history (last.json, history.csv) and metrics.json


def default_callbacks(cfg: TrainConfig) -> list[Callback]:
    """The callbacks a TrainConfig asks for: shift and max-norm when set; the guard and the dead-unit probe always."""
    out: list[Callback] = []
    if cfg.shift:
        out.append(Shift(cfg.shift))
    if cfg.max_norm:
        out.append(MaxNorm(cfg.max_norm))
    return out + [FiniteGuard(), DeadUnitProbe()]
