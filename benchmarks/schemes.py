"""Training schemes on MNIST-1D and MNIST: online (DML, peer ensemble), multi-teacher ensembles, a teacher-assistant
chain, self-distillation (BYOT, PS-KD), the teacher-output cache's epoch time, and data-free DAFL / DeepInversion.

Every row is a mean ± std over seeds of the test accuracy at the best validation epoch and at the last epoch.

    python benchmarks/schemes.py [--seeds 0 1 2] [--only dml multi ta self cache datafree] [--quick]
                                 [--budget dafl_epochs=60 ...]

``--quick`` is a smoke run (tiny budgets, one seed, written to results/schemes_quick.md); it checks that every
scheme runs, not how well.
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from rich.console import Console
from torch import nn

from common import mean_std
from tinykd.data import load_dataset
from tinykd.data.spec import DataBundle, Split
from tinykd.distill.losses import build_loss
from tinykd.distill.schemes import (DAFLBatches, Peers, TeacherCache, TeacherEnsemble, assistant_kwargs,
                                    deep_inversion, distill_chain, save_grid)
from tinykd.distill.trainer import Trainer
from tinykd.inference import predict_logits
from tinykd.io import load_tensors
from tinykd.models import count_params, create_model
from tinykd.recipe import TrainConfig

RESULTS = Path(__file__).with_name("results")
MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"

# Budgets of the full run and of the --quick smoke run.
FULL = dict(seeds=[0, 1, 2], limit=None, epochs_1d=40, teacher_epochs_1d=40, epochs_img=20, teacher_epochs_img=15,
            cache_epochs=3, mnist="idx", lenet_epochs=10, dafl_epochs=20, dafl_steps=100, dafl_batch=128,
            dafl_base=32, dafl_lr_g=0.2, dafl_g_schedule="cosine", dafl_lr_s=2e-3, dafl_jitter=2, dafl_adv=1.0,
            deepinversion=1, di_samples=2000, di_iterations=200, di_epochs=30)
QUICK = dict(seeds=[0], limit=400, epochs_1d=2, teacher_epochs_1d=2, epochs_img=2, teacher_epochs_img=1,
             cache_epochs=2, mnist="mnist5k", lenet_epochs=1, dafl_epochs=2, dafl_steps=4, dafl_batch=32,
             dafl_base=16, dafl_lr_g=0.2, dafl_g_schedule="cosine", dafl_lr_s=2e-3, dafl_jitter=2, dafl_adv=1.0,
             deepinversion=1, di_samples=64, di_iterations=10, di_epochs=2)


# ----- one training run ---------------------------------------------------------------------------
@dataclass
class Run:
    """A trained model with its best-validation and last-epoch weights."""

    model: nn.Module
    best: dict
    last: dict
    history: list = field(repr=False)

    @property
    def seconds_per_epoch(self) -> float:
        return statistics.mean(r["seconds"] for r in self.history)

    def accuracy(self, split: Split, which: str = "best", view: Callable[[nn.Module], nn.Module] = lambda m: m) -> float:
        """Top-1 on ``split`` of ``view(model)`` with the ``which`` weights (the model keeps its best weights)."""
        self.model.load_state_dict(getattr(self, which))
        try:
            return (predict_logits(view(self.model), split.x).argmax(1) == split.y).float().mean().item()
        finally:
            self.model.load_state_dict(self.best)


def last_weights(folder: Path) -> dict:
    return {k[6:]: v for k, v in load_tensors(folder / "last.safetensors").items() if k.startswith("model.")}


def fit(model: nn.Module, terms: list, cfg: TrainConfig, data: DataBundle, *, seed: int, teacher=None,
        batches=None, train: Split | None | str = "data", label: str = "model") -> Run:
    """Train ``model`` with the one Trainer in a temporary folder; keep its best and last weights."""
    with tempfile.TemporaryDirectory() as tmp:
        res = Trainer(model, terms, cfg, out_dir=Path(tmp), label=label, seed=seed, teacher=teacher, batches=batches,
                      progress=False, console=Console(quiet=True)).fit(data.train if train == "data" else train, data.val)
        last = last_weights(Path(tmp))
    model.eval()
    return Run(model, {k: v.clone() for k, v in model.state_dict().items()}, last, res.history)


def build(name: str, kwargs: dict, data: DataBundle, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return create_model(name, num_classes=data.spec.num_classes, in_shape=tuple(data.spec.shape), **kwargs)


def ce() -> list:
    return [(1.0, build_loss("ce", {}))]


def kd(temperature: float = 4.0, alpha: float = 0.9) -> list:
    return [(1.0, build_loss("kd", {"temperature": temperature, "alpha": alpha}))]


class Table:
    """Rows of (experiment, method) → test accuracies over seeds, and extra columns."""

    def __init__(self):
        self.rows: dict[tuple[str, str], dict] = {}

    def add(self, experiment: str, method: str, best: float, last: float, seconds: float | None = None,
            params: int | None = None) -> None:
        row = self.rows.setdefault((experiment, method), {"best": [], "last": [], "seconds": [], "params": params})
        row["best"].append(best)
        row["last"].append(last)
        if seconds is not None:
            row["seconds"].append(seconds)

    def add_run(self, experiment: str, method: str, run: Run, split: Split, view=lambda m: m) -> None:
        self.add(experiment, method, run.accuracy(split, "best", view), run.accuracy(split, "last", view),
                 run.seconds_per_epoch, count_params(view(run.model)))

    def markdown(self) -> list[str]:
        lines = ["| experiment | model / scheme | params | test acc % (best val epoch) | test acc % (last epoch) | "
                 "per seed (best val epoch) | s / epoch |", "|---|---|---|---|---|---|---|"]
        for (experiment, method), r in self.rows.items():
            secs = f"{statistics.mean(r['seconds']):.2f}" if r["seconds"] else "—"
            params = f"{r['params']:,}" if r["params"] else "—"
            seeds = ", ".join(f"{100 * v:.2f}" for v in r["best"])
            lines.append(f"| {experiment} | {method} | {params} | {mean_std(r['best'])} | {mean_std(r['last'])} | "
                         f"{seeds} | {secs} |")
        return lines


# ----- experiments --------------------------------------------------------------------------------
def online(table: Table, data: DataBundle, cfg: TrainConfig, seed: int) -> None:
    """Deep mutual learning of two different peers vs each trained alone; a 3-peer on-the-fly ensemble."""
    peers = {"cnn1d": ("cnn1d", {"widths": [16, 16, 16]}), "mlp": ("mlp", {"hidden": [128]})}
    for name, (model, kwargs) in peers.items():
        table.add_run("DML (MNIST-1D)", f"{name} alone", fit(build(model, kwargs, data, seed), ce(), cfg, data,
                                                                seed=seed), data.test)
    for order in (["cnn1d", "mlp"], ["mlp", "cnn1d"]):  # peer 0 picks the best epoch: train each one as peer 0
        group = Peers([build(*peers[n], data, seed + k) for k, n in enumerate(order)])
        run = fit(group, [(1.0, build_loss("dml", {"peers": 2}))], cfg, data, seed=seed)
        table.add_run("DML (MNIST-1D)", f"{order[0]} in DML with {order[1]}", run, data.test, lambda m: m.peer(0))
    group = Peers([build(*peers["cnn1d"], data, seed + k) for k in range(2)])  # the paper's setting: two alike
    run = fit(group, [(1.0, build_loss("dml", {"peers": 2}))], cfg, data, seed=seed)
    table.add_run("DML (MNIST-1D)", "cnn1d in DML with another cnn1d", run, data.test, lambda m: m.peer(0))
    group = Peers([build(*peers["cnn1d"], data, seed + k) for k in range(3)])
    run = fit(group, [(1.0, build_loss("peer_ensemble", {"peers": 3}))], cfg, data, seed=seed)
    table.add_run("DML (MNIST-1D)", "cnn1d in a 3-peer on-the-fly ensemble (ONE/KDCL)", run, data.test,
                  lambda m: m.peer(0))


def multi_teacher(table: Table, data: DataBundle, cfg: TrainConfig, teacher_cfg: TrainConfig, seed: int) -> None:
    """Three heterogeneous teachers: KD from their ensemble vs from the best single teacher (by val accuracy)."""
    specs = {"cnn1d 64×3": ("cnn1d", {"widths": [64, 64, 64]}), "cnn1d k9 pooled": ("cnn1d", {"widths": [32, 32],
             "kernel_size": 9, "stride": 1, "pool": 2}), "mlp 512-256": ("mlp", {"hidden": [512, 256]})}
    teachers, val_acc = [], []
    for i, (name, spec) in enumerate(specs.items()):
        run = fit(build(*spec, data, seed + 10 * i), ce(), teacher_cfg, data, seed=seed)
        table.add_run("multi-teacher (MNIST-1D)", f"teacher: {name}", run, data.test)
        teachers.append(run.model.eval())
        val_acc.append(run.accuracy(data.val))
    student = ("cnn1d", {"widths": [8, 8, 8]})
    table.add_run("multi-teacher (MNIST-1D)", "student cnn1d 8×3 from labels",
                  fit(build(*student, data, seed), ce(), cfg, data, seed=seed), data.test)
    best = max(range(3), key=lambda i: val_acc[i])
    table.add_run("multi-teacher (MNIST-1D)", "student + KD from the best single teacher",
                  fit(build(*student, data, seed), kd(), cfg, data, seed=seed, teacher=teachers[best]), data.test)
    for weights in ("mean", "label"):
        ens = TeacherEnsemble(teachers, weights=weights, temperature=4.0)
        table.add_run("multi-teacher (MNIST-1D)", f"student + KD from the 3-teacher ensemble ({weights} weights)",
                      fit(build(*student, data, seed), kd(), cfg, data, seed=seed, teacher=ens), data.test)


def assistant(table: Table, data: DataBundle, cfg: TrainConfig, teacher_cfg: TrainConfig, seed: int) -> None:
    """ResNet-20 → tiny CNN directly, vs through an assistant of the geometric-mean size (a wider tiny CNN)."""
    student = ("cnn", {"widths": [4, 8], "hidden": 16})
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        teacher = build("resnet20", {}, data, seed)
        s_params = count_params(build(*student, data, seed))
        (ta_kwargs,) = assistant_kwargs("cnn", student[1], width_arg="widths", num_classes=data.spec.num_classes,
                                        in_shape=tuple(data.spec.shape), teacher_params=count_params(teacher),
                                        student_params=s_params)
        # The teacher's stage is shared by both chains (same folder: the second chain reuses it).
        direct = distill_chain([("teacher", teacher), ("student", build(*student, data, seed))], data.train, data.val,
                               cfg, out_dir=tmp / "chain", first_cfg=teacher_cfg, seed=seed)
        via = distill_chain([("teacher", build("resnet20", {}, data, seed)), ("assistant", build("cnn", ta_kwargs, data, seed)),
                             ("student", build(*student, data, seed))], data.train, data.val, cfg,
                            out_dir=tmp / "chain", first_cfg=teacher_cfg, seed=seed)
        name = f"TA chain ({data.name})"
        for stage, method in ((direct[0], "teacher resnet20"), (direct[1], "student cnn [4, 8], direct KD"),
                              (via[1], f"assistant cnn {ta_kwargs['widths']}"), (via[2], "student cnn [4, 8] via the assistant")):
            run = Run(stage.model, {k: v.clone() for k, v in stage.model.state_dict().items()},
                      last_weights(stage.out_dir), [{"seconds": 0.0}])
            table.add(name, method, run.accuracy(data.test), run.accuracy(data.test, "last"), None, stage.params)
    table.add_run(name, "student cnn [4, 8] from labels", fit(build(*student, data, seed), ce(), cfg, data, seed=seed),
                  data.test)


def self_distillation(table: Table, data: DataBundle, cfg: TrainConfig, seed: int) -> None:
    """cnn1d from labels, with BYOT's auxiliary exits (removed after training), with PS-KD."""
    student = ("cnn1d", {"widths": [32, 32, 32]})
    table.add_run("self-distillation (MNIST-1D)", "cnn1d from labels", fit(build(*student, data, seed), ce(), cfg, data,
                                                                            seed=seed), data.test)
    byot = build_loss("byot", {"exits": ["features.0", "features.1"], "deepest": "features.2"})
    table.add_run("self-distillation (MNIST-1D)", "cnn1d + BYOT (2 exits, removed)",
                  fit(build(*student, data, seed), [(1.0, byot)], cfg, data, seed=seed), data.test)
    table.add_run("self-distillation (MNIST-1D)", "cnn1d + PS-KD (α_T = 0.8)",
                  fit(build(*student, data, seed), [(1.0, build_loss("pskd", {"alpha_T": 0.8}))], cfg, data, seed=seed),
                  data.test)


def cache_timing(data: DataBundle, cfg: TrainConfig, teacher_cfg: TrainConfig, seed: int) -> list[list[str]]:
    """Seconds per epoch: the student alone; KD with the teacher run live; KD served from the cache (epochs after
    the first, which fills it; and a second run, which finds it full)."""
    teacher = fit(build("resnet20", {}, data, seed), ce(), teacher_cfg, data, seed=seed).model.eval()
    student = ("cnn", {"widths": [4, 8], "hidden": 16})
    alone = fit(build(*student, data, seed), ce(), cfg, data, seed=seed)
    live = fit(build(*student, data, seed), kd(), cfg, data, seed=seed, teacher=teacher)
    with tempfile.TemporaryDirectory() as tmp:
        cache = TeacherCache(teacher, tmp)
        first = fit(build(*student, data, seed), kd(), cfg, data, seed=seed, teacher=cache)
        second = fit(build(*student, data, seed), kd(), cfg, data, seed=seed, teacher=TeacherCache(teacher, tmp))
    base = alone.seconds_per_epoch
    filling = first.history[0]["seconds"]
    cached = statistics.mean([r["seconds"] for r in first.history[1:]] + [r["seconds"] for r in second.history])
    rows = [["student alone (ce)", f"{base:.2f}", "1.00"],
            ["KD, teacher run live", f"{live.seconds_per_epoch:.2f}", f"{live.seconds_per_epoch / base:.2f}"],
            ["KD, first epoch (fills the cache)", f"{filling:.2f}", f"{filling / base:.2f}"],
            ["KD, served from the cache", f"{cached:.2f}", f"{cached / base:.2f}"]]
    return rows


def data_free(table: Table, data: DataBundle, budget: dict, seed: int, grids: Path | None) -> None:
    """LeNet-5 → LeNet-5-half on MNIST: KD on the real data (upper bound), DAFL, DeepInversion (BN teacher)."""
    name = f"data-free ({data.name})"
    t_cfg = TrainConfig(epochs=budget["lenet_epochs"], batch_size=128, lr=2e-3)
    teacher_run = fit(build("lenet5", {}, data, seed), ce(), t_cfg, data, seed=seed)
    table.add_run(name, "teacher LeNet-5 (labels)", teacher_run, data.test)
    teacher = teacher_run.model.eval()
    table.add_run(name, "LeNet-5-half + KD on the real training set",
                  fit(build("lenet5_half", {}, data, seed), kd(), t_cfg, data, seed=seed, teacher=teacher), data.test)
    # DAFL: the student never sees a training image; the real validation split only picks the best epoch.
    torch.manual_seed(seed)
    source = DAFLBatches(teacher, tuple(data.spec.shape), steps_per_epoch=budget["dafl_steps"],
                         batch_size=budget["dafl_batch"], base=budget["dafl_base"], lr=budget["dafl_lr_g"], one_hot=1.0,
                         activation=0.1, info_entropy=5.0 / math.log(10),  # the authors' ie = 5 with log10
                         lr_schedule=budget["dafl_g_schedule"], total_steps=budget["dafl_epochs"] * budget["dafl_steps"],
                         jitter=budget["dafl_jitter"], adversarial=budget["dafl_adv"])
    s_cfg = TrainConfig(epochs=budget["dafl_epochs"], batch_size=budget["dafl_batch"], optimizer="adam",
                        lr=budget["dafl_lr_s"], weight_decay=0.0)
    table.add_run(name, "LeNet-5-half, DAFL (data-free)",
                  fit(build("lenet5_half", {}, data, seed), kd(1.0, 1.0), s_cfg, data, seed=seed, teacher=teacher,
                      batches=source, train=None), data.test)
    if grids:
        x = source.sample(32)
        save_grid(x, grids.with_name(grids.name + "_dafl_samples.png"),
                  labels=predict_logits(teacher, x).argmax(1).tolist(), title="DAFL G(z), teacher's class")
    if not budget["deepinversion"]:
        return
    # DeepInversion needs BatchNorm statistics: a LeNet-5 with BN after each convolution as the teacher.
    bn_run = fit(build("lenet5", {"batch_norm": True}, data, seed), ce(), t_cfg, data, seed=seed)
    table.add_run(name, "teacher LeNet-5 + BN (labels)", bn_run, data.test)
    bn_teacher = bn_run.model.eval()
    synth = deep_inversion(bn_teacher, tuple(data.spec.shape), budget["di_samples"], batch_size=250,
                           iterations=budget["di_iterations"], lr=0.1, bn_weight=0.05, tv_l2=1e-4, l2=1e-5, jitter=2,
                           seed=seed)
    di_cfg = TrainConfig(epochs=budget["di_epochs"], batch_size=128, lr=2e-3)
    table.add_run(name, f"LeNet-5-half, DeepInversion ({budget['di_samples']} synthetic)",
                  fit(build("lenet5_half", {}, data, seed), kd(4.0, 0.9), di_cfg, data, seed=seed, teacher=bn_teacher,
                      train=synth), data.test)
    if grids:
        save_grid(synth.x[:32], grids.with_name(grids.name + "_deepinversion_samples.png"), labels=synth.y[:32].tolist(),
                  title="DeepInversion samples, target class")


# ----- main ---------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny budgets, one seed")
    ap.add_argument("--seeds", type=int, nargs="+")
    ap.add_argument("--only", nargs="+", choices=["dml", "multi", "ta", "self", "cache", "datafree"])
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: stable timings on a shared machine)")
    ap.add_argument("--budget", nargs="*", default=[], metavar="KEY=VALUE",
                    help="override a budget entry, e.g. dafl_epochs=60 (keys: those of FULL)")
    ap.add_argument("--out")
    args = ap.parse_args()
    budget = dict(QUICK if args.quick else FULL)
    for item in args.budget:
        key, sep, value = item.partition("=")
        if not sep or key not in budget:
            ap.error(f"--budget {item!r}: expected KEY=VALUE with KEY one of {', '.join(sorted(budget))}")
        budget[key] = type(budget[key])(float(value)) if isinstance(budget[key], (int, float)) else value
    seeds = args.seeds or budget["seeds"]
    only = set(args.only or ["dml", "multi", "ta", "self", "cache", "datafree"])
    out = Path(args.out or RESULTS / ("schemes_quick.md" if args.quick else "schemes.md"))
    torch.set_num_threads(args.threads)
    console = Console()
    t0 = time.perf_counter()
    lim = budget["limit"]
    mnist1d = load_dataset("mnist1d", seed=0, limit=lim)
    mnist5k = load_dataset("mnist5k", seed=0, limit=lim)
    cfg_1d = TrainConfig(epochs=budget["epochs_1d"], batch_size=64, lr=3e-3, weight_decay=5e-4)
    teacher_1d = TrainConfig(epochs=budget["teacher_epochs_1d"], batch_size=64, lr=3e-3, weight_decay=5e-4)
    cfg_img = TrainConfig(epochs=budget["epochs_img"], batch_size=64, lr=2e-3)
    teacher_img = TrainConfig(epochs=budget["teacher_epochs_img"], batch_size=64, lr=2e-3)
    table = Table()
    cache_rows: list[list[list[str]]] = []
    for seed in seeds:
        steps = [("dml", lambda: online(table, mnist1d, cfg_1d, seed)),
                 ("multi", lambda: multi_teacher(table, mnist1d, cfg_1d, teacher_1d, seed)),
                 ("ta", lambda: assistant(table, mnist5k, cfg_img, teacher_img, seed)),
                 ("self", lambda: self_distillation(table, mnist1d, cfg_1d, seed)),
                 ("cache", lambda: cache_rows.append(cache_timing(
                     mnist5k, TrainConfig(epochs=budget["cache_epochs"], batch_size=64), teacher_img, seed))),
                 ("datafree", lambda: data_free(table, _mnist(budget), budget, seed,
                                                           grids=out.with_suffix("") if seed == seeds[0] else None))]
        for key, step in steps:
            if key in only:
                t = time.perf_counter()
                step()
                console.print(f"seed {seed} {key}: {time.perf_counter() - t:.0f} s")
    lines = [f"# Training schemes{' (quick smoke run: not results)' if args.quick else ''}", "",
             f"Command: `python {' '.join(sys.argv)}`", "", *table.markdown(), ""]
    if cache_rows:
        lines += ["## Teacher-output cache: seconds per training epoch (mnist5k, ResNet-20 teacher, cnn [4, 8] student)",
                  "", "| configuration | s / epoch | × student alone |", "|---|---|---|"]
        for i, label in enumerate(r[0] for r in cache_rows[0]):
            secs = [float(rows[i][1]) for rows in cache_rows]
            ratio = [float(rows[i][2]) for rows in cache_rows]
            lines.append(f"| {label} | {statistics.mean(secs):.2f} | {statistics.mean(ratio):.2f} |")
        lines.append("")
    lines += [f"Seeds {seeds}; {time.perf_counter() - t0:.0f} s in all, torch threads {args.threads}.",
              f"MNIST-1D: `load_dataset('mnist1d')` (generated, {_sizes(mnist1d)}); images: bundled mnist5k "
              f"({_sizes(mnist5k)}); data-free: " + ("full MNIST IDX (54000/6000/10000)." if budget["mnist"] == "idx"
                                                      else "mnist5k (quick)."),
              f"Budgets: {budget}.",
              "KD: Hinton, T = 4, α = 0.9 unless stated (DAFL: T = 1, soft term only, as its authors). Online: peer 0 "
              "picks the best epoch for its group, so each architecture is reported from a run where it is peer 0.",
              "The TA chain's assistant is the cnn family at the width whose parameter count is closest to the "
              "geometric mean of teacher and student (assistant_kwargs). Data-free students see no training "
              "sample; the real validation split only selects their best epoch.",
              *(["Cache: 'served from the cache' averages epochs 2+ of the filling run and all epochs of a second "
                 "run."] if "cache" in only else []),
              *([f"Samples: {out.stem}_dafl_samples.png"
                 + (f", {out.stem}_deepinversion_samples.png" if budget["deepinversion"] else "")
                 + " (next to this file)."] if "datafree" in only else [])]
    text = "\n".join(lines) + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    console.print(text)


def _sizes(data: DataBundle) -> str:
    return f"{len(data.train)}/{len(data.val)}/{len(data.test)} train/val/test"


def _mnist(budget: dict) -> DataBundle:
    if budget["mnist"] == "idx":
        return load_dataset("idx", path=str(MNIST), seed=0)
    return load_dataset("mnist5k", seed=0, limit=budget["limit"])


if __name__ == "__main__":
    main()
