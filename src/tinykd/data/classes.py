"""Class names a user gives (``data.class_names``): a list or a file of one name per line, checked against the
classes the reader found and applied to the raw data, so every figure and artifact shows them."""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tinykd.data.registry import RawData
from tinykd.errors import DataError

_ORDER = "one name per class, in the order of the class indices (label 0 first)"


def read_class_names(given: Sequence[str] | Path) -> list[str]:
    """The names of a list, or of a UTF-8 file of one name per line (surrounding spaces and blank lines dropped)."""
    if isinstance(given, Path):
        if not given.is_file():
            raise DataError("class_names names a folder, not a file", f"write a text file with {_ORDER}",
                            where=str(given))
        try:
            text = given.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as err:
            raise DataError(f"cannot read the class names file ({err})", f"save it as UTF-8 text with {_ORDER}",
                            where=str(given)) from None
        return [line.strip() for line in text.splitlines() if line.strip()]
    if isinstance(given, str) or not isinstance(given, Sequence):
        raise DataError(f"class_names must be a list of names or the path of a file, got {given!r}",
                        f"give {_ORDER}")
    bad = [(i, v) for i, v in enumerate(given) if not isinstance(v, str) or not v.strip()]
    if bad:
        i, v = bad[0]
        raise DataError(f"class_names item {i} is {v!r}, not a name (YAML reads unquoted yes/no/on/off/true/false "
                        "as booleans and digits as numbers)", "quote every name, e.g. ['yes', 'no']")
    return [v.strip() for v in given]


def _numbered(names: Sequence[str]) -> bool:
    """Whether the reader's class names are just label numbers ("0", "1", ..., or the label values "1", "5")."""
    try:
        [int(n) for n in names]
    except ValueError:
        return False
    return True


def apply_class_names(raw: RawData, names: list[str], where: str | None = None) -> RawData:
    """``raw`` with ``names`` as its class names.

    Numbered classes (IDX, integer labels) are renamed in index order. Classes the files already name (image
    sub-folders, string labels) keep their names: ``names`` must list exactly those, and its order becomes the
    class order (the labels are renumbered to match).
    """
    found, k = raw.spec.class_names, raw.spec.num_classes
    if len(names) != k:
        labels = f"labels {found[0]}..{found[-1]}" if _numbered(found) else ", ".join(found[:8]) + (
            ", …" if k > 8 else "")
        raise DataError(f"class_names has {len(names)} name(s), but the data has {k} classes ({labels})",
                        f"give {_ORDER}", where=where)
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise DataError(f"class_names lists {', '.join(map(repr, twice))} more than once",
                        "give every class its own name", where=where)
    if _numbered(found):
        return dataclasses.replace(raw, spec=dataclasses.replace(raw.spec, class_names=tuple(names)))
    if set(names) != set(found):
        missing = [n for n in found if n not in names]
        raise DataError(f"the files name their classes ({', '.join(found[:8])}{', …' if k > 8 else ''}), and "
                        f"class_names does not list {', '.join(map(repr, missing[:5]))}",
                        "leave class_names out to use the files' names, or list exactly those names (in any "
                        "order: the order becomes the class order)", where=where)
    new_index = np.array([names.index(n) for n in found], dtype=np.int64)  # old class index -> new one

    def renumber(y: np.ndarray | None) -> np.ndarray | None:
        if y is None or not np.issubdtype(np.asarray(y).dtype, np.integer):
            return y  # _arrays explains labels that are not class indices
        return new_index[np.asarray(y)]

    return dataclasses.replace(raw, y=renumber(raw.y), y_val=renumber(raw.y_val), y_test=renumber(raw.y_test),
                               spec=dataclasses.replace(raw.spec, class_names=tuple(names)))
