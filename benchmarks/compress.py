"""Distillation to a deployed int8 student on MNIST and FSDD: the recipes recipes/mnist_edge.yaml and
recipes/fsdd_edge.yaml, run through the full pipeline, compared against the issue's targets.

Targets (deployed int8 student vs fp32 teacher, best runtime of each): ≥ 20× smaller, ≥ 10× lower batch-1
latency, ≥ 98 % of the teacher's accuracy, fits the Arduino Nano 33 BLE Sense; where PTQ loses more than
0.5 points against the fp32 student, QAT with KD recovers at least half of the loss.

    python benchmarks/compress.py [--recipes mnist_edge fsdd_edge] [--out results/compress.md] [--tables-only]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

from rich.console import Console

from common import write_table
from tinykd import load_recipe
from tinykd.pipeline import run

ROOT = Path(__file__).resolve().parents[1]
INT8 = ("student_int8", "student_qat", "student_tflite_int8", "student_pruned_int8")


def best_latency(variant: dict) -> tuple[float, str]:
    """The lowest batch-1 median over the runtimes the variant was measured in."""
    return min(((d["b1"]["median_ms"], rt) for rt, d in variant["latency"].items()), key=lambda t: t[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipes", nargs="+", default=["mnist_edge", "fsdd_edge"])
    ap.add_argument("--out", default=str(Path(__file__).with_name("results") / "compress.md"))
    ap.add_argument("--runs", default="/tmp/tinykd-compress-runs", help="where the run folders go (replaced)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="dotted overrides for every recipe")
    ap.add_argument("--tables-only", action="store_true",
                    help="rewrite the table from the metrics.json of finished runs in --runs, without training")
    args = ap.parse_args()
    args.out = str(Path(args.out).resolve())  # before the chdir below
    os.chdir(ROOT)  # the recipes' data paths are relative to the repository root
    console = Console()
    rows, notes = [], []
    runs = Path(args.runs)
    for name in args.recipes:
        recipe = load_recipe(ROOT / "recipes" / f"{name}.yaml", [f"output_dir={runs}", *args.set])
        if args.tables_only:
            m = json.loads((runs / recipe.name / "metrics.json").read_text())
            report = runs / recipe.name / "report.html"
        else:
            shutil.rmtree(runs / recipe.name, ignore_errors=True)
            result = run(recipe, console=console, progress=False)
            m, report = result.metrics, result.report
        v = m["variants"]
        teacher = v["teacher"]
        t_ms, t_rt = best_latency(teacher)
        ptq_loss = v["student"]["accuracy"] - v["student_int8"]["accuracy"]
        for key in (k for k in INT8 if k in v):
            s = v[key]
            s_ms, s_rt = best_latency(s)
            size = teacher["file_bytes"] / s["file_bytes"]
            speed = t_ms / s_ms
            retention = s["accuracy"] / teacher["accuracy"]
            fits = m["mcu"]["boards"]["nano33ble"]["fits"] if key == m["mcu"]["variant"] else None
            rows.append([name, s["label"], f"{100 * teacher['accuracy']:.2f}", f"{100 * s['accuracy']:.2f}",
                         f"{100 * retention:.1f} {'✓' if retention >= 0.98 else '✗'}",
                         f"{size:.1f}× {'✓' if size >= 20 else '✗'}",
                         f"{speed:.1f}× ({t_rt} {t_ms:.3f} → {s_rt} {s_ms:.3f} ms) {'✓' if speed >= 10 else '✗'}",
                         "—" if fits is None else ("✓" if fits else "✗")])
        qat_gain = v["student_qat"]["accuracy"] - v["student_int8"]["accuracy"] if "student_qat" in v else None
        mcu = m["mcu"]
        notes.append(f"- {name}: fp32 student {100 * v['student']['accuracy']:.2f} %, PTQ int8 loses "
                     f"{100 * ptq_loss:.2f} points" + (f", QAT-with-KD int8 {100 * v['student_qat']['accuracy']:.2f} % "
                                                        f"({100 * qat_gain:+.2f} points vs PTQ)" if qat_gain is not None else "")
                     + f"; nano33ble: flash {mcu['boards']['nano33ble']['flash_needed'] / 1024:.1f} KB of 1024 KB, "
                     f"SRAM {mcu['boards']['nano33ble']['sram_needed'] / 1024:.1f} KB of 256 KB (peak activations "
                     f"{mcu['peak_sram_bytes'] / 1024:.1f} KB + runtime allowance); energy per inference (estimate): "
                     f"teacher {teacher['energy']['total_uj']:.2f} µJ, int8 student {v['student_int8']['energy']['total_uj']:.3f} µJ; "
                     f"run time {m['run']['seconds']:.0f} s; report {report}")
    text = write_table(Path(args.out), "Deployed int8 student vs fp32 teacher",
                       ["recipe", "variant", "teacher acc %", "student acc %", "retention % (≥ 98)",
                        "smaller (≥ 20×)", "batch-1 speed-up, best runtimes (≥ 10×)", "fits nano33ble"], rows,
                       ["Latency: one thread, median of repeated batch-1 calls after warm-up, teacher and students "
                        "in the same process; best runtime of each (PyTorch or ONNX Runtime).", *notes])
    console.print(text)


if __name__ == "__main__":
    main()
