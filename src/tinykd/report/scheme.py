"""The report's Scheme section: who taught the distilled student, when the recipe chose more than one teacher
teaching one student offline — the stages of a teacher-assistant chain (one row per stage), the members of a
teacher ensemble, the teacher-output cache's counts, the synthetic inputs of a data-free run."""
from __future__ import annotations

import base64
from pathlib import Path

from .markup import esc, num_cell, table, variant_cell
from .style import variant_colors
from .summary import format_count, format_percent, variant_label, variant_metric

INTRO = {
    "multi_teacher": "The distilled student learned from an ensemble of teachers, combined per sample ({weights} "
                     "weights) into one soft target at T = {temperature:g}.",
    "assistant": "Teacher-assistant chain (Mirzadeh et al. 2020): each stage was distilled from the one before it, "
                 "so the student learned from the last assistant, not from the teacher.",
    "data_free": "Data-free distillation ({method}): the distilled student saw no training input, only inputs "
                 "synthesised from the frozen teacher; the student from scratch, the reference, trained on the real "
                 "data.",
}
DATA_FREE_NAMES = {"dafl": "DAFL", "deepinversion": "DeepInversion"}  # also the titles of the samples figure
METHODS = {**DATA_FREE_NAMES, "dafl": "DAFL, a generator trained against the teacher"}


def scheme_section(metrics: dict, run_dir: Path | None = None) -> str:
    """The whole ``<section>``, or an empty string for a plain offline run without a cache."""
    facts = metrics.get("scheme") or {}
    name = facts.get("name", "offline")
    if name == "offline" and "cache_stats" not in facts:
        return ""
    parts = []
    if name in INTRO:
        parts.append("<p>" + esc(INTRO[name].format(
            weights=_weights(facts.get("teacher_weights")), temperature=float(facts.get("temperature") or 0),
            method=METHODS.get(facts.get("method"), facts.get("method")))) + "</p>")
    if name == "assistant":
        parts.append(stage_table(metrics, facts.get("stages") or []))
    if name == "multi_teacher":
        parts.append(teacher_table(metrics, facts.get("teachers") or []))
    gen = facts.get("generator") if name == "data_free" else None
    if gen:
        shift = f"each sample shifted by up to {gen['jitter']} positions" if gen.get("jitter") else "no shifts"
        parts.append("<p>" + esc(
            f"Generator: {gen['steps_per_epoch']} batches of {gen['batch_size']} per epoch, base width {gen['base']}, "
            f"Adam learning rate {gen['lr']:g} ({gen['schedule']}); {shift} before the student saw it"
            + (f"; adversarial term weight {gen['adversarial']:g} (G also sought inputs where student and teacher "
               "disagreed)." if gen.get("adversarial") else ".")) + "</p>")
    if name == "data_free" and facts.get("samples_figure") and run_dir is not None:
        path = Path(run_dir) / facts["samples_figure"]
        if path.is_file():
            data = base64.b64encode(path.read_bytes()).decode("ascii")
            parts.append(f'<figure id="fig-synthetic"><img src="data:image/png;base64,{data}" '
                         f'alt="synthetic inputs"><figcaption><strong>Synthetic inputs.</strong> Samples of what the '
                         f"student learned from, each titled with the class the teacher gives it.</figcaption></figure>")
    stats = facts.get("cache_stats")
    if stats:
        parts.append("<p>" + esc(
            f"Teacher-output cache ({facts.get('cache_dir', '')}): {stats.get('hits', 0):,} samples served from the "
            f"store, {stats.get('computed', 0):,} computed and stored, {stats.get('live', 0):,} run live (no "
            "cacheable index, e.g. mixed or transfer inputs).") + "</p>")
    return '<section id="scheme"><h2>Distillation scheme</h2>' + "".join(p for p in parts if p) + "</section>"


def _weights(weights: object) -> str:
    if isinstance(weights, list):
        return "fixed " + ", ".join(f"{w:g}" for w in weights)
    return str(weights or "mean")


def stage_table(metrics: dict, stages: list[dict]) -> str:
    """One row per stage of the chain: who taught it, its size, best validation and test accuracy."""
    colors = variant_colors(metrics)
    head = ('<tr><th>Stage</th><th class="text" style="text-align:left">Taught by</th><th>Params</th><th>Best val accuracy %</th>'
            "<th>Test accuracy %</th></tr>")
    rows = []
    for st in stages:
        label = st.get("label", "")
        params = st.get("params") or variant_metric(metrics, label, "params")
        taught = variant_label(metrics, st["teacher"]) if st.get("teacher") else "the labels"
        details = [f"stage {st.get('stage', '')}", variant_metric(metrics, label, "model") or ""]
        rows.append("<tr>" + variant_cell(variant_label(metrics, label), colors.get(label, "#888888"), details)
                    + f'<td class="text" style="text-align:left">{esc(taught)}</td>'
                    + num_cell(esc(format_count(params)))
                    + num_cell(esc(format_percent(st.get("best_val_accuracy"))))
                    + num_cell(esc(format_percent(variant_metric(metrics, label, "accuracy")))) + "</tr>")
    return table(head, rows)


def teacher_table(metrics: dict, teachers: list[str]) -> str:
    """The ensemble's members with their size and test accuracy, then the distilled student."""
    colors = variant_colors(metrics)
    head = "<tr><th>Model</th><th>Params</th><th>Test accuracy %</th></tr>"
    rows = ["<tr>" + variant_cell(variant_label(metrics, name), colors.get(name, "#888888"),
                                  [variant_metric(metrics, name, "model") or ""])
            + num_cell(esc(format_count(variant_metric(metrics, name, "params"))))
            + num_cell(esc(format_percent(variant_metric(metrics, name, "accuracy")))) + "</tr>"
            for name in [*teachers, "student"]]
    return table(head, rows)
