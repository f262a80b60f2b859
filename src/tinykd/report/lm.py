"""report.html of a language-model run: what distillation bought in perplexity, size and time per token, the
validation perplexity per epoch of every model, the int8 parity, and generated samples side by side."""
from __future__ import annotations

import base64
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..io import atomic_write  # noqa: E402
from .markup import esc, num_cell, table, variant_cell  # noqa: E402
from .page import CSS, _header, run_facts  # noqa: E402
from .style import MPL_STYLE, RUNTIME_NAMES, VARIANT_COLORS  # noqa: E402
from .summary import format_bytes  # noqa: E402

LABELS = {"teacher": "Teacher", "student_scratch": "Student from scratch", "student": "Distilled student",
          "student_int8": "Distilled student, int8"}
ORDER = ("teacher", "student_scratch", "student", "student_int8")
LM_CSS = """
.samples td { vertical-align: top; white-space: pre-wrap; font-family: ui-monospace, Menlo, Consolas, monospace;
  font-size: 12.5px; max-width: 26em; }
.prompt { color: #555; background: #f4f4f4; }
"""


def perplexity_figure(history: list[dict]) -> bytes:
    """Validation perplexity per epoch of the teacher, the scratch and the distilled student (log scale)."""
    with plt.rc_context(MPL_STYLE):
        fig, ax = plt.subplots(figsize=(9, 4.6))
        for name in ORDER:
            rows = [r for r in history if r.get("model") == name and r.get("val_perplexity") is not None]
            if rows:
                ax.plot([r["epoch"] for r in rows], [r["val_perplexity"] for r in rows], marker="o",
                        color=VARIANT_COLORS.get(name, "#333333"), label=LABELS.get(name, name), linewidth=1.8)
        ax.set_yscale("log")
        ax.set_xlabel("Epoch")
        ax.set_ylabel("Validation perplexity (per token, log scale)")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_title("Validation perplexity per epoch (lower is better)", loc="left")
        ax.legend()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", bbox_inches="tight", pad_inches=0.15, facecolor="white")
        plt.close(fig)
    return buffer.getvalue()


def findings(metrics: dict) -> list[str]:
    v, r, gap = metrics["variants"], metrics["ratios"], metrics.get("gap")
    t = v["teacher"]
    d = v[metrics["deploy"]["variant"]]
    out = [f"The deployed {LABELS.get(metrics['deploy']['variant'], metrics['deploy']['variant']).lower()} reaches a "
           f"test perplexity of {d['perplexity']:.2f} against the teacher's {t['perplexity']:.2f}, "
           f"{r['size_reduction']:.1f}× smaller ({format_bytes(d['file_bytes'])} vs {format_bytes(t['file_bytes'])}) "
           f"and {r['speedup_per_token']:.1f}× faster per generated token ({d['ms_per_token']:.2f} vs "
           f"{t['ms_per_token']:.2f} ms, {r['speedup_kind']})."]
    if gap:
        out.append(f"Distillation closed {100 * gap['closed']:.0f}% of the loss gap between the student trained from "
                   f"scratch ({gap['scratch_loss']:.4f} nats per token) and the teacher ({gap['teacher_loss']:.4f}): "
                   f"the distilled student reaches {gap['student_loss']:.4f}.")
    q = (v.get("student_int8") or {}).get("quantization")
    if q:
        out.append(f"int8 (dynamic, ONNX Runtime) changes the student's validation loss by {100 * q['loss_change']:+.2f}% "
                   f"({'within' if q['met'] else 'outside'} the 2% target) and keeps "
                   f"{100 * q['agreement']:.1f}% of its next-token predictions.")
    noisy = metrics.get("latency_quality", {}).get("noisy")
    if noisy:
        out.append(f"Some timings were noisy (p90 far above the median or rounds disagreeing): {', '.join(noisy)}; "
                   "rerun on an idle machine before quoting them.")
    return out


def summary_table(metrics: dict) -> str:
    head = ("<tr><th>Variant</th><th>Test loss</th><th>Perplexity</th><th>Next-token acc.</th><th>Params</th>"
            "<th>Size</th><th>ms / token</th><th>tokens / s</th></tr>")
    rows = []
    for name in ORDER:
        v = metrics["variants"].get(name)
        if v is None:
            continue
        details = [v.get("model", ""), RUNTIME_NAMES.get(v.get("runtime"), v.get("runtime", ""))]
        rows.append("<tr>" + variant_cell(LABELS.get(name, name), VARIANT_COLORS.get(name, "#333333"), details)
                    + num_cell(f"{v['loss']:.4f}") + num_cell(f"{v['perplexity']:.2f}")
                    + num_cell(f"{100 * v['next_token_accuracy']:.2f}%") + num_cell(f"{v['params']:,}")
                    + num_cell(esc(format_bytes(v["file_bytes"]))) + num_cell(f"{v['ms_per_token']:.3f}")
                    + num_cell(f"{v['tokens_per_second']:,.0f}") + "</tr>")
    return table(head, rows)


def samples_table(metrics: dict) -> str:
    s = metrics.get("samples") or {}
    if not s.get("rows"):
        return ""
    g = s["settings"]
    how = ("greedy" if g["temperature"] == 0 else f"temperature {g['temperature']:g}"
           + (f", top-k {g['top_k']}" if g.get("top_k") else "")) + f", seed {g['seed']}"
    names = [n for n in ORDER if n in s["rows"][0]["continuations"]]
    head = "<tr><th>Prompt</th>" + "".join(f"<th>{esc(LABELS.get(n, n))}</th>" for n in names) + "</tr>"
    rows = ["<tr>" + f'<td class="prompt">{esc(r["prompt"])}</td>'
            + "".join(f"<td>{esc(r['continuations'][n])}</td>" for n in names) + "</tr>" for r in s["rows"]]
    return (f"<section><h2>Samples</h2><p>Each prompt continued by {g['max_new_tokens']} tokens ({esc(how)}, "
            f"the last {s['context']} tokens as context), the same settings for every model.</p>"
            + table(head, rows, "samples") + "</section>")


def render_lm_page(metrics: dict, history: list[dict], recipe_yaml: str) -> str:
    run = metrics.get("run") or {}
    png = base64.b64encode(perplexity_figure(history)).decode("ascii")
    sections = [
        _header(run),
        '<section><h2>What this run shows</h2><div class="findings">'
        + "".join(f"<p>{esc(s)}</p>" for s in findings(metrics)) + "</div></section>",
        "<section><h2>Summary</h2>" + summary_table(metrics)
        + "<p>Loss: mean cross-entropy per scored test token (nats); perplexity = e<sup>loss</sup>. Time per token: "
          "one forward pass over the context window at batch 1 (fixed-context decoding), median of interleaved "
          "runs.</p></section>",
        f'<section><h2>Figures</h2><figure><img src="data:image/png;base64,{png}" alt="Validation perplexity">'
        "<figcaption><strong>Figure 1. Validation perplexity per epoch.</strong> Every model on the same "
        "validation blocks; the best epoch (lowest validation loss) is the one kept.</figcaption></figure></section>",
        samples_table(metrics),
        f"<section><h2>Run facts</h2>{run_facts(metrics)}</section>",
        f"<section><h2>Recipe</h2><pre>{esc(recipe_yaml.rstrip() or '(no recipe recorded)')}</pre></section>",
    ]
    name, dataset = run.get("name") or "unnamed run", run.get("dataset") or "unknown dataset"
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>tinykd report — {esc(name)} ({esc(dataset)})</title>\n<style>{CSS}{LM_CSS}</style>\n</head>\n"
            "<body>\n<main>\n" + "\n".join(s for s in sections if s)
            + "\n<footer>Generated by tinykd. Numbers are on the test split unless stated.</footer>\n"
            "</main>\n</body>\n</html>\n")


def write_lm_report(run_dir: Path, metrics: dict, history: list[dict], recipe_yaml: str) -> Path:
    """Write the self-contained ``run_dir/report.html`` of a language-model run."""
    return atomic_write(Path(run_dir) / "report.html", render_lm_page(metrics, history, recipe_yaml).encode("utf-8"))


def print_lm_summary(metrics: dict, console) -> None:
    """The terminal summary of a language-model run: a row per variant, then what distillation bought."""
    from rich.table import Table

    t = Table(title="tinykd summary (test split; loss in nats per token)")
    for col in ("variant", "loss", "perplexity", "next-token %", "params", "file", "ms/token", "runtime"):
        t.add_column(col, justify="left" if col in ("variant", "runtime") else "right")
    for name in ORDER:
        v = metrics["variants"].get(name)
        if v is not None:
            t.add_row(name, f"{v['loss']:.4f}", f"{v['perplexity']:.2f}", f"{100 * v['next_token_accuracy']:.2f}",
                      f"{v['params']:,}", format_bytes(v["file_bytes"]), f"{v['ms_per_token']:.3f}",
                      RUNTIME_NAMES.get(v["runtime"], v["runtime"]))
    console.print(t)
    for line in findings(metrics):
        console.print(line)
