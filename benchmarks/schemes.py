"""Training schemes on MNIST-1D and MNIST: online (DML, peer ensemble), multi-teacher ensembles, a teacher-assistant
chain, self-distillation (BYOT, PS-KD), the teacher-output cache's epoch time, and data-free DAFL / DeepInversion.

Every row is a mean ± std over seeds of the test accuracy at the best validation epoch and at the last epoch.

    python benchmarks/schemes.py [--seeds 0 1 2] [--only dml multi ta self cache datafree] [--quick]
                                 [--budget dafl_epochs=60 ...]

``--quick`` is a smoke run (tiny budgets, one seed, written to results/schemes_quick.md); it checks that every
scheme runs, not how well.

Every run goes through the public stages (``tinykd.stages``: train_teacher, train_scratch, distill with the
recipe's scheme), as a recipe would run it: online peers, the assistant and DeepInversion take the scheme's own
initialisation and settings (peer k seeded seed + 200 + k, the assistant seed + 101, inversion batches of up to 256
with invert_batch's default priors), where results/schemes.md was made when this script wired them by hand.
"""
from __future__ import annotations

import argparse
import math
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from rich.console import Console
from torch import nn

from common import mean_std
from tinykd.data import load_dataset
from tinykd.data.spec import DataBundle, Split
from tinykd.inference import predict_logits
from tinykd.models import count_params, create_model
from tinykd.recipe import Recipe, TrainConfig, load_recipe
from tinykd.stages import distill, train_scratch, train_teacher, trained_weights

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


# ----- one training run, through the public stages ----------------------------------------------
@dataclass
class Run:
    """A trained model with its best-validation and last-epoch weights (of ``holder``: the model, or the group of
    peers it trained in)."""

    model: nn.Module
    best: dict
    last: dict
    history: list = field(repr=False)
    holder: nn.Module | None = None
    folder: Path | None = None  # its checkpoints

    @property
    def seconds_per_epoch(self) -> float:
        return statistics.mean(r["seconds"] for r in self.history)

    def accuracy(self, split: Split, which: str = "best") -> float:
        """Top-1 on ``split`` with the ``which`` weights (the model keeps its best weights)."""
        holder = self.holder or self.model
        holder.load_state_dict(getattr(self, which))
        try:
            return (predict_logits(self.model, split.x).argmax(1) == split.y).float().mean().item()
        finally:
            holder.load_state_dict(self.best)


class Stages:
    """Runs the stages (``tinykd.stages``) of one experiment, each in its own folder under a temporary root."""

    def __init__(self, root: Path):
        self.root, self.count = Path(root), 0

    def folder(self) -> Path:
        self.count += 1
        return self.root / f"run{self.count}"

    @staticmethod
    def recipe(student: tuple[str, dict], cfg: TrainConfig, seed: int, *, losses: list[dict] | None = None,
               teacher: tuple[str, dict] | None = None, **distill_section) -> Recipe:
        """A recipe of ``student`` (and ``teacher``) trained with ``cfg``; ``distill_section``: scheme, peers, ..."""
        model = lambda spec: {"model": spec[0], "kwargs": spec[1], "train": cfg.model_dump()}  # noqa: E731
        return load_recipe({"seed": seed, "student": model(student), **({"teacher": model(teacher)} if teacher else {}),
                            "distill": {"losses": losses or KD, "scratch_baseline": False, **distill_section}})

    def teacher(self, spec: tuple[str, dict], cfg: TrainConfig, data: DataBundle, seed: int, init_seed: int) -> Run:
        """``train_teacher``: the teacher ``spec`` (initialised with ``init_seed``) on the labels."""
        t = train_teacher(self.recipe(spec, cfg, seed, teacher=spec), data, self.folder(),
                          teacher=build(*spec, data, init_seed), progress=False)
        return Run(t.teacher, _copy(t.teacher), trained_weights(t.folder, "last"), t.history, folder=t.folder)

    def scratch(self, spec: tuple[str, dict], cfg: TrainConfig, data: DataBundle, seed: int) -> Run:
        """``train_scratch``: the student ``spec`` on the labels."""
        s = train_scratch(self.recipe(spec, cfg, seed), data, self.folder(), student=build(*spec, data, seed),
                          progress=False)
        return Run(s.student, _copy(s.student), trained_weights(s.folder, "last"), s.history, folder=s.folder)

    def distill(self, recipe: Recipe, data: DataBundle, teacher: nn.Module | None, init_seed: int) -> tuple[Run, object]:
        """``distill``: the recipe's student (initialised with ``init_seed``) taught by its scheme; the Run and the
        DistillResult (its extra models, folders and facts)."""
        d = distill(recipe, data, self.folder(), teacher, student=build(recipe.student.model, recipe.student.kwargs,
                                                                         data, init_seed), progress=False)
        return Run(d.student, _copy(d.trained), trained_weights(d.folders["student"], "last"), d.result.history,
                   d.trained, d.folders["student"]), d


def _copy(model: nn.Module) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


def build(name: str, kwargs: dict, data: DataBundle, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return create_model(name, num_classes=data.spec.num_classes, in_shape=tuple(data.spec.shape), **kwargs)


def kd(temperature: float = 4.0, alpha: float = 0.9) -> list[dict]:
    return [{"name": "kd", "temperature": temperature, "alpha": alpha}]


KD = kd()


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

    def add_run(self, experiment: str, method: str, run: Run, split: Split) -> None:
        self.add(experiment, method, run.accuracy(split, "best"), run.accuracy(split, "last"),
                 run.seconds_per_epoch, count_params(run.model))

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
def online(table: Table, st: Stages, data: DataBundle, cfg: TrainConfig, seed: int) -> None:
    """Deep mutual learning of two different peers vs each trained alone; a 3-peer on-the-fly ensemble
    (scheme online: the student is peer 0, ``distill.peers`` the others)."""
    peers = {"cnn1d": ("cnn1d", {"widths": [16, 16, 16]}), "mlp": ("mlp", {"hidden": [128]})}
    for name, spec in peers.items():
        table.add_run("DML (MNIST-1D)", f"{name} alone", st.scratch(spec, cfg, data, seed), data.test)

    def group(student: tuple[str, dict], others: list[tuple[str, dict]], term: dict) -> Run:
        recipe = st.recipe(student, cfg, seed, losses=[term], scheme="online",
                           peers=[{"model": m, "kwargs": kw, "train": cfg.model_dump()} for m, kw in others])
        return st.distill(recipe, data, None, seed)[0]

    for a, b in (["cnn1d", "mlp"], ["mlp", "cnn1d"]):  # peer 0 picks the best epoch: train each one as peer 0
        table.add_run("DML (MNIST-1D)", f"{a} in DML with {b}",
                      group(peers[a], [peers[b]], {"name": "dml", "peers": 2}), data.test)
    # the paper's setting: two alike (no peers listed: a copy of the student, initialised differently)
    table.add_run("DML (MNIST-1D)", "cnn1d in DML with another cnn1d",
                  group(peers["cnn1d"], [], {"name": "dml", "peers": 2}), data.test)
    table.add_run("DML (MNIST-1D)", "cnn1d in a 3-peer on-the-fly ensemble (ONE/KDCL)",
                  group(peers["cnn1d"], [peers["cnn1d"]] * 2, {"name": "peer_ensemble", "peers": 3}), data.test)


def multi_teacher(table: Table, st: Stages, data: DataBundle, cfg: TrainConfig, teacher_cfg: TrainConfig,
                  seed: int) -> None:
    """Three heterogeneous teachers: KD from their ensemble (scheme multi_teacher, the other two teachers loaded
    from their checkpoints) vs from the best single teacher (by val accuracy)."""
    specs = {"cnn1d 64×3": ("cnn1d", {"widths": [64, 64, 64]}), "cnn1d k9 pooled": ("cnn1d", {"widths": [32, 32],
             "kernel_size": 9, "stride": 1, "pool": 2}), "mlp 512-256": ("mlp", {"hidden": [512, 256]})}
    teachers, val_acc, saved = [], [], []
    for i, (name, spec) in enumerate(specs.items()):
        run = st.teacher(spec, teacher_cfg, data, seed, seed + 10 * i)
        table.add_run("multi-teacher (MNIST-1D)", f"teacher: {name}", run, data.test)
        teachers.append(run.model)
        val_acc.append(run.accuracy(data.val))
        saved.append({"model": spec[0], "kwargs": spec[1], "checkpoint": str(run.folder / "best.safetensors")})
    student = ("cnn1d", {"widths": [8, 8, 8]})
    table.add_run("multi-teacher (MNIST-1D)", "student cnn1d 8×3 from labels", st.scratch(student, cfg, data, seed),
                  data.test)
    best = max(range(3), key=lambda i: val_acc[i])
    table.add_run("multi-teacher (MNIST-1D)", "student + KD from the best single teacher",
                  st.distill(st.recipe(student, cfg, seed), data, teachers[best], seed)[0], data.test)
    for weights in ("mean", "label"):
        recipe = st.recipe(student, cfg, seed, scheme="multi_teacher", teachers=saved[1:], teacher_weights=weights)
        table.add_run("multi-teacher (MNIST-1D)", f"student + KD from the 3-teacher ensemble ({weights} weights)",
                      st.distill(recipe, data, teachers[0], seed)[0], data.test)


def assistant(table: Table, st: Stages, data: DataBundle, cfg: TrainConfig, teacher_cfg: TrainConfig,
              seed: int) -> None:
    """ResNet-20 → tiny CNN directly, vs through an assistant of the geometric-mean size (scheme assistant with no
    assistant listed: the student's family at the width nearest √(P_teacher · P_student))."""
    student = ("cnn", {"widths": [4, 8], "hidden": 16})
    name = f"TA chain ({data.name})"
    teacher = st.teacher(("resnet20", {}), teacher_cfg, data, seed, seed)
    table.add(name, "teacher resnet20", teacher.accuracy(data.test), teacher.accuracy(data.test, "last"), None,
              count_params(teacher.model))
    direct, _ = st.distill(st.recipe(student, cfg, seed), data, teacher.model, seed)
    table.add(name, "student cnn [4, 8], direct KD", direct.accuracy(data.test), direct.accuracy(data.test, "last"),
              None, count_params(direct.model))
    via, res = st.distill(st.recipe(student, cfg, seed, scheme="assistant"), data, teacher.model, seed)
    ta = res.models["assistant1"]
    ta_run = Run(ta, _copy(ta), trained_weights(res.folders["assistant1"], "last"), [], folder=res.folders["assistant1"])
    ta_widths = res.recipe.distill.assistants[0].kwargs["widths"]
    table.add(name, f"assistant cnn {ta_widths}", ta_run.accuracy(data.test), ta_run.accuracy(data.test, "last"), None,
              count_params(ta))
    table.add(name, "student cnn [4, 8] via the assistant", via.accuracy(data.test), via.accuracy(data.test, "last"),
              None, count_params(via.model))
    table.add_run(name, "student cnn [4, 8] from labels", st.scratch(student, cfg, data, seed), data.test)


def self_distillation(table: Table, st: Stages, data: DataBundle, cfg: TrainConfig, seed: int) -> None:
    """cnn1d from labels, with BYOT's auxiliary exits (removed after training), with PS-KD (scheme self)."""
    student = ("cnn1d", {"widths": [32, 32, 32]})
    table.add_run("self-distillation (MNIST-1D)", "cnn1d from labels", st.scratch(student, cfg, data, seed), data.test)
    for method, term in (("cnn1d + BYOT (2 exits, removed)",
                          {"name": "byot", "exits": ["features.0", "features.1"], "deepest": "features.2"}),
                         ("cnn1d + PS-KD (α_T = 0.8)", {"name": "pskd", "alpha_T": 0.8})):
        recipe = st.recipe(student, cfg, seed, losses=[term], scheme="self")
        table.add_run("self-distillation (MNIST-1D)", method, st.distill(recipe, data, None, seed)[0], data.test)


def cache_timing(st: Stages, data: DataBundle, cfg: TrainConfig, teacher_cfg: TrainConfig, seed: int) -> list[list[str]]:
    """Seconds per epoch: the student alone; KD with the teacher run live; KD served from the cache (epochs after
    the first, which fills it; and a second run, which finds it full)."""
    teacher = st.teacher(("resnet20", {}), teacher_cfg, data, seed, seed).model
    student = ("cnn", {"widths": [4, 8], "hidden": 16})
    alone = st.scratch(student, cfg, data, seed)
    live, _ = st.distill(st.recipe(student, cfg, seed), data, teacher, seed)
    cached = st.recipe(student, cfg, seed, cache=True, cache_dir=str(st.root / "teacher_cache"))
    first, _ = st.distill(cached, data, teacher, seed)
    second, _ = st.distill(cached, data, teacher, seed)
    base = alone.seconds_per_epoch
    filling = first.history[0]["seconds"]
    served = statistics.mean([r["seconds"] for r in first.history[1:]] + [r["seconds"] for r in second.history])
    rows = [["student alone (ce)", f"{base:.2f}", "1.00"],
            ["KD, teacher run live", f"{live.seconds_per_epoch:.2f}", f"{live.seconds_per_epoch / base:.2f}"],
            ["KD, first epoch (fills the cache)", f"{filling:.2f}", f"{filling / base:.2f}"],
            ["KD, served from the cache", f"{served:.2f}", f"{served / base:.2f}"]]
    return rows


def data_free(table: Table, st: Stages, data: DataBundle, budget: dict, seed: int, grids: Path | None) -> None:
    """LeNet-5 → LeNet-5-half on MNIST: KD on the real data (upper bound), DAFL, DeepInversion (BN teacher), the
    last two as scheme data_free."""
    name = f"data-free ({data.name})"
    student = ("lenet5_half", {})
    t_cfg = TrainConfig(epochs=budget["lenet_epochs"], batch_size=128, lr=2e-3)
    teacher_run = st.teacher(("lenet5", {}), t_cfg, data, seed, seed)
    table.add_run(name, "teacher LeNet-5 (labels)", teacher_run, data.test)
    teacher = teacher_run.model
    table.add_run(name, "LeNet-5-half + KD on the real training set",
                  st.distill(st.recipe(student, t_cfg, seed), data, teacher, seed)[0], data.test)
    # DAFL: the student never sees a training image; the real validation split only picks the best epoch.
    s_cfg = TrainConfig(epochs=budget["dafl_epochs"], batch_size=budget["dafl_batch"], optimizer="adam",
                        lr=budget["dafl_lr_s"], weight_decay=0.0)
    dafl = {"method": "dafl", "steps_per_epoch": budget["dafl_steps"], "batch_size": budget["dafl_batch"],
            "generator_base": budget["dafl_base"], "generator_lr": budget["dafl_lr_g"], "one_hot": 1.0,
            "activation": 0.1, "info_entropy": 5.0 / math.log(10),  # the authors' ie = 5 with log10
            "generator_schedule": budget["dafl_g_schedule"], "jitter": budget["dafl_jitter"],
            "adversarial": budget["dafl_adv"]}
    run, res = st.distill(st.recipe(student, s_cfg, seed, losses=kd(1.0, 1.0), scheme="data_free", data_free=dafl),
                          data, teacher, seed)
    table.add_run(name, "LeNet-5-half, DAFL (data-free)", run, data.test)
    if grids:
        shutil.copyfile(run.folder.parent / res.scheme["samples_figure"], grids.with_name(grids.name + "_dafl_samples.png"))
    if not budget["deepinversion"]:
        return
    # DeepInversion needs BatchNorm statistics: a LeNet-5 with BN after each convolution as the teacher.
    bn_run = st.teacher(("lenet5", {"batch_norm": True}), t_cfg, data, seed, seed)
    table.add_run(name, "teacher LeNet-5 + BN (labels)", bn_run, data.test)
    di_cfg = TrainConfig(epochs=budget["di_epochs"], batch_size=128, lr=2e-3)
    inversion = {"method": "deepinversion", "samples": budget["di_samples"], "iterations": budget["di_iterations"],
                 "inversion_lr": 0.1, "bn_weight": 0.05}
    run, res = st.distill(st.recipe(student, di_cfg, seed, losses=kd(4.0, 0.9), scheme="data_free",
                                    data_free=inversion), data, bn_run.model, seed)
    table.add_run(name, f"LeNet-5-half, DeepInversion ({budget['di_samples']} synthetic)", run, data.test)
    if grids:
        shutil.copyfile(run.folder.parent / res.scheme["samples_figure"],
                        grids.with_name(grids.name + "_deepinversion_samples.png"))


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
        steps = [("dml", lambda st: online(table, st, mnist1d, cfg_1d, seed)),
                 ("multi", lambda st: multi_teacher(table, st, mnist1d, cfg_1d, teacher_1d, seed)),
                 ("ta", lambda st: assistant(table, st, mnist5k, cfg_img, teacher_img, seed)),
                 ("self", lambda st: self_distillation(table, st, mnist1d, cfg_1d, seed)),
                 ("cache", lambda st: cache_rows.append(cache_timing(
                     st, mnist5k, TrainConfig(epochs=budget["cache_epochs"], batch_size=64), teacher_img, seed))),
                 ("datafree", lambda st: data_free(table, st, _mnist(budget), budget, seed,
                                                   grids=out.with_suffix("") if seed == seeds[0] else None))]
        for key, step in steps:
            if key in only:
                t = time.perf_counter()
                with tempfile.TemporaryDirectory() as tmp:
                    step(Stages(Path(tmp)))
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
