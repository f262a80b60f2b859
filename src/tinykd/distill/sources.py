"""What the trainer can take in place of one frozen teacher module and in place of the train split.

A ``TeacherSource`` answers a batch with the teacher's ``Outputs``: a module run live (``ModuleTeacher``, what a
plain ``nn.Module`` teacher becomes), a cache of those outputs on disk, or several teachers combined per sample.
It sees the whole batch, so it may use ``batch.index`` (a cache row) and ``batch.y`` (label-aware weights).

A ``BatchSource`` makes every training batch itself (data-free distillation): a generator trained against the
teacher, or inputs optimised against it. Its parameters, buffers and optimizers are checkpointed with the run.

Batches a source makes, or the trainer alters (mixup), carry index -1: they match no dataset row.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from rich.console import Console
from torch import nn

from ..data.spec import Split
from ..types import Batch, Outputs
from .capture import FeatureCapture

TeacherRun = Callable[[Batch], Outputs]


def module_fingerprint(module: nn.Module) -> str:
    """sha256 of a module's architecture (its repr) and of every parameter and buffer: names, dtypes, shapes, bytes."""
    h = hashlib.sha256(repr(module).encode())
    for name, value in module.state_dict().items():
        h.update(f"{name}|{value.dtype}|{tuple(value.shape)}".encode())
        h.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class TeacherSource:
    """The teacher's Outputs for a batch. ``module`` is what loss terms see as the teacher (its paths and shapes,
    ``pairs: auto``); the trainer keeps it in eval mode. The default runs ``module`` live with feature hooks."""

    module: nn.Module

    def prepare(self, train: Split, console: Console) -> None:
        """Called once per fit with the inputs the training batches are cut from (transfer data included)."""

    @contextmanager
    def open(self, paths: Sequence[str]) -> Iterator[TeacherRun]:
        """While open, the yielded function returns the teacher's logits and its features at ``paths`` for a batch."""
        with FeatureCapture(self.module, list(paths), role="teacher") as cap:
            yield lambda batch: cap(*batch.args(), mask=batch.mask)

    def fingerprint(self) -> str:
        """A hash that changes whenever the outputs could change (the teacher cache's key)."""
        return module_fingerprint(self.module)

    def to(self, device: torch.device) -> TeacherSource:
        """Move what runs the teacher to ``device`` (the trainer's); returns the source."""
        self.module.to(device)
        return self

    def outputs(self, batch: Batch, paths: Sequence[str] = ()) -> Outputs:
        """One batch's outputs, hooks opened and closed around it (term setup, tests)."""
        with self.open(paths) as run:
            return run(batch)


class ModuleTeacher(TeacherSource):
    """A frozen ``nn.Module`` run live on every batch: the classic offline teacher."""

    def __init__(self, module: nn.Module):
        self.module = module


def as_teacher_source(teacher: nn.Module | TeacherSource | None) -> TeacherSource | None:
    """``teacher`` as a TeacherSource (a plain module is wrapped in ModuleTeacher)."""
    if teacher is None or isinstance(teacher, TeacherSource):
        return teacher
    return ModuleTeacher(teacher)


class BatchSource(nn.Module):
    """Makes each training batch in place of shuffled slices of the train split (data-free distillation).

    Subclasses set ``steps_per_epoch`` and implement ``example`` and ``next_batch``. Trainable state (a generator)
    lives in the module; ``optimizers()`` names the optimizers that update it inside ``next_batch``. The trainer
    saves and restores both with its checkpoints, so resume stays exact; nothing here reaches the exported student.
    ``parts`` may hold named values of the last step (the generator's losses), logged as ``source/<name>``.
    """

    steps_per_epoch: int = 1

    def __init__(self):
        super().__init__()
        self.parts: dict[str, float] = {}

    def example(self, n: int) -> Batch:
        """A batch of ``n`` samples for the loss terms' setup, made without training anything."""
        raise NotImplementedError

    def next_batch(self, epoch: int, step: int) -> Batch:
        """The batch of ``step`` (0-based) in ``epoch`` (1-based); may update the source's own parameters first."""
        raise NotImplementedError

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Optimizers of the source's own parameters, by name, for the checkpoints."""
        return {}

    def bind(self, student: nn.Module) -> None:
        """Called by the trainer with the model it trains, before the first batch; sources that read the
        student (an adversarial generator) keep a reference, others ignore it."""
