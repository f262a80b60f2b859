"""The numbers of a run as the report shows them: summary rows, claimed ranges and the formats shared with the CLI."""
from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence

from .history import to_number

MISSING = "—"
VARIANT_ORDER = ("teacher", "student_scratch", "student", "student_int8")
# compression and deployment variants, shown after the four standard ones in this order (unknown ones last)
EXTRA_ORDER = ("teacher_pruned", "student_pruned", "student_pruned_int8", "student_lowrank", "student_lowrank_int8",
               "student_qat", "student_dynamic_int8", "student_fp16", "student_tflite", "student_tflite_int8",
               "student_pte")
DEFAULT_LABELS = {"teacher": "Teacher", "student_scratch": "Student from scratch", "student": "Distilled student",
                  "student_int8": "Distilled student (int8)", "teacher_pruned": "Pruned teacher",
                  "student_pruned": "Pruned student", "student_pruned_int8": "Pruned student (int8)",
                  "student_lowrank": "Low-rank student", "student_lowrank_int8": "Low-rank student (int8)",
                  "student_qat": "QAT student (int8)", "student_dynamic_int8": "Student (dynamic int8, ORT)",
                  "student_fp16": "Student (fp16, ORT)", "student_tflite": "Student (TFLite)",
                  "student_tflite_int8": "Student (TFLite int8)", "student_pte": "Student (ExecuTorch)"}
NOUNS = {"teacher": "teacher", "student_scratch": "scratch student", "student": "distilled student",
         "student_int8": "int8 student", "teacher_pruned": "pruned teacher", "student_pruned": "pruned student",
         "student_pruned_int8": "pruned int8 student", "student_lowrank": "low-rank student",
         "student_lowrank_int8": "low-rank int8 student", "student_qat": "QAT int8 student",
         "student_dynamic_int8": "dynamic-int8 student", "student_fp16": "fp16 student",
         "student_tflite": "TFLite student", "student_tflite_int8": "TFLite int8 student",
         "student_pte": "ExecuTorch student"}
NOT_DEPLOYED = ("teacher", "student_scratch")  # the reference and the ablation baseline, not deployment candidates
PARITY_THRESHOLD = 0.99  # the pipeline flags a converted artifact agreeing less often with the fp32 student
SUMMARY_KEYS = ("accuracy", "macro_f1", "agreement", "params", "file_bytes", "macs",
                "latency_ms_b1", "latency_ms_b1_p90", "latency_ms_b32")
SOURCE_KEYS = {"agreement": "agreement_with_teacher"}  # summary key -> metrics.json key where they differ


def ordered_variants(metrics: dict) -> list[str]:
    """Variant keys in report order: teacher, scratch student, student, int8 student, the known compressed and
    converted variants (``EXTRA_ORDER``), then any others as metrics lists them."""
    variants = metrics.get("variants") or {}
    known = [name for name in VARIANT_ORDER + EXTRA_ORDER if name in variants]
    return known + [name for name in variants if name not in known]


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


def format_sig(x: float | None, digits: int = 3) -> str:
    """A small or large quantity with ``digits`` significant digits and no exponent where readable:
    ``0.000412``, ``1.25``, ``1250``; ``4.1e-07`` below a millionth; ``—`` for None."""
    if x is None:
        return MISSING
    if x == 0:
        return "0"
    if abs(x) < 1e-6:
        return f"{x:.{digits - 1}e}"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(x))))
    return f"{x:.{decimals}f}"


# --- Pareto front ---------------------------------------------------------------------------------


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both size (smaller is better) and accuracy (higher is better).

    ``points`` are ``(size, accuracy)`` pairs; pairs with a missing, non-finite or non-positive size or a missing
    accuracy are never on the front. The indices come in order of increasing size (so of increasing accuracy);
    of identical points only the first is kept.
    """
    valid = [(to_number(size), to_number(acc), i) for i, (size, acc) in enumerate(points)]
    valid = [(size, acc, i) for size, acc, i in valid if size is not None and size > 0 and acc is not None]
    front, best = [], -math.inf
    for size, acc, i in sorted(valid, key=lambda p: (p[0], -p[1], p[2])):
        if acc > best:
            front.append(i)
            best = acc
    return front


# --- deployment: variants against the teacher and the claims --------------------------------------


def deployed_variants(metrics: dict) -> list[str]:
    """Variants that are deployment candidates (every one but the teacher and the scratch student), in report order."""
    return [name for name in ordered_variants(metrics) if name not in NOT_DEPLOYED]


def claim_floors(metrics: dict) -> dict[str, float | None]:
    """The lower end of each seed claim, the bar a variant must reach to meet it: retention as a fraction,
    size reduction in % smaller, batch-1 speed-up as a factor (None where the paper claims nothing)."""
    claims = metrics.get("claims") or {}

    def floor(key: str) -> float | None:
        values = [to_number(v) for v in claims.get(key) or []]
        values = [v for v in values if v is not None]
        return min(values) if values else None

    return {"retention": floor("accuracy_retention"), "size_pct": floor("size_reduction_pct"),
            "speedup_b1": floor("speedup")}


def _factor(before, after) -> float | None:
    """``before / after`` when both are positive numbers, else None."""
    before, after = to_number(before), to_number(after)
    return before / after if before and after and before > 0 and after > 0 else None


def meets(value: float | None, floor: float | None) -> bool | None:
    """Whether a measured value reaches a claim's lower bound; None when either is missing."""
    if value is None or floor is None:
        return None
    return value >= floor - 1e-9 * max(1.0, abs(floor))


def deployment_rows(metrics: dict) -> list[dict]:
    """One row per deployment candidate against the fp32 teacher, with raw numbers (None where not measured).

    Keys: variant, label, retention (fraction of the teacher's accuracy), size_factor (× smaller), size_pct
    (% smaller), macs_factor, speedup_b1 (teacher's batch-1 median over the variant's, each in its fastest
    runtime), agreement_fp32
    (agreement with the fp32 student), parity_flag, sparsity, and ``met``: {retention, size_pct, speedup_b1}
    -> True / False / None (no claim or not measured).
    """
    variants = metrics.get("variants") or {}
    teacher = variants.get("teacher") or {}
    floors = claim_floors(metrics)
    rows = []
    for name in deployed_variants(metrics):
        variant = variants[name] or {}
        accuracy, teacher_accuracy = to_number(variant.get("accuracy")), to_number(teacher.get("accuracy"))
        size_factor = _factor(teacher.get("file_bytes"), variant.get("file_bytes"))
        row = {"variant": name, "label": variant_label(metrics, name),
               "retention": accuracy / teacher_accuracy if accuracy is not None and teacher_accuracy else None,
               "size_factor": size_factor, "size_pct": None if size_factor is None else 100 * (1 - 1 / size_factor),
               "macs_factor": _factor(teacher.get("macs"), variant.get("macs")),
               "speedup_b1": _factor(teacher.get("latency_ms_b1_best", teacher.get("latency_ms_b1")),
                                     variant.get("latency_ms_b1_best", variant.get("latency_ms_b1"))),
               "agreement_fp32": to_number(variant.get("agreement_with_fp32_student")),
               "parity_flag": bool(variant.get("parity_flag")), "sparsity": to_number(variant.get("sparsity"))}
        row["met"] = {key: meets(row[key], floors[key]) for key in ("retention", "size_pct", "speedup_b1")}
        rows.append(row)
    return rows


def parity_warnings(metrics: dict) -> list[dict]:
    """Variants the pipeline flagged (``parity_flag``) as disagreeing with the fp32 student: variant, label and
    agreement (None where not recorded)."""
    return [{"variant": name, "label": variant_label(metrics, name),
             "agreement": to_number(variant_metric(metrics, name, "agreement_with_fp32_student"))}
            for name in ordered_variants(metrics) if variant_metric(metrics, name, "parity_flag")]


# --- deployment: energy ---------------------------------------------------------------------------


def energy_rows(metrics: dict) -> list[dict]:
    """Estimated energy of one inference per variant that has it, in µJ, with its breakdown and source.

    Keys: variant, label, dtype, memory, total_uj, compute_uj, weight_uj, activation_uj (None where missing),
    source, vs_teacher (teacher's total over this one's, None for the teacher or without a teacher estimate).
    """
    rows = []
    for name in ordered_variants(metrics):
        energy = variant_metric(metrics, name, "energy")
        if not isinstance(energy, dict):
            continue
        total = to_number(energy.get("total_uj"))
        if total is None and to_number(energy.get("total_pj")) is not None:
            total = to_number(energy.get("total_pj")) * 1e-6
        if total is None:
            continue
        part = {key: to_number(energy.get(f"{key}_pj")) for key in ("compute", "weight", "activation")}
        rows.append({"variant": name, "label": variant_label(metrics, name), "dtype": energy.get("dtype"),
                     "memory": energy.get("memory"), "total_uj": total,
                     **{f"{key}_uj": None if pj is None else pj * 1e-6 for key, pj in part.items()},
                     "source": energy.get("source")})
    teacher = next((row["total_uj"] for row in rows if row["variant"] == "teacher"), None)
    for row in rows:
        row["vs_teacher"] = None if row["variant"] == "teacher" else _factor(teacher, row["total_uj"])
    return rows


def training_energy_rows(metrics: dict) -> list[dict]:
    """Tracked training energy per stage: stage, label, energy_kwh, emissions_g (g CO2-eq), duration_s, method,
    estimate (bool or None) and source; non-finite numbers (a failed tracker writes NaN) become None."""
    rows = []
    for stage, entry in (metrics.get("training_energy") or {}).items():
        if not isinstance(entry, dict):
            continue
        kg = to_number(entry.get("emissions_kg_co2eq"))
        known = stage in (metrics.get("variants") or {}) or stage in DEFAULT_LABELS
        label = variant_label(metrics, stage) if known else entry.get("label") or stage
        rows.append({"stage": stage, "label": label, "energy_kwh": to_number(entry.get("energy_kwh")),
                     "emissions_g": None if kg is None else 1000 * kg, "duration_s": to_number(entry.get("duration_s")),
                     "method": entry.get("method"), "estimate": entry.get("estimate"), "source": entry.get("source")})
    return rows


# --- deployment: microcontroller fit --------------------------------------------------------------


def board_name(mcu: dict, board: str) -> str:
    """A board's readable name from its profile notes (``Arduino Nano 33 BLE Sense, nRF52840: …`` ->
    ``Arduino Nano 33 BLE Sense``), else its key."""
    note = str((mcu.get("notes") or {}).get(board) or "")
    name = re.split(r"[,:]", note, maxsplit=1)[0].strip()
    return name if name and not note.lower().startswith("user-defined") and len(name) <= 40 else board


def mcu_rows(metrics: dict) -> list[dict]:
    """One row per board of ``metrics["mcu"]``: board (key), name, note, target (bool), the needed / available /
    margin bytes of flash and SRAM (None where missing) and fits / fits_flash / fits_sram (bool or None)."""
    mcu = metrics.get("mcu") or {}
    target = mcu.get("target_board")
    rows = []
    for board, fit in (mcu.get("boards") or {}).items():
        if not isinstance(fit, dict):
            continue
        row = {"board": board, "name": board_name(mcu, board), "note": (mcu.get("notes") or {}).get(board),
               "target": target is not None and target in (board, fit.get("board"))}
        for memory in ("flash", "sram"):
            needed, available = to_number(fit.get(f"{memory}_needed")), to_number(fit.get(f"{memory}_available"))
            margin = to_number(fit.get(f"{memory}_margin"))
            if margin is None and needed is not None and available is not None:
                margin = available - needed
            fits = fit.get(f"fits_{memory}")
            row.update({f"{memory}_needed": needed, f"{memory}_available": available, f"{memory}_margin": margin,
                        f"fits_{memory}": bool(fits) if fits is not None else None if margin is None else margin >= 0})
        fits = fit.get("fits")
        if fits is None and False in (row["fits_flash"], row["fits_sram"]):
            fits = False
        elif fits is None and None not in (row["fits_flash"], row["fits_sram"]):
            fits = True
        row["fits"] = None if fits is None else bool(fits)
        rows.append(row)
    return rows


def format_kib(n: float | None) -> str:
    """Bytes in binary kilobytes as MCU datasheets count them (1 KB = 1024 bytes): one decimal below 100 KB,
    none above, thousands grouped and a typographic minus: ``34.2``, ``926``, ``2,048``, ``−4.2``."""
    if n is None:
        return MISSING
    kb = n / 1024
    return (f"{kb:.1f}" if abs(kb) < 99.95 else f"{kb:,.0f}").replace("-", "−")
