"""Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network", section 3 (MNIST).

Teacher: 784-1200-1200-10 ReLU, dropout, inputs jittered by up to ±2 pixels (paper: 67 test errors).
Student: 784-800-800-10 ReLU, no regularisation, from scratch (paper: 146 errors) and distilled with
soft targets at T = 20 from the teacher on the same training images (paper: 74 errors).
Target: the distilled student makes ≤ 74 errors on the 10 000 official test images.

    python benchmarks/hinton_mnist.py [--teacher-epochs 60] [--student-epochs 60] [--seed 0]

The last 1 000 of the 60 000 training images (a stratified draw, by the seed) are held out for
validation; the table reports test errors of the last epoch (no test-set selection) and of the
checkpoint with the best validation accuracy.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from rich.console import Console
from torch import nn

from common import Outcome, train, write_table
from tinykd.data import load_dataset
from tinykd.data.augment import RandomShift
from tinykd.models import count_params
from tinykd.recipe import TrainConfig

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--teacher-epochs", type=int, default=60)
    ap.add_argument("--student-epochs", type=int, default=60)
    ap.add_argument("--temperature", type=float, default=20.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(Path(__file__).with_name("results") / "hinton_mnist.md"))
    args = ap.parse_args()
    console = Console()
    # Raw pixels in [0, 1] as in the paper (so jitter fills the border with background 0).
    data = load_dataset("idx", path=str(DATA), seed=args.seed, val_fraction=1000 / 60000, normalize=False)
    n_test = len(data.test)
    sgd = dict(batch_size=128, optimizer="sgd", lr=0.05, momentum=0.9, schedule="cosine", weight_decay=0.0)

    def wrap(model: nn.Module) -> nn.Module:  # jitter as the first layer: active in training, identity in eval
        return nn.Sequential(RandomShift(2), model)

    rows, results = [], {}
    t0 = time.perf_counter()
    teacher, out_t = train("mlp_1200x2", {"dropout": 0.5}, data, TrainConfig(epochs=args.teacher_epochs, **sgd),
                           [{"name": "ce"}], seed=args.seed, wrap=wrap, console=console)
    results["teacher 784-1200-1200-10, dropout 0.5 + ±2 px jitter"] = (out_t, 67, count_params(teacher))
    console.print(f"teacher: {round((1 - out_t.last) * n_test)} errors (last)  {time.perf_counter() - t0:.0f}s")
    scratch, out_s = train("mlp_800x2", {}, data, TrainConfig(epochs=args.student_epochs, **sgd),
                           [{"name": "ce"}], seed=args.seed, console=console)
    results["student 784-800-800-10 from scratch (no regularisation)"] = (out_s, 146, count_params(scratch))
    console.print(f"scratch: {round((1 - out_s.last) * n_test)} errors (last)")
    kd = [{"name": "kd", "temperature": args.temperature, "alpha": 0.9}]
    student, out_d = train("mlp_800x2", {}, data, TrainConfig(epochs=args.student_epochs, **sgd), kd,
                           seed=args.seed, teacher=teacher, console=console)
    results[f"student 784-800-800-10 distilled, T = {args.temperature:g}"] = (out_d, 74, count_params(student))
    console.print(f"distilled: {round((1 - out_d.last) * n_test)} errors (last)")
    for name, (out, paper, params) in results.items():
        rows.append([name, f"{params:,}", str(paper), str(round((1 - out.last) * n_test)),
                     str(round((1 - out.best) * n_test)), f"{out.seconds_per_epoch:.1f}"])
    text = write_table(
        Path(args.out), "Hinton et al. 2015, MNIST: test errors out of 10 000",
        ["model", "params", "paper errors", "errors (last epoch)", "errors (best-val checkpoint)", "s / epoch"], rows,
        [f"Seed {args.seed}; teacher {args.teacher_epochs} epochs, students {args.student_epochs} epochs; SGD "
         "(momentum 0.9, Nesterov), lr 0.05, cosine schedule, batch 128; 59 000 training / 1 000 validation "
         "images from the official training set; the official 10 000 test images.",
         f"Distillation: Hinton KD at T = {args.temperature:g}, soft term weight 0.9 (× T²), hard labels 0.1; "
         "the student sees the unjittered training images, the teacher labels them in eval mode (no dropout).",
         f"Total wall time {time.perf_counter() - t0:.0f} s on the project's 2-core CPU machine."])
    console.print(text)


if __name__ == "__main__":
    main()
