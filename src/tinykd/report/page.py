"""report.html: one self-contained page (inline CSS, figures as base64 PNG data URIs, no JS, no links)."""
from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from .figures import make_figures
from ..io import atomic_write
from .deploy import deployment_section
from .examples import examples_section
from .markup import esc
from .narrative import findings
from .scheme import scheme_section
from .style import variant_colors
from .summary import (MISSING, format_bytes, format_count, format_ms, format_percent, ordered_variants,
                      summary_rows, variant_label, variant_metric)


@dataclass(frozen=True)
class Column:
    """One numeric column of the summary table: row key, header, formatter and which end is best."""

    key: str
    header: str
    fmt: Callable[[float | None], str]
    best: str  # "max" | "min"


COLUMNS = (
    Column("accuracy", "Accuracy %", format_percent, "max"),
    Column("macro_f1", "Macro-F1", lambda v: MISSING if v is None else f"{v:.3f}", "max"),
    Column("agreement", "Agrees with teacher %", format_percent, "max"),
    Column("params", "Params", format_count, "min"),
    Column("file_bytes", "File size", format_bytes, "min"),
    Column("macs", "MACs", format_count, "min"),
    Column("latency_ms_b1", "b1 median", format_ms, "min"),
    Column("latency_ms_b1_p90", "b1 p90", format_ms, "min"),
    Column("latency_ms_b32", "b32 median", format_ms, "min"),
)
LATENCY_COLUMNS = 3  # the last three columns sit under a "Latency (ms)" group header

CAPTIONS = {
    "improvement": "Each solid bar is how many times smaller, cheaper or faster the deployed student (the artifact "
                   "the run picked: see Deployment) is than "
                   "the teacher (log scale, 1× = no change) and the hatched bar beside it is the range the seed "
                   "paper claims; "
                   "the right panel does the same for the share of the teacher's accuracy that is kept.",
    "latency_accuracy": "Each point is one variant on one runtime: further left is faster and higher is more accurate; "
                        "colour identifies the variant, the marker the runtime, and the faint bar reaches the "
                        "90th-percentile latency.",
    "size_accuracy": "Each point is one variant's artifact as deployed: further left is a smaller file and higher is "
                     "more accurate; colour identifies the variant and the marker its runtime, as in the latency "
                     "figure. The dashed staircase is the Pareto front — the best accuracy to be had within a given "
                     "size — and the outlined, labelled points are on it; any point below the staircase is beaten "
                     "by a smaller or equally small, more accurate variant.",
    "training": "The falling lines (left axis, log scale) are the training-loss terms per epoch and the marked "
                "rising lines (right axis) are validation accuracy, so the gap between the distilled and the "
                "scratch student's accuracy lines is what distillation added.",
    "transfer": "For every class, the bars show how often the teacher, the student trained from scratch and the "
                "distilled student as deployed (the variant the run picked to deploy, named in the legend) are right; "
                "a distilled bar closer to the teacher's than the scratch bar means the teacher's knowledge "
                "transferred for that class.",
    "confusion": "The test predictions of the variant the run picked to deploy (named in the title): rows are "
                 "true classes and columns predicted classes; each cell holds a count and is shaded by its "
                 "share of the row, so every shaded cell off the diagonal is a kind of mistake.",
}
FIGURE_TITLES = {
    "improvement": "Improvement over the teacher vs the claims",
    "latency_accuracy": "Latency vs accuracy",
    "size_accuracy": "File size vs accuracy",
    "training": "Training",
    "transfer": "Knowledge transfer per class",
    "confusion": "Where the deployed student errs",
}

CSS = """
:root { --ink: #1d2430; --muted: #5d6675; --line: #e2e6ec; --best: #e6f4ea; --accent: #1f4e79; }
* { box-sizing: border-box; }
body { margin: 0; background: #f7f8fa; color: var(--ink);
  font: 16px/1.6 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1100px; margin: 0 auto; padding: 40px 32px 64px; background: #fff; min-height: 100vh; }
header { border-bottom: 1px solid var(--line); padding-bottom: 18px; margin-bottom: 24px; }
.eyebrow { margin: 0; color: var(--muted); font-size: 13px; letter-spacing: .08em; text-transform: uppercase; }
h1 { margin: 4px 0 6px; font-size: 30px; line-height: 1.25; }
h1 .dataset { color: var(--muted); font-weight: 400; }
.meta { margin: 0; color: var(--muted); font-size: 14px; }
h2 { margin: 40px 0 12px; font-size: 21px; padding-bottom: 6px; border-bottom: 1px solid var(--line); }
h3 { margin: 0 0 8px; font-size: 16px; }
.findings { font-size: 17px; background: #f3f7fb; border-left: 4px solid var(--accent);
  padding: 14px 20px; border-radius: 0 6px 6px 0; margin: 0; }
.findings p { margin: 0 0 8px; } .findings p:last-child { margin: 0; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; width: 100%; font-size: 14px; font-variant-numeric: tabular-nums; }
th, td { padding: 7px 10px; border-bottom: 1px solid var(--line); vertical-align: middle; }
thead th { font-size: 12.5px; color: var(--muted); font-weight: 600; text-align: right; line-height: 1.3;
  border-bottom: 2px solid #c9ced6; }
thead th.group { text-align: center; border-bottom: 1px solid var(--line); }
thead th:first-child, td.variant { text-align: left; }
td.num { text-align: right; white-space: nowrap; }
td.variant { white-space: nowrap; }
td.best { background: var(--best); font-weight: 700; }
td.missing { color: #a0a7b2; }
tbody tr:hover td { background: #fafbfc; } tbody tr:hover td.best { background: var(--best); }
.swatch { display: inline-block; width: 11px; height: 11px; border-radius: 3px; margin-right: 8px;
  vertical-align: -1px; }
.variant small { display: block; color: var(--muted); font-size: 12px; margin-left: 19px; }
.note { color: var(--muted); font-size: 13px; margin: 8px 0 0; }
figure { margin: 28px 0 0; }
figure img { display: block; max-width: 100%; height: auto; margin: 0 auto; }
figcaption { color: var(--muted); font-size: 14.5px; margin-top: 10px; }
figcaption strong { color: var(--ink); }
dl.facts { display: grid; grid-template-columns: 170px 1fr; gap: 6px 18px; margin: 0; font-size: 15px; }
dl.facts dt { color: var(--muted); } dl.facts dd { margin: 0; }
pre { background: #f5f7f9; border: 1px solid var(--line); border-radius: 6px; padding: 14px 16px; overflow-x: auto;
  font: 13px/1.5 ui-monospace, SFMono-Regular, Menlo, Consolas, "Liberation Mono", monospace; }
footer { margin-top: 40px; color: var(--muted); font-size: 13px; }
@media (max-width: 960px) {  /* reflow so a narrow window shows every column; wider tables still scroll */
  main { padding: 28px 16px 48px; }
  table { font-size: 13px; }
  th, td { padding: 6px 5px; }
  thead th { font-size: 12px; }
  td.variant { white-space: normal; min-width: 9.5em; }
  .variant small { margin-left: 0; }
}
"""
DEPLOY_CSS = """
h3 + .scroll, h4 + .scroll { margin-top: 4px; }
#deployment h3 { margin: 28px 0 8px; } #deployment h2 + h3 { margin-top: 12px; }
h4 { margin: 18px 0 6px; font-size: 14.5px; }
td.text, thead th.text { text-align: left; }
#deployment thead tr + tr th:first-child { text-align: right; }
td.plain small { margin-left: 0; }
td.num .mark { margin-left: 6px; }
.mark { display: inline-block; font-size: 11.5px; font-weight: 600; padding: 0 6px; border-radius: 9px;
  line-height: 1.6; white-space: nowrap; }
.mark.met { background: #e3f3e8; color: #1e6b3a; } .mark.miss { background: #fbe7e4; color: #a12f1f; }
.tag { display: inline-block; font-size: 11px; font-weight: 600; letter-spacing: .04em; text-transform: uppercase;
  padding: 0 6px; border-radius: 4px; background: #e8edf3; color: var(--accent); vertical-align: 1px;
  line-height: 1.7; margin-left: 6px; }
.tag.estimate { background: #fff4dc; color: #8a5a00; }
td.over { color: #a12f1f; font-weight: 600; }
td.warn { color: #a12f1f; font-weight: 700; }
td.fit { white-space: nowrap; font-weight: 600; } td.fit.yes { color: #1e6b3a; } td.fit.no { color: #a12f1f; }
tr.target td { background: #eef5fc; } tbody tr.target:hover td { background: #e6f0fa; }
td.strong { font-weight: 700; }
table.compact { width: auto; min-width: 55%; }
.warnbox { margin: 22px 0 0; background: #fdf3f1; border-left: 4px solid #c0392b; border-radius: 0 6px 6px 0;
  padding: 10px 18px 12px; }
#deployment .warnbox h3 { margin: 0 0 4px; color: #a12f1f; } .warnbox ul { margin: 0; padding-left: 20px; }
.detail { margin-top: 6px; }
"""  # only on pages with a Deployment section, so a plain run's page is unchanged


def write_report(run_dir: Path, metrics: dict, history: list[dict], recipe_yaml: str) -> Path:
    """Draw the figures into ``run_dir/figures`` and write the self-contained ``run_dir/report.html``."""
    run_dir = Path(run_dir)
    figures = make_figures(metrics, history, run_dir / "figures")
    page = render_page(metrics, figures, recipe_yaml, run_dir=run_dir)
    return atomic_write(run_dir / "report.html", page.encode("utf-8"))


def render_page(metrics: dict, figures: dict[str, Path], recipe_yaml: str, run_dir: Path | None = None) -> str:
    """The whole report page as an HTML string (``run_dir``: where the scheme's extra figures are)."""
    run = metrics.get("run") or {}
    name, dataset = run.get("name") or "unnamed run", run.get("dataset") or "unknown dataset"
    deployment = deployment_section(metrics)
    sections = [
        _header(run),
        '<section><h2>What this run shows</h2><div class="findings">'
        + "".join(f"<p>{esc(s)}</p>" for s in findings(metrics)) + "</div></section>",
        f"<section><h2>Summary</h2>{summary_table(metrics)}</section>",
        "<section><h2>Figures</h2>"
        + "".join(_figure(i, key, path) for i, (key, path) in enumerate(figures.items(), 1)) + "</section>",
        examples_section(metrics),
        scheme_section(metrics, run_dir),
        deployment,
        f"<section><h2>Run facts</h2>{run_facts(metrics)}</section>",
        f"<section><h2>Recipe</h2>{_not_applied_note(run)}"
        f"<pre>{esc(recipe_yaml.rstrip() or '(no recipe recorded)')}</pre></section>",
    ]
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>tinykd report — {esc(name)} ({esc(dataset)})</title>\n"
            f"<style>{CSS}{DEPLOY_CSS if deployment else ''}</style>\n</head>\n"
            f"<body>\n<main>\n" + "\n".join(s for s in sections if s)
            + '\n<footer>Generated by tinykd. Numbers are on the test split unless stated.</footer>\n'
            "</main>\n</body>\n</html>\n")


def _header(run: dict) -> str:
    """Eyebrow, title (run name and dataset) and creation date."""
    meta = []
    if run.get("created"):
        meta.append(f"created {_when(run['created'])}")
    if run.get("seed") is not None:
        meta.append(f"seed {run['seed']}")
    return (f'<header><p class="eyebrow">tinykd distillation report</p>'
            f'<h1>{esc(run.get("name") or "unnamed run")} '
            f'<span class="dataset">on {esc(run.get("dataset") or "unknown dataset")}</span></h1>'
            + (f'<p class="meta">{esc(" · ".join(meta))}</p>' if meta else "") + "</header>")


def _not_applied_note(run: dict) -> str:
    """A note above the recipe naming the data settings it shows that had no effect (e.g. a test_fraction where the
    data brings its own test split)."""
    notes = (run.get("data_info") or {}).get("not_applied") or []
    if not notes:
        return ""
    return ('<p class="note">Data settings below that did not apply: '
            + "; ".join(esc(f"data.{n}") for n in notes) + ".</p>")


def _competes(row: dict, key: str) -> bool:
    """Whether a cell can be the best of its column: measured, and not the teacher's agreement with itself."""
    return row[key] is not None and not (key == "agreement" and row["variant"] == "teacher")


def _best_values(rows: list[dict]) -> dict[str, float]:
    """The best value of each column among the cells that compete for it."""
    best = {}
    for column in COLUMNS:
        values = [row[column.key] for row in rows if _competes(row, column.key)]
        if values:
            best[column.key] = max(values) if column.best == "max" else min(values)
    return best


def summary_table(metrics: dict) -> str:
    """The summary table: a row per variant, numbers right-aligned, the best value of each column highlighted."""
    rows = summary_rows(metrics)
    if not rows:
        return '<p class="note">No variant was measured.</p>'
    best = _best_values(rows)
    colors = variant_colors(metrics)
    variants = metrics.get("variants") or {}
    head_top = ('<tr><th rowspan="2">Variant</th>'
                + "".join(f'<th rowspan="2">{esc(c.header)}</th>' for c in COLUMNS[:-LATENCY_COLUMNS])
                + f'<th class="group" colspan="{LATENCY_COLUMNS}">Latency (ms)</th></tr>')
    head_sub = "<tr>" + "".join(f"<th>{esc(c.header)}</th>" for c in COLUMNS[-LATENCY_COLUMNS:]) + "</tr>"
    body = "".join(_table_row(row, variants.get(row["variant"]) or {}, colors[row["variant"]], best) for row in rows)
    return (f'<div class="scroll"><table><thead>{head_top}{head_sub}</thead><tbody>{body}</tbody></table></div>'
            '<p class="note">Highlighted: best value of each column (agreement excludes the teacher). '
            "Sizes in decimal units (1 KB = 1000 bytes); MACs = multiply-accumulates per input; "
            "latency is the median (and 90th percentile) over repeated runs at batch 1 and 32; "
            f"a dash ({esc(MISSING)}) means not measured.</p>")


def _table_row(row: dict, variant: dict, color: str, best: dict[str, float]) -> str:
    """One summary-table row: colour swatch, label, model/runtime, then the formatted numbers."""
    detail = " · ".join(esc(x) for x in (variant.get("model"), variant.get("runtime")) if x)
    cells = [f'<td class="variant"><span class="swatch" style="background:{esc(color)}"></span>'
             f"{esc(row['label'])}" + (f"<small>{detail}</small>" if detail else "") + "</td>"]
    for column in COLUMNS:
        value = row[column.key]
        classes = ["num"]
        if value is None:
            classes.append("missing")
        elif _competes(row, column.key) and value == best.get(column.key):
            classes.append("best")
        cells.append(f'<td class="{" ".join(classes)}">{esc(column.fmt(value))}</td>')
    return "<tr>" + "".join(cells) + "</tr>"


def _figure(number: int, key: str, path: Path) -> str:
    """One figure: the PNG inlined as a base64 data URI, then 'Figure N. Title.' and how to read it."""
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    title, caption = FIGURE_TITLES.get(key, key), CAPTIONS.get(key, "")
    return (f'<figure id="fig-{esc(key)}"><img src="data:image/png;base64,{data}" alt="{esc(title)}">'
            f"<figcaption><strong>Figure {number}. {esc(title)}.</strong> {esc(caption)}</figcaption></figure>")


def run_facts(metrics: dict) -> str:
    """Dataset, split sizes, input spec, machine, seed and artifacts as a definition list."""
    run = metrics.get("run") or {}
    created = run.get("created")
    artifacts = [f"{variant_label(metrics, name)}: {variant_metric(metrics, name, 'artifact')}"
                 for name in ordered_variants(metrics) if variant_metric(metrics, name, "artifact")]
    data = run.get("data_info") or {}
    facts = [("Run", run.get("name")), ("Dataset", run.get("dataset")), ("Created", created and _when(created)),
             ("Seed", run.get("seed")), ("Splits", _split_lines(run.get("split_sizes") or {}, data.get("splits") or {})),
             *([("Not applied", list(data["not_applied"]))] if data.get("not_applied") else []),
             ("Input", _input_spec(run.get("spec") or {})),
             *([("Timed inputs", metrics["inputs"]["what"])] if (metrics.get("inputs") or {}).get("what") else []),
             ("Machine", _machine_lines(run.get("machine") or {})),
             ("Artifacts", artifacts)]
    items = "".join(f"<dt>{esc(label)}</dt><dd>{_fact_value(value)}</dd>" for label, value in facts)
    return f'<dl class="facts">{items}</dl>'


def _fact_value(value: object) -> str:
    """A fact as escaped HTML: lists one item a line, a dash when missing or empty."""
    if isinstance(value, list):
        return "<br>".join(esc(item) for item in value) or MISSING
    return MISSING if value in (None, "") else esc(value)


def _when(created: object) -> str:
    """An ISO timestamp as ``2026-11-22 10:00``; anything else unchanged."""
    try:
        return datetime.fromisoformat(str(created)).strftime("%Y-%m-%d %H:%M")
    except ValueError:
        return str(created)


def _splits(sizes: dict) -> str | None:
    """``train 3,600 · val 400 · test 1,000``."""
    return " · ".join(f"{split} {n:,}" if isinstance(n, int) else f"{split} {n}" for split, n in sizes.items()) or None


def _split_lines(sizes: dict, made: dict) -> list[str] | str | None:
    """One line per split with where it came from (``test 10,000: predefined: t10k-images…``), when recorded."""
    if not made:
        return _splits(sizes)
    return [f"{split} {n:,}: {made[split]}" if isinstance(n, int) and split in made else
            (f"{split} {n:,}" if isinstance(n, int) else f"{split} {n}") for split, n in sizes.items()]


MACHINE_LABELS = {"train_threads": "training threads", "teacher_train_threads": "teacher training threads",
                  "measure_threads": "measurement threads",
                  "threads": "measurement threads",  # the name runs before training threads were recorded used
                  "available_cores": "available cores", "omp_num_threads": "OMP_NUM_THREADS",
                  "train_device": "training device"}


def _machine_lines(machine: dict) -> list[str]:
    """``key: value`` per machine fact, the thread counts spelt out (training and measurement threads differ)."""
    shown = {k: v for k, v in machine.items() if not (k == "threads" and "measure_threads" in machine)}
    return [f"{MACHINE_LABELS.get(key, key)}: {value}" for key, value in shown.items()]


def _input_spec(spec: dict) -> str | None:
    """``1×28×28 image, 10 classes (0, 1, 2, …)``."""
    if not spec:
        return None
    parts = []
    if spec.get("modality") == "text" and spec.get("shape"):
        parts.append(f"text as token ids, up to {spec['shape'][0]} tokens"
                     + (f" from a vocabulary of {spec['vocab_size']:,}" if spec.get("vocab_size") else ""))
    elif spec.get("shape"):
        modality = f" {spec['modality']}" if spec.get("modality") else ""
        parts.append("×".join(str(d) for d in spec["shape"]) + modality)
    names = [str(c) for c in spec.get("class_names") or []]
    count = spec.get("num_classes") or len(names)
    if count:
        shown = ", ".join(names[:12]) + (", …" if len(names) > 12 else "")
        parts.append(f"{count} classes" + (f" ({shown})" if names else ""))
    return ", ".join(parts) or None
