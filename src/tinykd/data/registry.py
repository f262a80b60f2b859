"""Dataset registry: each dataset is a function that returns raw numpy arrays plus an InputSpec.

A registered function takes the resolved ``path`` as its only positional argument when
``needs_path`` is true (none otherwise) and its options as keyword-only arguments with defaults.
The keyword-only parameters are the dataset's valid options; the common code in ``loader.py``
turns the raw arrays into a DataBundle (splits, limit, normalization).
"""
from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tinykd.data.spec import InputSpec
from tinykd.errors import DataError, closest, unknown_name

DatasetFn = Callable[..., "RawData"]
# load_dataset's own settings (data.<key> in a recipe), which no reader takes as an option
DATA_SETTINGS = ("class_names", "labelled", "limit", "normalize", "test_fraction", "val_fraction")


@dataclass
class RawData:
    """What a dataset function returns: train arrays, optional predefined test/val arrays, spec, provenance."""

    x: np.ndarray
    y: np.ndarray
    spec: InputSpec
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None
    x_val: np.ndarray | None = None
    y_val: np.ndarray | None = None
    info: dict[str, Any] = field(default_factory=dict)  # "files" read plus reader/front-end settings
    # Where each part came from, for the run facts: {"train": "train.csv", "test": "test.csv"}; parts not named
    # fall back to the files read.
    sources: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class DatasetEntry:
    """A registered dataset: its function, whether it needs a path, and a one-line description."""

    name: str
    fn: DatasetFn
    needs_path: bool
    description: str
    task: str = "classification"  # "causal_lm": the reader returns a data.corpus.Corpus, split by corpus_bundle

    def defaults(self) -> dict[str, Any]:
        """The dataset's options and their default values, read from the function's keyword-only parameters."""
        params = inspect.signature(self.fn).parameters.values()
        return {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}


_REGISTRY: dict[str, DatasetEntry] = {}


def register_dataset(name: str, *, needs_path: bool, description: str,
                     task: str = "classification") -> Callable[[DatasetFn], DatasetFn]:
    """Decorator that makes a dataset function loadable by name through ``load_dataset``."""
    def decorate(fn: DatasetFn) -> DatasetFn:
        if name in _REGISTRY:
            raise ValueError(f"dataset '{name}' is already registered")
        _REGISTRY[name] = DatasetEntry(name, fn, needs_path, description, task)
        return fn
    return decorate


def list_datasets() -> dict[str, str]:
    """Registered dataset names mapped to their one-line descriptions, sorted by name."""
    return {name: _REGISTRY[name].description for name in sorted(_REGISTRY)}


def get_dataset(name: str) -> DatasetEntry:
    """The registry entry for ``name``; an unknown name raises an error suggesting the closest one."""
    if name not in _REGISTRY:
        raise unknown_name("dataset", name, _REGISTRY)
    return _REGISTRY[name]


def check_options(entry: DatasetEntry, options: dict[str, Any]) -> None:
    """Reject option names the dataset does not accept, naming the valid ones."""
    valid = sorted(entry.defaults())
    for key in options:
        if key in valid:
            continue
        if key in DATA_SETTINGS:
            raise DataError(f"'{key}' is a setting of every dataset, not an option of the '{entry.name}' reader",
                            f"set data.{key} next to data.name, not under data.options")
        guess = closest(key, valid)
        hint = f"did you mean '{guess}'? " if guess else ""
        allowed = f"valid options: {', '.join(valid)}" if valid else f"dataset '{entry.name}' takes no options"
        raise DataError(f"unknown option '{key}' for dataset '{entry.name}'", hint + allowed)
