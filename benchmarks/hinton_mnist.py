"""Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network", section 3 (MNIST).

Teacher: 784-1200-1200-10 ReLU, dropout, inputs jittered by up to ±2 pixels (paper: 67 test errors).
Student: 784-800-800-10 ReLU, no regularisation, from scratch (paper: 146 errors) and distilled with
soft targets at T = 20 from the teacher on the same training images (paper: 74 errors).
Target: the distilled student makes ≤ 74 errors on the 10 000 official test images.
A fourth row distils with a jittered transfer set: every epoch the training images are shifted by up to
±2 pixels and the teacher labels the shifted images the student sees (train.shift; not in the paper).

    python benchmarks/hinton_mnist.py [--teacher-epochs 60] [--student-epochs 60] [--seed 0] [--workers 2]
                                      [--student-lr 0.05] [--student-batch 128] [--student-warmup 0] [--alpha 0.9]
                                      [--student-seeds 0 1 2]
                                      [--val-images 0] [--input-dropout 0.2 --max-norm 3.5]
                                      [--rows scratch distill distill_shift]

As in the paper every model trains on all 60 000 training images and the table reports the test errors of the
last epoch (no selection on the test set). ``--val-images N`` holds out a stratified draw of N training images
for validation instead and adds the test errors of the checkpoint with the best validation accuracy. The
teacher teaches with its last-epoch weights (with a cosine schedule to 0 the last epoch is the trained model).
With ``--workers 2`` the scratch student trains beside the teacher and the two distilled students side by side
(one torch thread per process). The teacher is saved under ``--teacher-dir`` and reused by later runs with the
same seed, teacher epochs and validation images. On the unshifted rows the teacher's logits are computed once
and served from a teacher cache (tinykd.distill.cache) every later epoch, which halves a distilled epoch's time.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
from rich.console import Console
from safetensors.torch import load_file, save_file

from common import Outcome, test_accuracy, train, write_table
from tinykd.data import load_dataset
from tinykd.distill.cache import TeacherCache
from tinykd.distill.trainer import describe_device, resolve_device
from tinykd.models import count_params, create_model
from tinykd.recipe import TrainConfig

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
SGD = dict(optimizer="sgd", momentum=0.9, schedule="cosine", weight_decay=0.0)
ROWS = {"teacher": ("teacher 784-1200-1200-10, dropout 0.5{reg} + ±2 px jitter", 67),
        "scratch": ("student 784-800-800-10 from scratch (no regularisation)", 146),
        "distill": ("student 784-800-800-10 distilled, T = {T:g}", 74),
        "distill_shift": ("student 784-800-800-10 distilled, T = {T:g}, jittered transfer set", None)}
STUDENTS = ["scratch", "distill", "distill_shift"]


def _data(args: argparse.Namespace):
    # Raw pixels in [0, 1] as in the paper (so jitter fills the border with background 0).
    return load_dataset("idx", path=args.data, seed=args.seed, val_fraction=args.val_images / 60000, normalize=False)


def _teacher_kwargs(args: argparse.Namespace) -> dict:
    return {"dropout": 0.5, "input_dropout": args.input_dropout}


def _load_teacher(data, teacher_file: str, args: argparse.Namespace) -> torch.nn.Module:
    """The saved teacher, in eval mode."""
    teacher = create_model("mlp_1200x2", num_classes=10, in_shape=tuple(data.spec.shape), **_teacher_kwargs(args))
    teacher.load_state_dict(load_file(teacher_file))
    return teacher.eval()


def _student_config(args: argparse.Namespace, shift: int) -> TrainConfig:
    return TrainConfig(epochs=args.student_epochs, shift=shift, lr=args.student_lr, batch_size=args.student_batch,
                       warmup_epochs=args.student_warmup, grad_clip=args.student_clip, **SGD)


def run_part(part: str, seed: int, args: argparse.Namespace, teacher_file: str) -> tuple[str, Outcome, int]:
    """Train one row of the table (a student with initialisation seed ``seed``) in this process; the teacher part
    saves its weights to ``teacher_file``."""
    torch.set_num_threads(args.threads)
    data = _data(args)
    console = Console()
    if part == "teacher":
        model, out = train("mlp_1200x2", _teacher_kwargs(args), data,
                           TrainConfig(epochs=args.teacher_epochs, shift=2, max_norm=args.max_norm, lr=0.05,
                                       batch_size=128, **SGD),
                           [{"name": "ce"}], seed=seed, console=console, keep="last")
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, teacher_file)
    elif part == "scratch":
        model, out = train("mlp_800x2", {}, data, _student_config(args, 0), [{"name": "ce"}], seed=seed,
                           console=console)
    else:
        teacher = _load_teacher(data, teacher_file, args)
        shift = 2 if part == "distill_shift" else 0
        with tempfile.TemporaryDirectory() as tmp:
            # Unshifted images: the teacher's logits are computed once and served from a cache every later epoch.
            source = teacher if shift else TeacherCache(teacher, tmp, preprocessing="raw pixels in [0, 1]")
            model, out = train("mlp_800x2", {}, data, _student_config(args, shift),
                               [{"name": "kd", "temperature": args.temperature, "alpha": args.alpha}],
                               seed=seed, teacher=source, console=console)
    console.print(f"{part} (seed {seed}): {round((1 - out.last) * len(data.test))} errors (last epoch)")
    return part, out, count_params(model)


def _errors(accuracies: list[float], n_test: int = 10_000) -> str:
    """Test errors of one run, or of each seed's run with their mean ± standard deviation."""
    errors = [round((1 - a) * n_test) for a in accuracies]
    if len(errors) == 1:
        return str(errors[0])
    return f"{', '.join(map(str, errors))} (mean {statistics.mean(errors):.1f} ± {statistics.stdev(errors):.1f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--teacher-epochs", type=int, default=60)
    ap.add_argument("--student-epochs", type=int, default=60)
    ap.add_argument("--temperature", type=float, default=20.0)
    ap.add_argument("--alpha", type=float, default=0.9, help="weight of the soft-target term (hard labels: 1 - alpha)")
    ap.add_argument("--student-lr", type=float, default=0.05, help="students' peak learning rate (cosine schedule)")
    ap.add_argument("--student-batch", type=int, default=128, help="students' mini-batch size")
    ap.add_argument("--student-warmup", type=int, default=0, help="students' epochs of linear learning-rate warm-up")
    ap.add_argument("--student-clip", type=float, default=None, help="students' gradient-norm clip")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--student-seeds", type=int, nargs="+", default=None,
                    help="seeds of the students' initialisation and batch order, one run per seed and row (default: "
                         "--seed, which also seeds the teacher); the table lists each seed's errors and their mean")
    ap.add_argument("--workers", type=int, default=1, help="processes training rows side by side (1 or 2)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    ap.add_argument("--val-images", type=int, default=0,
                    help="training images held out for validation (0: train on all 60 000, as the paper)")
    ap.add_argument("--data", default=str(DATA), help="folder of the MNIST IDX files")
    ap.add_argument("--input-dropout", type=float, default=0.0,
                    help="teacher's dropout on the input pixels (Hinton et al. 2012, the paper's [5]: 0.2)")
    ap.add_argument("--max-norm", type=float, default=None,
                    help="teacher's max-norm radius of each unit's incoming weights ([5]; Srivastava et al. 2014: 3-4)")
    ap.add_argument("--teacher-dir", default=str(Path(__file__).with_name("results") / ".hinton_teachers"))
    ap.add_argument("--out", default=str(Path(__file__).with_name("results") / "hinton_mnist.md"))
    ap.add_argument("--rows", nargs="+", choices=STUDENTS, default=STUDENTS,
                    help="student rows to train (the teacher is trained, or loaded when saved, either way)")
    args = ap.parse_args()
    if not 0 <= args.val_images < 60_000:
        ap.error(f"--val-images must be in 0..59999, got {args.val_images}")
    regular = (f"_in{args.input_dropout:g}" if args.input_dropout else "") + (f"_mn{args.max_norm:g}" if args.max_norm else "")
    teacher_file = (Path(args.teacher_dir) / f"mlp_1200x2_seed{args.seed}_e{args.teacher_epochs}_val{args.val_images}"
                    f"{regular}_last.safetensors")
    teacher_file.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    wanted = [r for r in STUDENTS if r in args.rows]
    taught = [r for r in wanted if r != "scratch"]
    seeds = args.student_seeds or [args.seed]

    def jobs(parts: list[str]) -> list[tuple[str, int]]:
        return [(part, seed) for part in parts for seed in seeds]

    phases = ([jobs(wanted)] if teacher_file.is_file()
              else [jobs(["scratch"]) + [("teacher", args.seed)] if "scratch" in wanted else [("teacher", args.seed)],
                    jobs(taught)])
    phases = [phase for phase in phases if phase]
    results: dict[str, list[tuple[Outcome, int]]] = {}
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        for phase in phases:
            parts, part_seeds = zip(*phase)
            for part, out, params in pool.map(run_part, parts, part_seeds, [args] * len(phase),
                                              [str(teacher_file)] * len(phase)):
                results.setdefault(part, []).append((out, params))
    if "teacher" not in results:  # a saved teacher: measure it again (its best epoch and time are not known here)
        data = _data(args)
        teacher = _load_teacher(data, str(teacher_file), args)
        acc = test_accuracy(teacher, data)
        results["teacher"] = [(Outcome(float("nan"), acc, float("nan"), 0), count_params(teacher))]
    n_test, validated = 10_000, args.val_images > 0
    rows = []
    for part, (name, paper) in ROWS.items():
        if part not in results:
            continue
        outs, params = [out for out, _ in results[part]], results[part][0][1]
        best = "–" if outs[0].best != outs[0].best else _errors([out.best for out in outs], n_test)
        secs = statistics.mean(out.seconds_per_epoch for out in outs)
        secs = "–" if secs != secs else f"{secs:.1f}"
        reg = (f", input dropout {args.input_dropout:g}" if args.input_dropout else "") + \
              (f", max-norm {args.max_norm:g}" if args.max_norm else "")
        rows.append([name.format(T=args.temperature, reg=reg), f"{params:,}", str(paper) if paper else "–",
                     _errors([out.last for out in outs], n_test)] + ([best] if validated else []) + [secs])
    split = (f"{60_000 - args.val_images:,} training / {args.val_images:,} validation images from the official "
             "training set" if validated else "all 60 000 official training images (no validation split)")
    text = write_table(
        Path(args.out), "Hinton et al. 2015, MNIST: test errors out of 10 000",
        ["model", "params", "paper errors", "errors (last epoch)"]
        + (["errors (best-val checkpoint)"] if validated else []) + ["s / epoch"], rows,
        [f"Seed {args.seed}" + (f" (students: seeds {', '.join(map(str, seeds))})" if args.student_seeds else "")
         + f"; teacher {args.teacher_epochs} epochs, students {args.student_epochs} epochs; SGD "
         f"(momentum 0.9, Nesterov) with a cosine schedule, lr 0.05 and batch 128 for the teacher, lr "
         f"{args.student_lr:g} and batch {args.student_batch} for the students"
         + (f" ({args.student_warmup} warm-up epochs)" if args.student_warmup else "")
         + (f" (gradient norm clipped at {args.student_clip:g})" if args.student_clip else "") + f"; {split}; the official 10 000 test "
         "images.",
         f"Distillation: Hinton KD at T = {args.temperature:g}, soft term weight {args.alpha:g} (× T²), hard labels "
         f"{1 - args.alpha:g}; the "
         "teacher labels in eval mode (no dropout) the images the student sees: unjittered in the paper's row, "
         "shifted by up to ±2 pixels (a new draw each epoch) in the jittered-transfer row.",
         f"{args.workers} process(es) side by side, {args.threads} torch thread(s) each, training on "
         f"{describe_device(resolve_device('auto'))}; total wall time {time.perf_counter() - t0:.0f} s on a machine "
         f"with {os.cpu_count()} CPU cores."])
    Console().print(text)


if __name__ == "__main__":
    main()
