"""Rationale distillation on multi-digit addition (distilling step-by-step, Hsieh et al. 2023): a small GPT teacher
learns problems with digit-by-digit rationales and writes a rationale for every training prompt; two students of
one size learn (a) the answer only, (b) the answer and the teacher's rationales (multi-task, task prefixes
``[answer]`` / ``[reason]``). Exact match of the final answer on held-out problems, of the training lengths and of
longer ones, over several seeds.

    python benchmarks/rationale.py                                   # 3 seeds → results/rationale.md
    python benchmarks/rationale.py --seeds 0 --teacher-epochs 2 --student-epochs 2 --out /tmp/r.md   # a quick look

The seed sets the problems' split into training and validation, every model's initialisation and shuffling; the
problems themselves (``dataset_seed`` 0) are the same for every seed. Runs live in ``--work`` (a fresh temporary
folder by default; give one to resume an interrupted run: finished steps are reused).
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from tinykd.measure import count_params  # noqa: E402
from tinykd.recipe import load_recipe  # noqa: E402
from tinykd.stages.rationale import rationale_distillation  # noqa: E402

ROWS = {"teacher": "teacher (writes the rationale)",
        "answer_only": "(a) student, answer only",
        "multitask": "(b) student, answer + teacher's rationales; answer task (no rationale written)",
        "multitask_reason": "(b) student, same model; rationale task (writes a rationale, then the answer)"}
TRAINED = {"teacher": "teacher", "answer_only": "answer_only", "multitask": "multitask", "multitask_reason": None}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--digits", type=int, default=3, help="training problems have 1..digits digits")
    p.add_argument("--test-digits", type=int, default=4, help="held-out problems of up to this many digits")
    p.add_argument("--n-train", type=int, default=10000)
    p.add_argument("--n-test", type=int, default=200, help="held-out problems per length")
    p.add_argument("--teacher", type=int, nargs=2, default=[2, 128], metavar=("LAYERS", "HIDDEN"))
    p.add_argument("--student", type=int, nargs=2, default=[2, 64], metavar=("LAYERS", "HIDDEN"))
    p.add_argument("--teacher-epochs", type=int, default=12)
    p.add_argument("--student-epochs", type=int, default=20)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--work", type=Path, default=None, help="runs folder (default: a new temporary one)")
    p.add_argument("--out", type=Path, default=HERE / "results" / "rationale.md")
    return p.parse_args(argv)


def recipe(args: argparse.Namespace, seed: int):
    train = {"batch_size": args.batch_size, "lr": args.lr, "warmup_epochs": 1, "weight_decay": 0.01, "threads": 1}
    return load_recipe({
        "name": f"rationale-seed{seed}", "seed": seed,
        "data": {"name": "arithmetic", "val_fraction": 0.02,
                 "options": {"digits": args.digits, "test_digits": args.test_digits, "n_train": args.n_train,
                             "n_test": args.n_test, "context": 64}},
        "teacher": {"model": "gpt", "kwargs": {"layers": args.teacher[0], "hidden": args.teacher[1], "heads": 4,
                                               "dropout": 0.0},
                    "train": {**train, "epochs": args.teacher_epochs}},
        "student": {"model": "gpt", "kwargs": {"layers": args.student[0], "hidden": args.student[1], "heads": 4,
                                               "dropout": 0.0},
                    "train": {**train, "epochs": args.student_epochs}}})


def pooled(by_group: dict, lengths) -> float:
    """Exact match over the problems of ``lengths`` together."""
    hits = sum(acc * n for g, (acc, n) in by_group.items() if g in lengths)
    total = sum(n for g, (_, n) in by_group.items() if g in lengths)
    return hits / total if total else float("nan")


def mean_std(values: list[float]) -> str:
    vals = [100 * v for v in values]
    return f"{vals[0]:.1f}" if len(vals) == 1 else f"{statistics.mean(vals):.1f} ± {statistics.stdev(vals):.1f}"


def std(values: list[float]) -> float:
    return 100 * statistics.stdev(values) if len(values) > 1 else 0.0


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    console = Console()
    work = args.work or Path(tempfile.mkdtemp(prefix="tinykd-rationale-"))
    load_start, started = os.getloadavg()[0], time.perf_counter()
    runs = []
    for seed in args.seeds:
        res = rationale_distillation(recipe(args, seed), work / f"seed{seed}", console=console, progress=False)
        runs.append(res)
    inside, longer = range(1, args.digits + 1), range(args.digits + 1, args.test_digits + 1)
    lengths = sorted({g for r in runs for g in r.scores["teacher"].by_group})
    table = {k: {"in": [pooled(r.scores[k].by_group, inside) for r in runs],
                 "long": [pooled(r.scores[k].by_group, longer) for r in runs],
                 **{n: [r.scores[k].by_group[n][0] for r in runs] for n in lengths}} for k in ROWS}
    params = {"teacher": count_params(runs[0].teacher), **{k: count_params(m) for k, m in runs[0].students.items()}}
    params["multitask_reason"] = params["multitask"]
    cpu = {k: statistics.mean(r.seconds[s]["cpu"] for r in runs) if s else None for k, s in TRAINED.items()}
    a, b = table["answer_only"]["in"], table["multitask"]["in"]
    write(args, work, runs, table, params, cpu, lengths, load_start, time.perf_counter() - started)
    diff = 100 * (statistics.mean(b) - statistics.mean(a))
    console.print(f"(b) − (a), answer task, training lengths: {diff:+.1f} points (seed std {std(a):.1f} / {std(b):.1f})")
    return 0


def write(args, work: Path, runs, table: dict, params: dict, cpu: dict, lengths: list[int], load_start: float,
          seconds: float) -> None:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=HERE).stdout.strip()
    inside = f"1–{args.digits}" if args.digits > 1 else "1"
    longer = (f"{args.digits + 1}–{args.test_digits}" if args.test_digits > args.digits + 1 else str(args.test_digits))
    n_tests = {n: runs[0].scores["teacher"].by_group[n][1] for n in lengths}
    shares = [r.rationale_accuracy for r in runs]
    a, b, c = table["answer_only"]["in"], table["multitask"]["in"], table["multitask_reason"]["in"]
    diff = 100 * (statistics.mean(b) - statistics.mean(a))
    spread = max(std(a), std(b))
    paired = [100 * (y - x) for x, y in zip(a, b)]
    lines = [
        "# Rationale distillation on multi-digit addition",
        "",
        f"Command: `python benchmarks/rationale.py {' '.join(sys.argv[1:])}`  ",
        f"Commit {commit}, {dt.date.today()}, {os.cpu_count()} cores shared with other jobs, torch threads 1, "
        f"`nice -n 15`; load average {load_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end; "
        f"{seconds / 60:.0f} min in all.  ",
        f"Data: `arithmetic` (generated, dataset_seed 0): {args.n_train:,} training problems `a+b=` with operands of "
        f"1–{args.digits} digits (2 % held out for validation), held-out test problems that are not training "
        f"problems, {args.n_test} per length ({', '.join(f'{n} digits: {k}' for n, k in n_tests.items())}; every "
        "1-digit problem is a training problem). Character tokens, context 64.  ",
        f"Teacher: gpt {args.teacher[0]} layers, hidden {args.teacher[1]}, 4 heads ({params['teacher']:,} parameters), "
        f"{args.teacher_epochs} epochs on prompt → rationale `#` answer (token cross-entropy); its greedy rationales "
        f"of the training prompts end in the right answer for {mean_std(shares)} % of them (kept as they are, "
        "right or wrong).  ",
        f"Students: gpt {args.student[0]} layers, hidden {args.student[1]}, 4 heads ({params['answer_only']:,} "
        f"parameters), {args.student_epochs} epochs, the same initial weights, `sequence_ce`; (b) sees every problem "
        f"in both tasks, in batches of {2 * args.batch_size} sequences against (a)'s {args.batch_size}: the same "
        "optimizer steps and the same answers per step. AdamW, lr "
        f"{args.lr:g}, cosine with a 1-epoch warm-up, no dropout. Seeds {args.seeds}: mean ± std.  ",
        "Exact match: greedy decoding until the end token, the answer after the last `#` compared with the sum as a "
        "string; the best-validation-loss checkpoint of each model.",
        "",
        f"| model | params | training CPU s (per seed) | exact match % ({inside} digits) | "
        + " | ".join(f"{n} digits" for n in lengths) + f" | longer ({longer} digits) |",
        "|---|---|---|---|" + "---|" * len(lengths) + "---|",
    ]
    for key, label in ROWS.items():
        t = table[key]
        lines.append(f"| {label} | {params[key]:,} | {'—' if cpu[key] is None else f'{cpu[key]:.0f}'} | "
                     f"{mean_std(t['in'])} | " + " | ".join(mean_std(t[n]) for n in lengths)
                     + f" | {mean_std(t['long'])} |")
    beats = diff > spread
    lines += [
        "",
        "Per seed, answer task, training lengths: (a) " + ", ".join(f"{100 * v:.1f}" for v in a) + "; (b) "
        + ", ".join(f"{100 * v:.1f}" for v in b) + "; (b) − (a) " + ", ".join(f"{v:+.1f}" for v in paired)
        + "; (b) writing its rationale " + ", ".join(f"{100 * v:.1f}" for v in c) + ".",
        "",
        f"**Verdict.** On the answer task (the paper's inference, no rationale written) student (b) scores "
        f"{diff:+.1f} points against student (a) on problems of the training lengths; the seed spread (the larger "
        f"std of the two) is {spread:.1f} points, so (b) "
        + ("beats (a) by more than the seed spread." if beats else "does **not** beat (a) by more than the seed spread.")
        + f" Writing its rationale first, student (b) scores {100 * (statistics.mean(c) - statistics.mean(a)):+.1f} "
        "points against (a).",
        "",
        f"Runs in `{work}` (not kept in the repository).",
    ]
    text = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    raise SystemExit(main())
