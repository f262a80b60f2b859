"""tinykd search on MNIST-1D under the Arduino Nano 33 BLE budget: does a small search (distillation policy and the
MLP student's width and depth) find a student that dominates the hand-written recipe (recipes/mnist1d.yaml) —
more accurate at no larger int8 file and int8 latency — and at what CPU cost?

The hand-written recipe is the study's first trial (``search.baseline``), so it is measured exactly like the others:
same teacher (trained once), same stages, same process. Objectives (validation accuracy, int8 size) steer the
search; the test accuracy of the recipe as written and of the Pareto trials is read only for this table.

    python benchmarks/search.py [--trials 12] [--epochs 60] [--out benchmarks/results/search.md]
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console

from tinykd.recipe import load_recipe
from tinykd.search import search
from tinykd.search.report import dominates, fmt

LATENCY_NOISE = 0.10
ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "mnist1d" / "mnist1d_data.npz"
SPACE = {
    "distill.losses.0.temperature": {"float": [1, 8], "log": True},
    "distill.losses.0.alpha": {"float": [0.1, 0.95]},
    "student.kwargs.hidden": {"choice": [[32], [64], [64, 32], [128, 64], [128, 128], [256, 128]]},
}


def machine(load_before: tuple) -> str:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout
    after = os.getloadavg()
    return (f"Machine: commit {commit.strip()}, {dt.date.today().isoformat()}, {os.cpu_count()} cores, torch threads "
            f"{torch.get_num_threads()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, load average before "
            f"{' / '.join(f'{v:.2f}' for v in load_before)}, after {' / '.join(f'{v:.2f}' for v in after)}.")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--epochs", type=int, default=None, help="teacher and student epochs (default: the recipe's)")
    ap.add_argument("--out", default=str(Path(__file__).with_name("results") / "search.md"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="tinykd-search-"))
    overrides = [f"data.path={DATA}", f"output_dir={work}", "teacher.train.threads=1", "student.train.threads=1",
                 "teacher.train.device=cpu", "student.train.device=cpu", "distill.cache=true"]
    if args.epochs:
        overrides += [f"teacher.train.epochs={args.epochs}", f"student.train.epochs={args.epochs}"]
    base = load_recipe(ROOT / "recipes" / "mnist1d.yaml", overrides)
    recipe = load_recipe(base.model_dump(mode="json") | {"search": {
        "trials": args.trials, "seed": 0, "space": SPACE, "constraints": {"board": "nano33ble"},
        "objectives": [{"metric": "accuracy", "direction": "maximize"},
                       {"metric": "int8_size_kb", "direction": "minimize"}]}})
    recipe = recipe.model_copy(update={"base_dir": base.base_dir})
    cpu0, wall0 = time.process_time(), time.perf_counter()
    result = search(recipe, study_name="mnist1d-nano33ble", console=Console())
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    plan, trials = result.plan, result.trials
    base_trial = next(t for t in trials if t.user_attrs.get("baseline"))
    complete = [t for t in trials if t.state.name == "COMPLETE"]

    def latency(t):
        return t.user_attrs["measured"]["int8_latency_ms"]
    # dominance on the objectives (validation accuracy, int8 size) and an int8 latency no higher than the recipe's
    # beyond timing noise (LATENCY_NOISE: the same architecture times a few per cent apart between trials)
    winners = [t for t in complete if t is not base_trial and dominates(t, base_trial, plan)
               and latency(t) <= (1 + LATENCY_NOISE) * latency(base_trial)]
    front = {t.number for t in result.best}
    rows = []
    for t in sorted(trials, key=lambda t: t.number):
        m, test = t.user_attrs.get("measured") or {}, t.user_attrs.get("test") or {}
        shown = t is base_trial or t.number in front
        v = t.user_attrs.get("values") or {}
        tags = (["recipe as written"] if t is base_trial else []) + (["Pareto"] if t.number in front else []) + (
            ["dominates the recipe"] if t in winners else [])
        rows.append(
            f"| {t.number} | {v.get('student.kwargs.hidden')} | {v.get('distill.losses.0.temperature', 0):.2f} | "
            f"{v.get('distill.losses.0.alpha', 0):.2f} | {t.state.name.lower()} | {fmt('accuracy', m.get('accuracy'))} | "
            f"{fmt('int8_size_kb', m.get('int8_size_kb'))} | {fmt('int8_latency_ms', m.get('int8_latency_ms'))} | "
            f"{fmt('params', m.get('params'))} | {fmt('accuracy', test.get('int8_accuracy')) if shown else '—'} | "
            f"{fmt('trial_seconds', m.get('trial_seconds'))} | {', '.join(tags)} |")
    teacher_s = sum(t.user_attrs.get("teacher_seconds", 0) for t in trials)
    bm = base_trial.user_attrs["measured"]
    verdict = (f"Yes, on validation: {len(winners)} of the {len(complete) - 1} searched trials "
               f"{'dominates' if len(winners) == 1 else 'dominate'} the recipe as written (higher validation accuracy "
               f"at no larger int8 file, int8 latency at most {100 * LATENCY_NOISE:.0f} % above it — timing noise): "
               + "; ".join(f"trial {t.number} ({fmt('accuracy', t.values[0])} val, {fmt('int8_size_kb', t.values[1])}, "
                           f"{fmt('int8_latency_ms', latency(t))}, test int8 "
                           f"{fmt('accuracy', t.user_attrs['test'].get('int8_accuracy'))})" for t in winners) + "."
               if winners else
               f"No: none of the {len(complete) - 1} searched trials dominates the recipe as written on validation "
               f"accuracy, int8 size and int8 latency (within {100 * LATENCY_NOISE:.0f} %) together.")
    if winners:
        base_test = base_trial.user_attrs["test"].get("int8_accuracy")
        held = [t for t in winners if t.user_attrs["test"].get("int8_accuracy", 0) > base_test]
        verdict += (f" On the test split, read once at the end, {len(held)} of {len(winners)} "
                    f"{'is' if len(winners) == 1 else 'are'} also more accurate than the recipe as written "
                    f"({fmt('accuracy', base_test)} int8)"
                    + ("." if held else ": the validation gain does not carry over to the test split (400 validation "
                       "samples: one sample is 0.25 points)."))
    title = f"tinykd search: MNIST-1D under the Nano 33 BLE budget, {args.trials} trials"
    lines = [f"# {title}", "", f"Command: `python {' '.join(sys.argv)}`", "",
             machine(load_before), "",
             f"Wall time {wall:.0f} s, CPU time of the process {cpu:.0f} s (one torch thread), of which the "
             f"teacher, trained once for the study, took {teacher_s:.0f} s of wall time; trial times below leave it "
             "out.", "",
             "| trial | student hidden | T | α | state | val acc | int8 file | int8 b1 latency | params | "
             "test acc (int8) | trial time | |", "|" + "---|" * 12, *rows, "",
             verdict, "",
             f"The recipe as written (trial {base_trial.number}: MLP [128, 64], T = 4, α = 0.9): validation "
             f"{fmt('accuracy', bm['accuracy'])}, int8 {fmt('int8_size_kb', bm['int8_size_kb'])}, int8 latency "
             f"{fmt('int8_latency_ms', bm['int8_latency_ms'])}, test int8 "
             f"{fmt('accuracy', base_trial.user_attrs['test'].get('int8_accuracy'))}.",
             "",
             f"Search: NSGA-II (population {max(4, min(50, args.trials // 3))}), objectives validation accuracy (max) "
             "and int8 file size (min), constraint: the int8 student fits the Arduino Nano 33 BLE Sense (flash and "
             "SRAM with the TFLM runtime). Space: "
             + "; ".join(f"{d.key} {d.describe()}" for d in plan.dimensions) + ". "
             "Test accuracy is shown only for the recipe as written and the Pareto trials; latencies are batch-1 "
             "medians in ONNX Runtime on this machine (tens of microseconds: differences of a few µs are timing "
             "noise, see the load above).", "",
             "Pareto figure: `search_pareto.png`."]
    text = "\n".join(lines) + "\n"
    out = Path(args.out)
    out.write_text(text)
    fig = next(iter(sorted((result.folder / "figures").glob("pareto_*.png"))), None)
    if fig is not None:
        shutil.copy(fig, out.with_name("search_pareto.png"))
    print(text)
    print(f"study folder (kept): {result.folder}")


if __name__ == "__main__":
    main()
