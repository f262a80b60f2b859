"""The default run (`tinykd run`, src/tinykd/recipes/default.yaml) over several seeds: what distillation buys,
what int8 costs, and the deployment numbers, as mean ± std.

Targets (issue "honest deployment numbers"): the distilled student beats the same student from scratch by ≥ 1 point
on average; the deployed artifact keeps ≥ 95 % of the teacher's accuracy, is ≥ 10× smaller than the teacher's
file (the int8 file) and ≥ 3× faster at batch 1 (each in its fastest runtime); int8 agrees with the fp32
student on ≥ 99 % of test predictions; the run takes ≤ 3 minutes on 2 cores.

--equal-steps also trains each seed's scratch student for as many optimizer steps as the distilled one took
(the distilled student also learns from the unlabelled inputs, so the same epochs are more steps).

    python benchmarks/default_run.py [--seeds 0 1 2] [--equal-steps] [--set KEY=VALUE ...] [--out FILE]
"""
from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console

from common import train, write_table
from tinykd import resolve_recipe
from tinykd.data import load_dataset
from tinykd.pipeline import run

ROOT = Path(__file__).resolve().parents[1]


def _pct(values: list[float]) -> str:
    m = statistics.mean(values) * 100
    s = statistics.stdev(values) * 100 if len(values) > 1 else 0.0
    return f"{m:.2f} ± {s:.2f}"


def _num(values: list[float], fmt: str = "{:.1f}") -> str:
    m = statistics.mean(values)
    s = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{fmt.format(m)} ± {fmt.replace('+', '').format(s)}"


def machine() -> str:
    load = os.getloadavg()
    cores = len(os.sched_getaffinity(0))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout
    return (f"commit {commit.strip() or '?'}, {dt.date.today()}, {cores} cores, load average before the runs "
            f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="dotted overrides of the default recipe")
    ap.add_argument("--equal-steps", action="store_true", help="also a scratch student with the distilled one's steps")
    ap.add_argument("--out", default=str(Path(__file__).with_name("results") / "default_run.md"))
    ap.add_argument("--runs", default="/tmp/tinykd-default-runs", help="where the run folders go")
    args = ap.parse_args()
    facts = machine()
    console = Console(stderr=True)
    rows: dict[str, list[float]] = {k: [] for k in ("teacher", "scratch", "distilled", "int8", "deployed", "gain",
                                                      "parity", "size", "speedup", "same_rt", "int8_rt", "seconds",
                                                      "scratch_steps")}
    per_seed, deployed = [], []
    for seed in args.seeds:
        recipe = resolve_recipe(None, [f"seed={seed}", f"output_dir={args.runs}", f"name=default-seed{seed}",
                                       "report.enabled=false", *args.set])
        t0 = time.perf_counter()
        m = run(recipe, progress=False).metrics
        seconds = time.perf_counter() - t0
        v, r, s = m["variants"], m["ratios"], m["speedups"]
        dep = m["deploy"]
        vals = {"teacher": v["teacher"]["accuracy"], "scratch": v["student_scratch"]["accuracy"],
                "distilled": v["student"]["accuracy"], "int8": v["student_int8"]["accuracy"],
                "deployed": v[dep["variant"]]["accuracy"], "parity": v["student_int8"]["agreement_with_fp32_student"],
                "size": v["teacher"]["file_bytes"] / v["student_int8"]["file_bytes"], "speedup": r["speedup_b1"],
                "same_rt": s["same_runtime"]["b1"], "int8_rt": s["int8_vs_fp32"]["b1"], "seconds": seconds}
        vals["gain"] = vals["distilled"] - vals["scratch"]
        if args.equal_steps:
            vals["scratch_steps"] = _equal_steps_scratch(recipe, m, seed)
        for k, x in vals.items():
            rows[k].append(x)
        deployed.append(f"{dep['artifact']} ({dep['runtime']})")
        per_seed.append(f"seed {seed}: teacher {100 * vals['teacher']:.1f}, scratch {100 * vals['scratch']:.1f}, "
                        f"distilled {100 * vals['distilled']:.1f}, int8 {100 * vals['int8']:.1f} "
                        f"(parity {100 * vals['parity']:.1f} %), deployed {dep['artifact']}, {seconds:.0f} s"
                        + (f", scratch with equal steps {100 * vals['scratch_steps']:.1f}" if args.equal_steps else ""))
        console.print(per_seed[-1])
    header = ["quantity", f"mean ± std over seeds {', '.join(map(str, args.seeds))}"]
    table = [["teacher accuracy (%)", _pct(rows["teacher"])],
             ["student from scratch (%)", _pct(rows["scratch"])],
             ["distilled student, fp32 (%)", _pct(rows["distilled"])],
             ["distillation gain (points)", _num([100 * g for g in rows["gain"]], "{:+.2f}")],
             ["distilled student, int8 (%)", _pct(rows["int8"])],
             ["int8 agreement with the fp32 student (%)", _pct(rows["parity"])],
             ["deployed artifact (%)", _pct(rows["deployed"])],
             ["int8 file vs teacher file (× smaller)", _num(rows["size"])],
             ["batch-1 speed-up, deployed (each in its fastest runtime)", _num(rows["speedup"])],
             ["batch-1 speed-up, same runtime (ORT fp32)", _num(rows["same_rt"])],
             ["int8 vs fp32 student in ORT, batch 1", _num(rows["int8_rt"], "{:.2f}")],
             ["wall time of the run (s)", _num(rows["seconds"], "{:.0f}")]]
    if args.equal_steps:
        table.insert(4, ["student from scratch, as many steps as the distilled one (%)", _pct(rows["scratch_steps"])])
    notes = [f"Machine: {facts}.", "", "Per seed:", *[f"- {p}" for p in per_seed], "",
             "Deployed artifact per seed: " + "; ".join(deployed) + ".",
             f"Overrides: {' '.join(args.set) or 'none (the default recipe as shipped)'}."]
    text = write_table(Path(args.out), "The default run over seeds", header, table, notes)
    print(text)


def _equal_steps_scratch(recipe, metrics: dict, seed: int) -> float:
    """Test accuracy of the recipe's scratch student trained for as many optimizer steps as the distilled one
    (its epochs scaled by the inputs the distilled student sees per epoch over the labelled ones)."""
    sizes = metrics["run"]["split_sizes"]
    labelled, seen = sizes["train"], sizes["train"] + sizes.get("unlabelled", 0)
    cfg = recipe.student.train.model_copy(update={"epochs": math.ceil(recipe.student.train.epochs * seen / labelled)})
    d = recipe.data
    data = load_dataset(d.name, path=d.path, seed=recipe.seed, val_fraction=d.val_fraction,
                        test_fraction=d.test_fraction, normalize=d.normalize, limit=d.limit, labelled=d.labelled,
                        **d.options)
    _, outcome = train(recipe.student.model, recipe.student.kwargs, data, cfg,
                       [{"name": "ce", "label_smoothing": cfg.label_smoothing}], seed=seed + 1)
    return outcome.best


if __name__ == "__main__":
    sys.exit(main())
