"""Reading history.csv rows (values may be strings) into per-model, per-epoch numeric series."""
from __future__ import annotations

import math

LOSS_PREFIX = "loss/"


def to_number(value: object) -> float | None:
    """``value`` as a finite float, or None when empty, non-numeric or NaN/inf."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def model_rows(history: list[dict], model: str) -> list[dict]:
    """The rows of one model, sorted by epoch (rows without a numeric epoch are skipped)."""
    rows = [row for row in history if row.get("model") == model and to_number(row.get("epoch")) is not None]
    return sorted(rows, key=lambda row: to_number(row["epoch"]))


def series(rows: list[dict], column: str) -> tuple[list[float], list[float]]:
    """(epochs, values) of one column, leaving out epochs where the value is missing."""
    points = [(to_number(row["epoch"]), to_number(row.get(column))) for row in rows]
    kept = [(epoch, value) for epoch, value in points if value is not None]
    return [epoch for epoch, _ in kept], [value for _, value in kept]


def loss_columns(rows: list[dict]) -> list[str]:
    """All ``loss/*`` columns with at least one number, parents before their sub-parts (``kd``, ``kd.soft``)."""
    columns = {key for row in rows for key, value in row.items()
               if key.startswith(LOSS_PREFIX) and to_number(value) is not None}
    return sorted(columns, key=lambda c: (loss_term(c).split(".")[0], "." in loss_term(c), c))


def loss_term(column: str) -> str:
    """The term name of a loss column: ``loss/kd.soft`` -> ``kd.soft``."""
    return column[len(LOSS_PREFIX):]
