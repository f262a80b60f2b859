"""Colours, markers and names shared by every figure and the HTML table, so a variant looks the same everywhere."""
from __future__ import annotations

import itertools

from .summary import ordered_variants

VARIANT_COLORS = {
    "teacher": "#1f4e79",
    "student_scratch": "#8c8c8c",
    "student": "#2a9d5c",
    "student_int8": "#e07b00",
    # compression and deployment variants: a family shares a hue, its int8 form is the lighter shade
    "teacher_pruned": "#6f9fd8",
    "student_pruned": "#7b52ab",
    "student_pruned_int8": "#b592db",
    "student_lowrank": "#8c6d1f",
    "student_lowrank_int8": "#cfa93a",
    "student_qat": "#d6457a",
    "student_fp16": "#2bb5c9",
    "student_dynamic_int8": "#a63a3a",
    "student_tflite": "#4d7f2e",
    "student_tflite_int8": "#97c24a",
    "student_pte": "#3d3d8f",
}
EXTRA_COLORS = ("#e377c2", "#17becf", "#bcbd22", "#9467bd", "#8c564b", "#ff7f0e", "#1f77b4", "#2ca02c",
                "#d62728", "#7f7f7f")
RUNTIME_MARKERS = {"pytorch": "o", "ort_fp32": "s", "ort_int8": "^", "ort_fp16": "D", "ort_dynamic_int8": "v",
                   "tflite": "P", "tflite_int8": "X", "executorch": "h"}
EXTRA_MARKERS = ("*", "p", "<", ">", "8", "H", "d")
RUNTIME_NAMES = {"pytorch": "PyTorch", "ort_fp32": "ORT fp32", "ort_int8": "ORT int8", "ort_fp16": "ORT fp16",
                 "ort_dynamic_int8": "ORT dynamic int8", "tflite": "TFLite", "tflite_int8": "TFLite int8",
                 "executorch": "ExecuTorch"}
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
    """A colour for every variant: fixed for the known ones, then a palette (colours not taken first) for the others."""
    names = ordered_variants(metrics)
    taken = {VARIANT_COLORS[name] for name in names if name in VARIANT_COLORS}
    extras = itertools.cycle([c for c in EXTRA_COLORS if c not in taken] or EXTRA_COLORS)
    return {name: VARIANT_COLORS.get(name) or next(extras) for name in names}


def runtime_markers(runtimes: list[str]) -> dict[str, str]:
    """A marker for every runtime: fixed for the known ones, then a cycle for the others."""
    unknown = [r for r in runtimes if r not in RUNTIME_MARKERS]
    extras = {r: EXTRA_MARKERS[i % len(EXTRA_MARKERS)] for i, r in enumerate(unknown)}
    return {r: RUNTIME_MARKERS.get(r) or extras[r] for r in runtimes}


def runtime_name(runtime: str) -> str:
    """A readable runtime name: ``ort_int8`` -> ``ORT int8``, unknown ones with spaces for underscores."""
    return RUNTIME_NAMES.get(runtime) or runtime.replace("ort_", "ORT ").replace("_", " ")

