"""The numbers of a run as the report shows them: summary rows, claimed ranges and the formats shared with the CLI."""
from __future__ import annotations

import math
from collections.abc import Callable

MISSING = "—"
VARIANT_ORDER = ("teacher", "student_scratch", "student", "student_int8")
DEFAULT_LABELS = {"teacher": "Teacher", "student_scratch": "Student from scratch", "student": "Distilled student",
                  "student_int8": "Distilled student (int8)"}
NOUNS = {"teacher": "teacher", "student_scratch": "scratch student", "student": "distilled student",
         "student_int8": "int8 student"}
SUMMARY_KEYS = ("accuracy", "macro_f1", "agreement", "params", "file_bytes", "macs",
                "latency_ms_b1", "latency_ms_b1_p90", "latency_ms_b32")
SOURCE_KEYS = {"agreement": "agreement_with_teacher"}  # summary key -> metrics.json key where they differ


def ordered_variants(metrics: dict) -> list[str]:
    """Variant keys in report order: teacher, scratch student, student, int8 student, then any others."""
    variants = metrics.get("variants") or {}
    known = [name for name in VARIANT_ORDER if name in variants]
    return known + [name for name in variants if name not in VARIANT_ORDER]


def variant_metric(metrics: dict, name: str, key: str):
    """One metric of one variant, None when the variant or the metric is missing."""
    return ((metrics.get("variants") or {}).get(name) or {}).get(key)


def variant_label(metrics: dict, name: str) -> str:
    """The variant's human label from metrics, else a default for the standard variants, else its key."""
    return variant_metric(metrics, name, "label") or DEFAULT_LABELS.get(name, name)


def variant_noun(metrics: dict, name: str) -> str:
    """A short lower-case name for running text: ``int8 student``; the label for non-standard variants."""
    return NOUNS.get(name) or variant_label(metrics, name)


def compared_variant(metrics: dict) -> str:
    """The variant the ratios compare with the teacher: named by ``ratios.compared`` ("X vs teacher"), else int8."""
    compared = (metrics.get("ratios") or {}).get("compared")
    return str(compared).split(" vs ")[0].strip() if compared else "student_int8"


def summary_rows(metrics: dict) -> list[dict]:
    """Rows of the summary table with raw numbers (None where not measured), in report order."""
    variants = metrics.get("variants") or {}
    rows = []
    for name in ordered_variants(metrics):
        variant = variants[name] or {}
        row = {"variant": name, "label": variant_label(metrics, name)}
        row.update({key: variant.get(SOURCE_KEYS.get(key, key)) for key in SUMMARY_KEYS})
        rows.append(row)
    return rows


def claimed_ranges(metrics: dict) -> dict[str, tuple[float, float] | None]:
    """Claimed ranges as factors (size, speed) and retention %, None where the seed paper claims nothing."""
    claims = metrics.get("claims") or {}

    def pair(key: str, convert: Callable[[float], float]) -> tuple[float, float] | None:
        values = claims.get(key)
        if not values or len(values) != 2 or any(v is None for v in values):
            return None
        low, high = sorted(convert(float(v)) for v in values)
        return (low, high) if math.isfinite(low) and math.isfinite(high) else None

    return {
        "size_reduction": pair("size_reduction_pct", lambda pct: 100 / (100 - pct) if pct < 100 else math.nan),
        "macs_reduction": None,
        "speedup_b1": pair("speedup", float),
        "accuracy_retention": pair("accuracy_retention", lambda f: 100 * f),
    }


def _scaled(value: float, units: tuple[str, ...], base: float) -> tuple[float, str]:
    """``value`` divided by the largest power of ``base`` that keeps it >= 1, with its unit."""
    for unit in units[:-1]:
        if abs(value) < base - 0.5:
            return value, unit
        value /= base
    return value, units[-1]


def _short(value: float) -> str:
    """A number with one decimal below 100 and none above (``4.2``, ``35.0``, ``422``)."""
    return f"{value:.1f}" if abs(value) < 100 else f"{value:.0f}"


def format_bytes(n: float | None) -> str:
    """A byte count in decimal units: ``512 B``, ``35.0 KB``, ``1.7 MB``; ``—`` for None."""
    if n is None:
        return MISSING
    if abs(n) < 1000:
        return f"{n:.0f} B"
    value, unit = _scaled(n, ("B", "KB", "MB", "GB", "TB"), 1000)
    return f"{_short(value)} {unit}"


def format_count(n: float | None) -> str:
    """A count with a k/M/G suffix: ``950``, ``35.0k``, ``422k``, ``4.2M``; ``—`` for None."""
    if n is None:
        return MISSING
    if abs(n) < 1000:
        return f"{n:.0f}"
    value, unit = _scaled(n, ("", "k", "M", "G", "T"), 1000)
    return f"{_short(value)}{unit}"


def format_percent(fraction: float | None) -> str:
    """A fraction as a percentage with one decimal, without the sign: ``0.981`` -> ``98.1``."""
    return MISSING if fraction is None else f"{100 * fraction:.1f}"


def format_ms(ms: float | None) -> str:
    """Milliseconds with up to three significant digits: ``0.041``, ``5.1``, ``12.3``, ``140``."""
    if ms is None:
        return MISSING
    return f"{ms:.3g}" if ms < 10 else _short(ms)


def format_factor(x: float | None) -> str:
    """An improvement factor: ``9.1×``, ``48×``; ``—`` for None."""
    if x is None:
        return MISSING
    return f"{x:.1f}×" if x < 10 else f"{x:.0f}×"
