"""The "what this run shows" paragraph, generated from the numbers (plain text; the page escapes it)."""
from __future__ import annotations

from ..distill.schemes.registry import find_scheme
from .summary import (PARITY_THRESHOLD, claimed_ranges, compared_variant, energy_rows, format_factor, format_kib,
                      format_ms, format_sig, mcu_rows, parity_warnings, variant_metric, variant_noun)


def _pct(fraction: float) -> str:
    """``0.9827`` -> ``98.3 %``."""
    return f"{100 * fraction:.1f} %"


def _signed(points: float) -> str:
    """A signed number with a typographic minus: ``+1.9``, ``−3.9``."""
    return f"{points:+.1f}".replace("-", "−")


def _accuracy(metrics: dict, variant: str) -> float | None:
    """Test accuracy of a variant, None when missing."""
    return variant_metric(metrics, variant, "accuracy")


def _times(factor: float, better: str, worse: str) -> str:
    """``9.1× faster`` for factors of at least 1, ``1.3× slower`` below."""
    return f"{format_factor(factor)} {better}" if factor >= 1 else f"{format_factor(1 / factor)} {worse}"


def _join(parts: list[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def verdict(value: float, claim: tuple[float, float]) -> str:
    """``within``, ``above`` or ``below`` the claimed range."""
    low, high = claim
    return "below" if value < low else "above" if value > high else "within"


def headline(metrics: dict) -> str:
    """How much smaller, cheaper and faster the compared (int8) student is, and how much accuracy it keeps."""
    ratios = metrics.get("ratios") or {}
    final = compared_variant(metrics)
    templates = (("size_reduction", "is {} than the teacher", "smaller", "larger"),
                 ("speedup_b1", "runs {} at batch 1 (each in its fastest runtime)", "faster", "slower"),
                 ("macs_reduction", "needs {} multiply-accumulates", "fewer", "more"))
    clauses = [text.format(_times(ratios[key], better, worse)) for key, text, better, worse in templates
               if ratios.get(key)]
    retention = ratios.get("accuracy_retention")
    if retention is not None:
        teacher, student = _accuracy(metrics, "teacher"), _accuracy(metrics, final)
        detail = f" ({_pct(teacher)} → {_pct(student)})" if teacher is not None and student is not None else ""
        clauses.append(f"keeps {_pct(retention)} of the teacher's accuracy{detail}")
    if not clauses:
        return f"The {variant_noun(metrics, final)} could not be compared with the teacher: no ratios were measured."
    return f"The {variant_noun(metrics, final)} {_join(clauses)}."


def claims_sentence(metrics: dict) -> str:
    """Each measured ratio against the seed paper's claimed range (within / above / below)."""
    ratios = metrics.get("ratios") or {}
    claims = claimed_ranges(metrics)
    parts = []
    for key, name in (("size_reduction", "size reduction"), ("speedup_b1", "batch-1 speed-up"),
                      ("accuracy_retention", "accuracy retention")):
        value, claim = ratios.get(key), claims[key]
        if value is None or claim is None:
            continue
        if key == "accuracy_retention":
            value, shown, unit = 100 * value, f"{100 * value:.1f} %", " %"
        else:
            shown, unit = format_factor(value), "×"
        parts.append(f"the {name} ({shown}) is {verdict(value, claim)} the claimed "
                     f"{claim[0]:.2g}–{claim[1]:.2g}{unit}{_size_claim_note(metrics, key)}")
    return f"Against the seed paper's claims, {_join(parts)}." if parts else ""


def _size_claim_note(metrics: dict, key: str) -> str:
    """The size claim as the paper words it (`` (50–70 % smaller)``), empty for other keys."""
    pct = (metrics.get("claims") or {}).get("size_reduction_pct")
    return f" ({pct[0]:g}–{pct[1]:g} % smaller)" if key == "size_reduction" and pct and len(pct) == 2 else ""


def distillation_sentence(metrics: dict) -> str:
    """What distillation added over training the same student from scratch."""
    scratch, distilled = _accuracy(metrics, "student_scratch"), _accuracy(metrics, "student")
    if scratch is None or distilled is None:
        return ""
    change = 100 * (distilled - scratch)
    verb = "lifts" if change > 0 else "lowers" if change < 0 else "leaves"
    scheme = find_scheme((metrics.get("scheme") or {}).get("name"))
    how = scheme.phrase if scheme is not None else "Distillation"  # each scheme names itself (Scheme.phrase)
    text = (f"{how} {verb} the student's test accuracy from {_pct(scratch)} (trained from scratch) "
            f"to {_pct(distilled)} ({_signed(change)} points)")
    a_scratch = variant_metric(metrics, "student_scratch", "agreement_with_teacher")
    a_distilled = variant_metric(metrics, "student", "agreement_with_teacher")
    if a_scratch is not None and a_distilled is not None:
        text += f" and its agreement with the teacher from {_pct(a_scratch)} to {_pct(a_distilled)}"
    return text + "."


def quantization_sentence(metrics: dict) -> str:
    """What int8 quantization cost in accuracy."""
    fp32, int8 = _accuracy(metrics, "student"), _accuracy(metrics, "student_int8")
    if fp32 is None or int8 is None:
        return ""
    change = 100 * (int8 - fp32)
    effect = f"costs {-change:.1f} points of accuracy" if change < 0 else f"changes accuracy by {_signed(change)} points"
    return f"Quantizing the distilled student to int8 {effect} ({_pct(fp32)} → {_pct(int8)})."


def mcu_sentence(metrics: dict) -> str:
    """Whether the deployed variant fits the target microcontroller (or how many of the checked boards it fits)."""
    mcu = metrics.get("mcu") or {}
    rows = mcu_rows(metrics)
    if not rows:
        return ""
    variant = mcu.get("variant")
    noun = variant_noun(metrics, variant) if variant else "deployed model"
    target = next((row for row in rows if row["target"]), None)
    if target is None:
        fitting = [row["name"] for row in rows if row["fits"]]
        if not fitting:
            return f"The {noun} fits none of the {len(rows)} microcontroller boards checked."
        return (f"The {noun} fits {len(fitting)} of the {len(rows)} microcontroller boards checked "
                f"({_join(fitting)}).")
    if target["fits"] is None:
        return ""
    if target["fits"]:
        spare = [f"{format_kib(target[f'{m}_margin'])} KB {label}"
                 for m, label in (("flash", "flash"), ("sram", "SRAM")) if target[f"{m}_margin"] is not None]
        return (f"The {noun} fits the {target['name']}"
                + (f" with {_join(spare)} to spare" if spare else "")
                + " (runtime allowance included; here 1 KB = 1024 bytes, as in the board's datasheet).")
    over = [f"{label} by {format_kib(-target[f'{m}_margin'])} KB" for m, label in (("flash", "flash"), ("sram", "SRAM"))
            if target[f"fits_{m}"] is False and target[f"{m}_margin"] is not None]
    return (f"The {noun} does not fit the {target['name']}"
            + (f": it overflows {_join(over)} (1 KB = 1024 bytes)." if over else "."))


def energy_sentence(metrics: dict) -> str:
    """Estimated energy per inference of the teacher against the compared (int8) student, or the cheapest variant."""
    rows = {row["variant"]: row for row in energy_rows(metrics)}
    teacher = rows.get("teacher")
    others = [row for name, row in rows.items() if name != "teacher"]
    if teacher is None or not others:
        return ""
    final = rows.get(compared_variant(metrics)) or min(others, key=lambda row: row["total_uj"])
    factor = final["vs_teacher"]
    ratio = "" if factor is None else f", {_times(factor, 'less', 'more')}"
    return (f"Estimated energy per inference: teacher {format_sig(teacher['total_uj'])} µJ vs "
            f"{variant_noun(metrics, final['variant'])} {format_sig(final['total_uj'])} µJ{ratio} "
            "(a per-operation estimate, not a measurement).")


def parity_sentence(metrics: dict) -> str:
    """A warning naming the converted artifacts that disagree with the fp32 student."""
    flagged = parity_warnings(metrics)
    if not flagged:
        return ""
    if len(flagged) == 1:
        row = flagged[0]
        if row["agreement"] is None:
            return (f"Parity warning: {row['label']} agrees with the fp32 student on fewer than "
                    f"{100 * PARITY_THRESHOLD:.0f} % of test inputs.")
        return (f"Parity warning: {row['label']} agrees with the fp32 student on only {_pct(row['agreement'])} "
                f"of test inputs (threshold {100 * PARITY_THRESHOLD:.0f} %).")
    parts = [f"{row['label']} ({_pct(row['agreement'])})" if row["agreement"] is not None else row["label"]
             for row in flagged]
    return (f"Parity warning: {_join(parts)} agree with the fp32 student on fewer than "
            f"{100 * PARITY_THRESHOLD:.0f} % of test inputs.")


def speedup_sentence(metrics: dict) -> str:
    """The batch-1 speed-ups, each with what it compares: same runtime, int8 vs fp32, deployed."""
    s = metrics.get("speedups") or {}
    parts = []
    if (s.get("same_runtime") or {}).get("b1"):
        parts.append(f"on the same runtime (both fp32 in ONNX Runtime) the distilled student is "
                     f"{_times(s['same_runtime']['b1'], 'faster', 'slower')} than the teacher")
    if (s.get("int8_vs_fp32") or {}).get("b1"):
        parts.append(f"int8 makes it {_times(s['int8_vs_fp32']['b1'], 'faster', 'slower')} than its fp32 ONNX model")
    d = metrics.get("deploy") or {}
    teacher_rt = variant_metric(metrics, "teacher", "best_runtime")
    if (s.get("deployed") or {}).get("b1") and d.get("artifact"):
        parts.append(f"deployed, each in its fastest runtime (the teacher in {teacher_rt}, the student as "
                     f"{d['artifact']} in {d['runtime']}), the speed-up is {format_factor(s['deployed']['b1'])}")
    return ("Batch-1 latency: " + _join(parts) + ".") if parts else ""


def deploy_sentence(metrics: dict) -> str:
    """Which artifact to deploy and why."""
    d = metrics.get("deploy") or {}
    if not d.get("artifact"):
        return ""
    return (f"Deploy {d['artifact']} ({d['runtime']}, {format_ms(d['latency_ms_b1'])} ms at batch 1, "
            f"{_pct(d['agreement'])} agreement with the fp32 student): the {d['rule']}.")


def noise_sentence(metrics: dict) -> str:
    """A warning when the latency measurements were disturbed by other work on the machine."""
    q = metrics.get("latency_quality") or {}
    noisy = q.get("noisy") or []
    if not noisy:
        return ""
    return (f"Latency warning: {len(noisy)} timing(s) were noisy (worst p90 / median "
            f"{format_sig(q.get('max_p90_over_median'))}, worst spread across {q.get('rounds')} interleaved rounds "
            f"{format_sig(q.get('max_round_spread'))}×): another process competed for the cores, so the latencies and "
            f"speed-ups above are uncertain; rerun on an idle machine ({_join(noisy[:3])}"
            + (", …" if len(noisy) > 3 else "") + ").")


def health_sentence(metrics: dict) -> str:
    """Dead-ReLU findings of the training runs."""
    dead = ((metrics.get("health") or {}).get("dead_units")) or {}
    return " ".join(f"Training health: {model}: {row['warning']}." for model, row in dead.items())


def findings(metrics: dict) -> list[str]:
    """The sentences of the 'what this run shows' paragraph, empty ones left out."""
    sentences = [headline(metrics), speedup_sentence(metrics), deploy_sentence(metrics), noise_sentence(metrics),
                 claims_sentence(metrics), distillation_sentence(metrics),
                 quantization_sentence(metrics), mcu_sentence(metrics), energy_sentence(metrics),
                 parity_sentence(metrics), health_sentence(metrics)]
    return [s for s in sentences if s]
