"""``tinykd compare RUNS...``: finished runs side by side, read from each run's metrics.json — a table in the terminal
and an HTML page with accuracy against int8 size and against latency across the runs. Folders that are not runs
are skipped with a note; none at all is an error."""
from __future__ import annotations

import base64
import datetime as dt
import html
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from .errors import TinyKDError
from .io import atomic_write
from .report.summary import format_bytes, format_count


@dataclass
class RunRow:
    """What the comparison shows of one run: the int8 student (else the distilled fp32 one) and its teacher."""

    name: str
    folder: Path
    dataset: str
    variant: str  # the student variant plotted: student_int8, else student
    accuracy: float | None  # test accuracy of that variant
    file_bytes: int | None
    latency_ms: float | None  # its batch-1 median latency in its own runtime
    teacher_accuracy: float | None
    student_accuracy: float | None  # the distilled fp32 student
    scratch_accuracy: float | None
    params: int | None
    macs: int | None
    deploy: str | None  # the artifact the run deploys, and its runtime
    board: str | None  # the microcontroller fit of the target board (or the first board)


def read_run(folder: Path) -> RunRow | str:
    """The row of a run folder, or why it is not one."""
    if not folder.is_dir():
        return "not a folder"
    path = folder / "metrics.json"
    if not path.is_file():
        status = folder / "status.json"
        if status.is_file():
            try:
                state = json.loads(status.read_text()).get("status", "unknown")
            except (OSError, ValueError):
                state = "unreadable status.json"
            return f"a run that did not finish ({state}: no metrics.json)"
        return "not a tinykd run (no metrics.json)"
    try:
        m = json.loads(path.read_text())
        variants = m["variants"]
        s = variants["student"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"metrics.json is not a run's ({type(err).__name__}: {err})"
    pick = "student_int8" if "student_int8" in variants else "student"
    v = variants[pick]
    deploy = m.get("deploy") or {}
    mcu = m.get("mcu") or {}
    board = None
    if mcu.get("boards"):
        name = mcu.get("target_board") or next(iter(mcu["boards"]))
        fit = mcu["boards"].get(name) or {}
        board = f"{name} {'fits' if fit.get('fits') else 'does NOT fit'}"
    run = m.get("run") or {}
    return RunRow(name=run.get("name") or folder.name, folder=folder, dataset=run.get("dataset") or "—",
                  variant=pick, accuracy=v.get("accuracy"), file_bytes=v.get("file_bytes"),
                  latency_ms=v.get("latency_ms_b1"), teacher_accuracy=(variants.get("teacher") or {}).get("accuracy"),
                  student_accuracy=s.get("accuracy"),
                  scratch_accuracy=(variants.get("student_scratch") or {}).get("accuracy"),
                  params=s.get("params"), macs=s.get("macs"),
                  deploy=f"{Path(deploy['artifact']).name} ({deploy.get('runtime')})" if deploy.get("artifact") else None,
                  board=board)


def read_runs(paths: list[str | Path], console: Console) -> list[RunRow]:
    """The runs among ``paths``; a note for each path skipped; a TinyKDError when none is a run."""
    rows, skipped = [], []
    for p in paths:
        got = read_run(Path(p))
        if isinstance(got, str):
            skipped.append((p, got))
        else:
            rows.append(got)
    for p, why in skipped:
        console.print(f"[dim]skipped {p}: {why}[/]")
    if not rows:
        raise TinyKDError(f"none of the {len(paths)} path(s) given is a finished tinykd run "
                          f"({'; '.join(f'{p}: {why}' for p, why in skipped[:5])})",
                          "pass run folders that hold a metrics.json, e.g. tinykd compare runs/*")
    return rows


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.2f}"


def _ms(v: float | None) -> str:
    return "—" if v is None else f"{v:.3g}"


def pareto(rows: list[RunRow], cost: str) -> set[int]:
    """Indices of the runs no other run beats on ``cost`` (lower) and accuracy (higher)."""
    pts = [(getattr(r, cost), r.accuracy, i) for i, r in enumerate(rows)]
    pts = [p for p in pts if p[0] is not None and p[1] is not None]
    front, best = set(), float("-inf")
    for c, a, i in sorted(pts, key=lambda p: (p[0], -p[1])):
        if a > best:
            front.add(i)
            best = a
    return front


def terminal_table(rows: list[RunRow]) -> Table:
    table = Table(title="tinykd compare (test split; int8 = the int8 student, else the distilled fp32 one)",
                  title_justify="left")
    for col in ("run", "dataset", "teacher %", "scratch %", "distilled %", "int8 %", "int8 file", "b1 ms",
                "params", "MACs", "deploys", "board"):
        table.add_column(col, justify="left" if col in ("run", "dataset", "deploys", "board") else "right",
                         overflow="fold")
    for r in rows:
        table.add_row(r.name, r.dataset, _pct(r.teacher_accuracy), _pct(r.scratch_accuracy), _pct(r.student_accuracy),
                      _pct(r.accuracy) if r.variant == "student_int8" else "—",
                      format_bytes(r.file_bytes), _ms(r.latency_ms), format_count(r.params), format_count(r.macs),
                      r.deploy or "—", r.board or "—")
    return table


def figure_png(rows: list[RunRow]) -> bytes:
    """Accuracy against file size and against batch-1 latency, one point per run, Pareto fronts dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .report.style import MPL_STYLE

    with plt.rc_context(MPL_STYLE):
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
        for ax, cost, label in ((axes[0], "file_bytes", "student file (KB)"),
                                (axes[1], "latency_ms", "batch-1 latency (ms, its runtime)")):
            scale = 1000 if cost == "file_bytes" else 1
            pts = [(getattr(r, cost) / scale, 100 * r.accuracy, r.name, i) for i, r in enumerate(rows)
                   if getattr(r, cost) is not None and r.accuracy is not None]
            front = pareto(rows, cost)
            names: dict[tuple, list[str]] = {}
            for x, y, name, i in pts:
                on = i in front
                ax.scatter(x, y, s=80 if on else 55, color="#1f4e79" if on else "#9fb8d6",
                           edgecolor="#111111" if on else "white", zorder=3)
                names.setdefault((x, y, on), []).append(name)
            for (x, y, on), group in names.items():  # runs at the same point share one label
                ax.annotate(", ".join(group), (x, y), textcoords="offset points", xytext=(6, 5), fontsize=8,
                            color="#1f4e79" if on else "#5d6675")
            line = sorted((x, y) for x, y, _, i in pts if i in front)
            if line:
                ax.plot(*zip(*line), color="#1f4e79", linestyle="--", linewidth=1.2, zorder=1)
            ax.set_xlabel(label)
            ax.set_ylabel("test accuracy (%)")
            ax.set_title(f"accuracy vs {'size' if cost == 'file_bytes' else 'latency'} (up and left is better)",
                         loc="left")
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", bbox_inches="tight", pad_inches=0.15, facecolor="white")
        plt.close(fig)
    return buffer.getvalue()


def render_page(rows: list[RunRow], png: bytes) -> str:
    from .report.page import CSS

    def esc(v) -> str:
        return html.escape(str(v), quote=True)
    head = ("<tr><th>run</th><th>dataset</th><th>teacher %</th><th>scratch %</th><th>distilled %</th><th>int8 %</th>"
            "<th>int8 file</th><th>b1 ms</th><th>params</th><th>MACs</th><th>deploys</th><th>board</th></tr>")
    body = "".join(
        f'<tr><td class="variant">{esc(r.name)}<small>{esc(r.folder)}</small></td><td>{esc(r.dataset)}</td>'
        + "".join(f'<td class="num">{esc(c)}</td>' for c in (
            _pct(r.teacher_accuracy), _pct(r.scratch_accuracy), _pct(r.student_accuracy),
            _pct(r.accuracy) if r.variant == "student_int8" else "—", format_bytes(r.file_bytes), _ms(r.latency_ms),
            format_count(r.params), format_count(r.macs)))
        + f"<td>{esc(r.deploy or '—')}</td><td>{esc(r.board or '—')}</td></tr>" for r in rows)
    img = base64.b64encode(png).decode()
    return ('<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>tinykd compare — {len(rows)} runs</title>\n<style>{CSS}</style>\n</head>\n<body>\n<main>\n"
            f'<header><p class="eyebrow">tinykd comparison</p><h1>{len(rows)} runs</h1>'
            f'<p class="meta">written {esc(dt.datetime.now().isoformat(timespec="seconds"))}</p></header>\n'
            f'<section><h2>Runs</h2><div class="scroll"><table><thead>{head}</thead><tbody>{body}</tbody></table>'
            "</div><p class=note>Test split of each run. The int8 columns and the plots show the int8 student (ONNX "
            "Runtime) where the run has one, else the distilled fp32 student; latency is batch 1 in that "
            "variant's runtime, as each run measured it (runs timed on different machines or loads are not "
            "comparable).</p></section>\n"
            f'<section><h2>Accuracy, size and latency</h2><figure><img alt="accuracy vs size and latency" '
            f'src="data:image/png;base64,{img}"><figcaption>Each point is one run; the outlined points joined by '
            "the dashed line are the Pareto front: no other run is both smaller (or faster) and more "
            "accurate.</figcaption></figure></section>\n"
            "<footer>Generated by tinykd compare.</footer>\n</main>\n</body>\n</html>\n")


def compare(paths: list[str | Path], *, out: str | Path | None = None, console: Console | None = None) -> Path:
    """Compare the runs among ``paths``: print the table and write the HTML page (default: ``compare.html`` in the
    runs' common folder). Returns the page's path."""
    console = console or Console()
    rows = read_runs(list(paths), console)
    console.print(terminal_table(rows))
    if out is None:
        common = Path(os.path.commonpath([str(r.folder.resolve()) for r in rows]))
        out = (common.parent if len(rows) == 1 else common) / "compare.html"
    page = atomic_write(Path(out), render_page(rows, figure_png(rows)).encode())
    console.print(f"comparison: [bold green]{page}[/]")
    return page
