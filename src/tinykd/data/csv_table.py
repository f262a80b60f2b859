"""The ``csv`` reader: numeric feature columns plus one label column (numbers or strings)."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from tinykd.data.labels import encode_labels
from tinykd.data.registry import RawData, register_dataset
from tinykd.data.spec import InputSpec
from tinykd.errors import DataError

Rows = list[tuple[int, list[str]]]  # (line number, cells)


def _read_rows(file: Path, header: bool, delimiter: str) -> tuple[list[str] | None, Rows]:
    """The header cells (None without a header) and the non-blank data rows with their line numbers."""
    try:
        with open(file, newline="", encoding="utf-8-sig") as f:
            lines = enumerate(csv.reader(f, delimiter=delimiter), 1)
            rows = [(n, row) for n, row in lines if any(c.strip() for c in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"cannot read CSV file ({err})", "save it as UTF-8 text with one sample per line",
                        where=str(file)) from None
    names = [c.strip() for c in rows[0][1]] if header and rows else None
    rows = rows[1:] if header else rows
    if not rows:
        raise DataError("the CSV file has no data rows", "add one row per sample", where=str(file))
    return names, rows


def _label_index(label_column: str | int, names: list[str] | None, width: int, file: Path) -> int:
    """Position of the label column, given by header name or by integer index (negative counts from the end)."""
    if isinstance(label_column, int) and not isinstance(label_column, bool):
        if -width <= label_column < width:
            return label_column % width
        raise DataError(f"label_column {label_column} is out of range for {width} columns",
                        f"use an index in 0..{width - 1} (or -1 for the last column)", where=str(file))
    if names is None:
        raise DataError(f"label_column '{label_column}' is a name but header is false",
                        "give label_column as a column index, or set header: true", where=str(file))
    if label_column not in names:
        raise DataError(f"label column '{label_column}' missing; the columns are {', '.join(names)}",
                        "set label_column to the name (or index) of the column that holds the labels",
                        where=str(file))
    return names.index(label_column)


def _features(rows: Rows, label_at: int, width: int, file: Path) -> tuple[np.ndarray, list[str]]:
    """Float features (label column removed) and the raw label strings; ragged or non-numeric rows are errors."""
    for line, row in rows:
        if len(row) != width:
            raise DataError(f"line {line} has {len(row)} columns, expected {width}",
                            "give every row the same columns", where=str(file))
        if not row[label_at].strip():
            raise DataError(f"line {line} has an empty label", "fill in or remove the row", where=str(file))
        for column, cell in enumerate(row):
            if column != label_at and not _is_number(cell):
                raise DataError(f"line {line}, column {column + 1}: '{cell}' is not a number",
                                "features must be numeric; drop or encode text columns", where=str(file))
    x = np.array([row[:label_at] + row[label_at + 1:] for _, row in rows], dtype=np.float64)
    return x, [row[label_at].strip() for _, row in rows]


def _is_number(cell: str) -> bool:
    """Whether ``cell`` parses as a float (so numpy's conversion of the whole table cannot fail)."""
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _read_table(file: Path, label_column: str | int, header: bool,
                delimiter: str) -> tuple[np.ndarray, list[str], list[str] | None, int]:
    """Features, label strings, header names (or None) and label column position of one CSV file."""
    names, rows = _read_rows(file, header, delimiter)
    width = len(names) if names is not None else len(rows[0][1])
    if width < 2:
        raise DataError(f"found {width} column(s); need at least one feature and a label",
                        "check the delimiter option (default ',')", where=str(file))
    label_at = _label_index(label_column, names, width, file)
    x, labels = _features(rows, label_at, width, file)
    return x, labels, names, label_at


def _feature_names(names: list[str] | None, label_at: int) -> list[str] | None:
    """Header names of the feature columns (all but the label), or None without a header."""
    return names[:label_at] + names[label_at + 1:] if names else None


@register_dataset("csv", needs_path=True, description="a CSV file of numeric features with a label column (tabular)")
def csv_table(path: Path, *, label_column: str | int = "label", header: bool = True,
              test_path: Path | None = None, delimiter: str = ",") -> RawData:
    """Read a CSV (and an optional test CSV with the same columns); labels map to sorted unique class names."""
    if not isinstance(header, bool):
        raise DataError(f"option header must be true or false, got {header!r}", "set header: true")
    if not isinstance(delimiter, str) or len(delimiter) != 1:
        raise DataError(f"option delimiter must be one character, got {delimiter!r}",
                        "set delimiter to e.g. ','")
    x, labels, names, label_at = _read_table(path, label_column, header, delimiter)
    test = _read_table(test_path, label_column, header, delimiter) if test_path else None
    features = _feature_names(names, label_at)
    if test is not None and (test[0].shape[1] != x.shape[1] or _feature_names(*test[2:]) != features):
        raise DataError(f"the test CSV's {test[0].shape[1]} feature columns differ from the train CSV's "
                        f"{x.shape[1]} ({', '.join(features) if features else 'no header'})",
                        "use the same feature columns, in the same order, in both files", where=str(test_path))
    encoded, classes = encode_labels(labels, *([test[1]] if test else []))
    spec = InputSpec((x.shape[1],), len(classes), "tabular", classes)
    info = {"files": [str(path)] + ([str(test_path)] if test_path else []),
            "label_column": names[label_at] if names else label_at, "feature_columns": features}
    sources = {"train": path.name, **({"test": Path(test_path).name} if test_path else {})}
    if test is None:
        return RawData(x, encoded[0], spec, info=info, sources=sources)
    return RawData(x, encoded[0], spec, x_test=test[0], y_test=encoded[1], info=info, sources=sources)
