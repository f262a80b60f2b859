"""The report's Scheme section: who taught the distilled student, as the run's scheme describes itself
(``Scheme.report`` in distill/schemes/): e.g. the stages of a teacher-assistant chain (one row per stage), the
members of a teacher ensemble, the teacher-output cache's counts, the synthetic inputs of a data-free run."""
from __future__ import annotations

import base64
from pathlib import Path

from ..distill.schemes.registry import find_scheme
from .markup import esc, num_cell, table, variant_cell
from .style import variant_colors
from .summary import format_count, format_percent, variant_label, variant_metric


def scheme_report(facts: dict):
    """What the run's scheme says of itself, from its facts in metrics.json (a plain offline run when none)."""
    from ..distill.schemes import Scheme

    facts = facts or {"name": "offline"}
    return (find_scheme(facts.get("name", "offline")) or Scheme).report(facts)


def scheme_section(metrics: dict, run_dir: Path | None = None) -> str:
    """The whole ``<section>``, or an empty string when the scheme has nothing to say (a plain offline run)."""
    rep = scheme_report(metrics.get("scheme") or {})
    if not rep.shown:
        return ""
    parts = []
    if rep.intro:
        parts.append("<p>" + esc(rep.intro) + "</p>")
    if rep.stages is not None:
        parts.append(stage_table(metrics, rep.stages))
    if rep.teachers is not None:
        parts.append(teacher_table(metrics, rep.teachers))
    parts += ["<p>" + esc(note) + "</p>" for note in rep.notes]
    fig = rep.figure
    if fig is not None and run_dir is not None and (Path(run_dir) / fig.path).is_file():
        data = base64.b64encode((Path(run_dir) / fig.path).read_bytes()).decode("ascii")
        parts.append(f'<figure id="{esc(fig.id)}"><img src="data:image/png;base64,{data}" alt="{esc(fig.alt)}">'
                     f"<figcaption><strong>{esc(fig.title)}</strong> {esc(fig.caption)}</figcaption></figure>")
    return '<section id="scheme"><h2>Distillation scheme</h2>' + "".join(p for p in parts if p) + "</section>"


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
