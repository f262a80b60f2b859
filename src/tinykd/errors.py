"""Errors a user can cause. Each one says what is wrong, what was expected and how to fix it."""
from __future__ import annotations

import difflib
from collections.abc import Iterable


class TinyKDError(Exception):
    """A failure caused by input (recipe, CLI, data, checkpoint) with a suggested fix.

    The CLI prints ``str(err)`` without a traceback and exits with code 2.
    """

    def __init__(self, what: str, fix: str | None = None, *, where: str | None = None):
        self.what = what
        self.fix = fix
        self.where = where
        super().__init__(self.format())

    def format(self) -> str:
        head = f"{self.where}: {self.what}" if self.where else self.what
        return f"{head}\n  fix: {self.fix}" if self.fix else head


class RecipeError(TinyKDError):
    """A recipe field is unknown, mistyped, missing or points to a missing file."""


class DataError(TinyKDError):
    """A dataset could not be found or read."""


class CheckpointError(TinyKDError):
    """A checkpoint is missing, corrupt or unsafe to load."""


class TrainingError(TinyKDError):
    """Training diverged (NaN/inf loss) or cannot continue."""


class StorageError(TinyKDError):
    """A file of the run could not be written or its folder made: a full disk, missing permissions, a file where a
    folder should be."""


def closest(name: str, options: Iterable[str]) -> str | None:
    """The closest valid option to a misspelt ``name``, or None when nothing is close."""
    options = list(options)
    match = difflib.get_close_matches(name, options, n=1, cutoff=0.5)
    return match[0] if match else None


def unknown_name(kind: str, name: str, options: Iterable[str], *, where: str | None = None) -> TinyKDError:
    """A TinyKDError for an unknown registry name, suggesting the closest valid one."""
    options = sorted(options)
    guess = closest(name, options)
    fix = f"did you mean '{guess}'? " if guess else ""
    fix += f"valid {kind}s: {', '.join(options)}"
    return TinyKDError(f"unknown {kind} '{name}'", fix, where=where)
