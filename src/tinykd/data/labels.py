"""Turning label values read from files (strings or numbers) into class indices and class names."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _sort_key(value: str) -> tuple[int, float | str]:
    """Sort integer-looking labels numerically ("2" before "10") and everything else as text."""
    try:
        return (0, int(value))
    except ValueError:
        return (1, value)


def encode_labels(*label_sets: Sequence[str]) -> tuple[list[np.ndarray], tuple[str, ...]]:
    """Map the sorted unique values of all ``label_sets`` to 0..K-1; one int64 array per set, and the names.

    Sets are encoded together so that train and test share one class index mapping.
    """
    names = sorted({str(v) for labels in label_sets for v in labels}, key=_sort_key)
    index = {name: i for i, name in enumerate(names)}
    encoded = [np.array([index[str(v)] for v in labels], dtype=np.int64) for labels in label_sets]
    return encoded, tuple(names)
