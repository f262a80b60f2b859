"""Why the Hinton MNIST student needs a learning-rate warm-up: dead ReLU units in its first epochs.

The 784-800-800-10 student of ``hinton_mnist.py`` trains with SGD (lr 0.05, momentum 0.9) on Hinton KD at T = 20
from the saved 200-epoch teacher, or on cross-entropy alone, with and without a 5-epoch linear warm-up. After 1
and 5 epochs the table counts, per hidden layer, the units that output 0 for all 60 000 training images
(tinykd.distill.health.dead_units): they get no gradient and never recover, so they are lost for the rest of
training. Each count is a fresh run of that many epochs from the same seed, so it follows the same trajectory as
a longer run (the warm-up spans its 5 epochs whatever the run's length; afterwards the learning rate is held
constant, which a 200-epoch cosine schedule is within 0.2 % of over these epochs).

    python benchmarks/hinton_dead_units.py [--epochs 1 5] [--teacher benchmarks/results/.hinton_teachers/...]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from safetensors.torch import load_file

from common import train, write_table
from tinykd.data import load_dataset
from tinykd.distill.cache import TeacherCache
from tinykd.distill.health import dead_units
from tinykd.models import create_model
from tinykd.recipe import TrainConfig

RESULTS = Path(__file__).with_name("results")
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
TEACHER = RESULTS / ".hinton_teachers" / "mlp_1200x2_seed0_e200_val0_last.safetensors"
RUNS = [("Hinton KD, T = 20", "kd", 0), ("Hinton KD, T = 20", "kd", 5), ("cross-entropy", "ce", 0)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, nargs="+", default=[1, 5], help="count dead units after these epochs")
    ap.add_argument("--teacher", default=str(TEACHER), help="saved teacher of hinton_mnist.py (safetensors)")
    ap.add_argument("--data", default=str(DATA), help="folder of the MNIST IDX files")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(RESULTS / "hinton_dead_units.md"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    data = load_dataset("idx", path=args.data, seed=args.seed, val_fraction=0.0, normalize=False)
    shape = tuple(data.spec.shape)
    teacher = create_model("mlp_1200x2", num_classes=10, in_shape=shape, dropout=0.5)
    teacher.load_state_dict(load_file(args.teacher))
    teacher.eval()
    rows = []
    for name, loss, warmup in RUNS:
        for epochs in args.epochs:  # each count is a fresh run of that many epochs from the same seed
            cfg = TrainConfig(epochs=epochs, lr=0.05, batch_size=128, optimizer="sgd", momentum=0.9,
                              schedule="constant", weight_decay=0.0, warmup_epochs=warmup)
            spec = {"name": loss, **({"temperature": 20.0, "alpha": 0.9} if loss == "kd" else {})}
            with tempfile.TemporaryDirectory() as tmp:
                source = TeacherCache(teacher, tmp) if loss == "kd" else None
                student, out = train("mlp_800x2", {}, data, cfg, [spec], seed=args.seed, teacher=source,
                                     console=Console(), keep="last")
            dead = dead_units(student, data.train.x)
            rows.append([name, f"{warmup} epochs" if warmup else "none", str(epochs)]
                        + [f"{n} / {total}" for n, total in dead.values()]
                        + [str(round((1 - out.last) * len(data.test)))])
    text = write_table(
        Path(args.out), "Dead ReLU units of the Hinton MNIST student in its first epochs",
        ["loss", "warm-up", "epochs", "dead units, hidden layer 1", "dead units, hidden layer 2", "test errors"], rows,
        [f"Student 784-800-800-10 (seed {args.seed}), SGD lr 0.05 (momentum 0.9, Nesterov), batch 128, constant "
         "learning rate after the linear warm-up; a unit is dead when it outputs 0 for all 60 000 training images. "
         "KD: soft term weight 0.9 (× T²), hard labels 0.1, from the teacher of `hinton_mnist.py --teacher-epochs "
         f"200` ({Path(args.teacher).name}).",
         f"Total wall time {time.perf_counter() - t0:.0f} s, one torch thread."])
    Console().print(text)


if __name__ == "__main__":
    main()
