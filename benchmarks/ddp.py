"""Training throughput on one and several processes (``tinykd run --nproc``, DistributedDataParallel over gloo on the
CPU): the bundled default recipe's teacher and students, epochs per second per configuration, and the distilled
student's test accuracy (the same global batch, so the same steps, whatever the process count).

    python benchmarks/ddp.py                       # writes results/ddp.md; ~10 min on 2 idle cores
    python benchmarks/ddp.py --rounds 1 --set teacher.train.epochs=2 student.train.epochs=2 --out /tmp/ddp.md

Configurations (processes × torch threads each): 1 × 1, 1 × N and N × 1 for N = the cores this process may use
(at least 2), run round-robin ``--rounds`` times so that load from other jobs hits all alike. Epoch seconds come
from each run's ``history.csv``; the first epoch of each model is left out (start-up, first-touch allocations).
"""
from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MODELS = ("teacher", "student_scratch", "student")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", default=None, help="recipe file (default: the bundled default recipe)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--set", nargs="*", default=["teacher.train.epochs=6", "student.train.epochs=6"],
                   help="recipe overrides for every run")
    p.add_argument("--work", type=Path, default=None)
    p.add_argument("--out", type=Path, default=HERE / "results" / "ddp.md")
    return p.parse_args(argv)


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def run_once(args, procs: int, threads: int, folder: Path) -> dict:
    tinykd = Path(sys.executable).with_name("tinykd")
    cmd = [str(tinykd), "run", *([args.recipe] if args.recipe else []), *args.set, "report.enabled=false",
           f"output_dir={folder.parent}", "--name", folder.name, "--quiet"]
    if procs > 1:
        cmd += ["--nproc", str(procs)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{res.stderr[-3000:]}")
    seconds: dict[str, list[float]] = {m: [] for m in MODELS}
    with open(folder / "history.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row["model"] in seconds and int(row["epoch"]) > 1:
                seconds[row["model"]].append(float(row["seconds"]))
    metrics = json.loads((folder / "metrics.json").read_text())
    acc = metrics["variants"]["student"]["accuracy"]
    return {"seconds": seconds, "wall": wall, "accuracy": acc}


def main(argv=None) -> int:
    args = parse_args(argv)
    n = max(2, cores())
    configs = [(1, 1), (1, n), (n, 1)]
    work = args.work or Path(tempfile.mkdtemp(prefix="tinykd-ddp-"))
    load_start, started = os.getloadavg()[0], time.perf_counter()
    results: dict[tuple[int, int], list[dict]] = {c: [] for c in configs}
    for r in range(args.rounds):
        for procs, threads in configs:
            folder = work / f"p{procs}t{threads}r{r}"
            results[(procs, threads)].append(run_once(args, procs, threads, folder))
            print(f"round {r}: {procs} process(es) x {threads} thread(s): "
                  f"{results[(procs, threads)][-1]['wall']:.0f} s", flush=True)
    write(args, configs, results, n, load_start, time.perf_counter() - started, work)
    return 0


def write(args, configs, results, n, load_start, seconds, work) -> None:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=HERE).stdout.strip()
    base = {}
    lines = [
        "# Training on one and several processes (DistributedDataParallel, gloo, CPU)",
        "",
        f"Command: `python benchmarks/ddp.py {' '.join(sys.argv[1:])}`  ",
        f"Commit {commit}, {dt.date.today()}, {cores()} cores usable ({os.cpu_count()} in the machine); load average "
        f"{load_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end; {seconds / 60:.0f} min in all; "
        f"{args.rounds} round(s), configurations interleaved.  ",
        f"Recipe: {args.recipe or 'the bundled default'} with {' '.join(args.set) or 'no overrides'}; epoch seconds "
        "from history.csv, epoch 1 of every model left out; mean over rounds and epochs. Global batch the same in "
        "every configuration.",
        "",
        "| processes × threads | " + " | ".join(f"{m} epochs/s" for m in MODELS)
        + " | speed-up (student, vs 1 × 1) | run wall s | distilled student test acc % |",
        "|---|" + "---|" * len(MODELS) + "---|---|---|",
    ]
    for c in configs:
        runs = results[c]
        rate = {m: 1.0 / statistics.mean(s for r in runs for s in r["seconds"][m]) for m in MODELS}
        if c == (1, 1):
            base = rate
        accs = [100 * r["accuracy"] for r in runs]
        lines.append(f"| {c[0]} × {c[1]} | " + " | ".join(f"{rate[m]:.3f}" for m in MODELS)
                     + f" | {rate['student'] / base['student']:.2f}× | "
                     f"{statistics.mean(r['wall'] for r in runs):.0f} | "
                     + ", ".join(f"{a:.2f}" for a in accs) + " |")
    lines += ["", f"Runs in `{work}` (not kept in the repository).", ""]
    text = "\n".join(lines)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    raise SystemExit(main())
