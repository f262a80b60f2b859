"""Colours, markers and names shared by every figure and the HTML table, so a variant looks the same everywhere."""
from __future__ import annotations

import itertools

from .summary import ordered_variants

VARIANT_COLORS = {
    "teacher": "#1f4e79",
    "student_scratch": "#8c8c8c",
    "student": "#2a9d5c",
    "student_int8": "#e07b00",
}
EXTRA_COLORS = ("#7b52ab", "#d6457a", "#8c6d1f", "#2bb5c9", "#a63a3a", "#4d7f2e")
RUNTIME_MARKERS = {"pytorch": "o", "ort_fp32": "s", "ort_int8": "^"}
EXTRA_MARKERS = ("D", "v", "P", "X", "h", "*")
RUNTIME_NAMES = {"pytorch": "PyTorch", "ort_fp32": "ORT fp32", "ort_int8": "ORT int8", "tflite": "TFLite"}
CLAIM_COLOR = "#b9b9b9"

MPL_STYLE = {
    "font.size": 10.5,
    "axes.titlesize": 12,
    "axes.titleweight": "bold",
    "axes.labelsize": 10.5,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#e3e3e3",
    "grid.linewidth": 0.8,
    "axes.axisbelow": True,
    "legend.fontsize": 9.5,
    "legend.frameon": False,
    "xtick.labelsize": 9.5,
    "ytick.labelsize": 9.5,
    "figure.dpi": 110,
    "savefig.dpi": 110,
}


def variant_colors(metrics: dict) -> dict[str, str]:
    """A colour for every variant: fixed for the four standard ones, then a palette for the others."""
    extras = itertools.cycle(EXTRA_COLORS)
    return {name: VARIANT_COLORS.get(name) or next(extras) for name in ordered_variants(metrics)}


def runtime_markers(runtimes: list[str]) -> dict[str, str]:
    """A marker for every runtime: fixed for the known ones, then a cycle for the others."""
    unknown = [r for r in runtimes if r not in RUNTIME_MARKERS]
    extras = {r: EXTRA_MARKERS[i % len(EXTRA_MARKERS)] for i, r in enumerate(unknown)}
    return {r: RUNTIME_MARKERS.get(r) or extras[r] for r in runtimes}


def runtime_name(runtime: str) -> str:
    """A readable runtime name: ``ort_int8`` -> ``ORT int8``, unknown ones with spaces for underscores."""
    return RUNTIME_NAMES.get(runtime) or runtime.replace("ort_", "ORT ").replace("_", " ")

