"""Argument checks shared by the model families.

Each raises a TinyKDError naming the argument, what is valid and how to fix it; ``create_model``
adds the model's name. Values usually come from YAML recipes, so lists may arrive as lists or tuples.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

from tinykd.errors import TinyKDError

# Fixes for an in_shape with the wrong number of axes, by what the family expects.
IMAGE_FIX = ("use cnn1d (or mlp) for 1-D signals shaped (C, L); "
             "for a one-channel image shaped (H, W) use in_shape (1, H, W)")
SIGNAL_FIX = ("for a signal shaped (L,) use in_shape (1, L); "
              "use cnn, resnet or dscnn for images and spectrograms shaped (C, H, W)")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_in_shape(in_shape: tuple[int, ...], ndim: int, layout: str, fix: str) -> None:
    """``in_shape`` must have ``ndim`` axes laid out as ``layout``, e.g. 3 and "(C, H, W)"."""
    if len(in_shape) != ndim:
        raise TinyKDError(f"takes inputs shaped {layout}, got in_shape {tuple(in_shape)}", fix)


def check_int(name: str, value: object, minimum: int = 1) -> int:
    if not _is_int(value) or value < minimum:
        raise TinyKDError(f"argument '{name}' must be an int >= {minimum}, got {value!r}",
                          f"e.g. {name}={max(minimum, 1)}")
    return value


def check_positive(name: str, value: object) -> float:
    if (_is_int(value) or isinstance(value, float)) and 0 < value < math.inf:
        return float(value)
    raise TinyKDError(f"argument '{name}' must be a number > 0, got {value!r}", f"e.g. {name}=1")


def check_ints(name: str, value: object, example: str, allow_empty: bool = False) -> list[int]:
    """A list (or tuple) of positive ints, e.g. layer widths."""
    if (isinstance(value, Sequence) and not isinstance(value, str)
            and all(_is_int(v) and v >= 1 for v in value) and (value or allow_empty)):
        return list(value)
    kind = "a list" if allow_empty else "a non-empty list"
    raise TinyKDError(f"argument '{name}' must be {kind} of positive ints, got {value!r}",
                      f"e.g. {name}={example}")


def check_dropout(value: object, name: str = "dropout") -> float:
    if (_is_int(value) or isinstance(value, float)) and 0 <= value < 1:
        return float(value)
    raise TinyKDError(f"argument '{name}' must be a probability in [0, 1), got {value!r}",
                      f"e.g. {name}=0.5, or {name}=0 for none")


def check_choice(name: str, value: object, options: Sequence[str]) -> str:
    if value not in options:
        raise TinyKDError(f"argument '{name}' must be one of {', '.join(options)}, got {value!r}",
                          f"e.g. {name}={options[0]!r}")
    return value
