"""Every distillation method of tinykd on the same teacher → student pairs, ≥ 3 seeds, next to the student
trained from scratch: mean ± std test accuracy at the best-validation and the last epoch, seconds per epoch,
and the parameters of the term's helper modules (regressors, embeddings, discriminators; never exported).

Setups: MNIST-1D (../shared/data/mnist1d, the frozen 4000/1000 split) with a 1-D CNN teacher → an MLP
student and → a small 1-D CNN student; FSDD (../shared/data/fsdd, the official split, log-mel) with a
DS-CNN teacher → a tiny DS-CNN student.

    python benchmarks/methods.py [--setups mnist1d_mlp mnist1d_cnn fsdd] [--seeds 0 1 2] [--quick]

Protocol: each feature/relation/adversarial term is added to cross-entropy (weight 1) with a weight that
makes its value on the first batch of seed 0 equal to the initial cross-entropy (ln 10), rounded to one
significant figure; response terms use their own hard/soft balance (α). Layers: `pairs: auto` on CNN
students; on the MLP student the last hidden layer is paired with the teacher's flattened features,
and terms that need spatial maps are reported as not applicable. Results are appended to
results/methods.json as they finish, so an interrupted run keeps what it measured.
"""
from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path

import torch
from rich.console import Console

from common import Outcome, mean_std, train, write_table
from tinykd.data import load_dataset
from tinykd.distill.cache import TeacherCache
from tinykd.distill.capture import forward_with_features
from tinykd.distill.losses import build_loss
from tinykd.distill.losses.base import Batch
from tinykd.distill.trainer import Trainer
from tinykd.errors import TinyKDError
from tinykd.models import count_params, create_model
from tinykd.recipe import TrainConfig

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
RESULTS = Path(__file__).with_name("results")

RESPONSE = {
    "kd": [{"name": "kd", "temperature": 4.0, "alpha": 0.9}],
    "kd + logit standardisation": [{"name": "kd", "temperature": 2.0, "alpha": 0.9, "logit_standardize": True}],
    "kd, temperature schedule (CTKD)": [{"name": "ctkd", "alpha": 0.9}],
    "reverse kd": [{"name": "reverse_kd", "weight": 0.9}, {"name": "ce", "weight": 0.1}],
    "jsd (β = 0.5)": [{"name": "jsd", "weight": 0.9}, {"name": "ce", "weight": 0.1}],
    "logit mse": [{"name": "logit_mse", "weight": 0.9}, {"name": "ce", "weight": 0.1}],
    "dkd": [{"name": "dkd", "warmup_epochs": 5}, {"name": "ce"}],
    "dist": [{"name": "dist"}, {"name": "ce"}],
    "mlkd": [{"name": "mlkd"}, {"name": "ce"}],
}
FEATURE = ["fitnet", "at", "nst", "fsp", "gram", "ickd", "vid", "ab", "catkd", "ft", "reviewkd", "hidden_mse",
           "hidden_cosine"]
RELATION = ["rkd", "sp", "pkt", "cc", "crd"]
OTHER = ["adversarial"]
POOLED = ("rkd", "pkt", "cc", "crd")  # embedding terms: on large maps, the pooled embedding (pool: true)


def setups(quick: bool) -> dict[str, dict]:
    e = 3 if quick else None
    mnist1d = dict(data=("npz", {"path": str(SHARED / "mnist1d" / "mnist1d_data.npz"), "modality": "signal"}),
                   teacher=("cnn1d", {"widths": [64, 64, 64]}),
                   train=dict(batch_size=64, lr=3e-3, weight_decay=5e-4), epochs=e or 20, teacher_epochs=e or 30)
    return {
        "mnist1d_mlp": dict(mnist1d, student=("mlp", {"hidden": [256, 128]}),
                            pairs=[["layers.1", "head.flatten"]]),
        "mnist1d_cnn": dict(mnist1d, student=("cnn1d", {"widths": [16, 16, 16]}), pairs="auto"),
        "fsdd": dict(data=("wav_folder", {"path": str(SHARED / "fsdd" / "recordings"),
                                          "split": "official", "n_mels": 40, "clip_seconds": 1.0}),
                     teacher=("dscnn", {"width": 64, "blocks": 4}), student=("dscnn", {"width": 16, "blocks": 2}),
                     train=dict(batch_size=64, lr=4e-3), epochs=e or 30, teacher_epochs=e or 10, pairs="auto",
                     cache=True, pool=True),
    }


def term_spec(name: str, pairs, pool: bool = False) -> dict:
    if name in ("fitnet", "at", "nst", "gram", "ickd", "vid", "ab", "ft", "reviewkd", "hidden_mse", "hidden_cosine"):
        return {"name": name, "pairs": pairs}
    if name == "catkd":  # one pair: the last feature maps (a listed pair would have to be the deepest one)
        return {"name": name, "pairs": "auto"}
    if name in ("fsp", "rkd", "sp", "pkt", "cc", "crd"):
        return {"name": name, "pairs": "auto", **({"nce_k": 256} if name == "crd" else {}),
                **({"pool": True} if pool and name in POOLED else {})}
    return {"name": name}


def initial_value(spec: dict, student_name, student_kw, teacher, data, seed: int) -> float:
    """The term's value on the first batch of a freshly initialised student (for weight balancing)."""
    torch.manual_seed(seed)
    student = create_model(student_name, num_classes=data.spec.num_classes, in_shape=tuple(data.spec.shape), **student_kw)
    term = build_loss(spec["name"], {k: v for k, v in spec.items() if k not in ("name", "weight")})
    with tempfile.TemporaryDirectory() as tmp:
        Trainer(student, [(1.0, term)], TrainConfig(epochs=1), out_dir=Path(tmp), label="probe", seed=seed,
                teacher=teacher, console=Console(quiet=True), progress=False)._setup_terms(data.train)
    idx = torch.arange(min(64, len(data.train)))
    batch = Batch(data.train.x[idx], data.train.y[idx], idx)
    student.train()
    with torch.no_grad():
        s = forward_with_features(student, batch.x, term.student_paths, role="student")
        t = forward_with_features(teacher, batch.x, term.teacher_paths, role="teacher")
        return float(term(s, t, batch))


def one_sig(x: float) -> float:
    return float(f"{x:.0e}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--setups", nargs="+", default=["mnist1d_mlp", "mnist1d_cnn", "fsdd"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=None, help="subset of method names (default: all)")
    ap.add_argument("--quick", action="store_true", help="3 epochs, for a smoke run")
    ap.add_argument("--tables-only", action="store_true", help="rewrite the tables from the stored results")
    args = ap.parse_args()
    console = Console()
    RESULTS.mkdir(exist_ok=True)
    store = RESULTS / ("methods.quick.json" if args.quick else "methods.json")
    done = json.loads(store.read_text()) if store.is_file() else {}
    all_setups = setups(args.quick)
    if args.tables_only:
        for setup_name in args.setups:
            if setup_name in done:
                s = all_setups[setup_name]
                write_markdown(done, setup_name, s, load_dataset(s["data"][0], seed=0, **s["data"][1]), args)
        return
    for setup_name in args.setups:
        s = all_setups[setup_name]
        ds_name, ds_opts = s["data"]
        data = load_dataset(ds_name, seed=0, **ds_opts)
        cfg = TrainConfig(epochs=s["epochs"], **s["train"])
        tcfg = TrainConfig(epochs=s["teacher_epochs"], **s["train"])
        weights: dict[str, float] = {}
        for seed in args.seeds:
            teacher, t_out = train(*s["teacher"], data, tcfg, [{"name": "ce"}], seed=seed)
            record(done, store, setup_name, "teacher", seed, t_out, count_params(teacher), weight=None)
            console.print(f"[bold]{setup_name}[/] seed {seed}: teacher {100 * t_out.best:.2f}%")
            methods: dict[str, list[dict] | None] = {"student from scratch (ce)": [{"name": "ce"}], **RESPONSE}
            for name in FEATURE + RELATION + OTHER:
                spec = term_spec(name, s["pairs"], s.get("pool", False))
                if name not in weights:
                    try:
                        weights[name] = one_sig(math.log(10) / max(initial_value(spec, *s["student"], teacher, data, 0), 1e-12))
                    except TinyKDError as err:
                        weights[name] = float("nan")
                        console.print(f"[yellow]{setup_name}: {name} not applicable: {str(err).splitlines()[0]}[/]")
                methods[name] = None if math.isnan(weights[name]) else [{"name": "ce"}, {**spec, "weight": weights[name]}]
            source = teacher
            if s.get("cache"):  # teacher outputs and features computed once per seed, served from memory-mapped files
                source = TeacherCache(teacher, Path(tempfile.gettempdir()) / "tinykd-methods-cache", name=setup_name)
            for name, losses in methods.items():
                if args.methods and name not in args.methods and name.split(" ")[0] not in args.methods:
                    continue
                if losses is None:
                    record(done, store, setup_name, name, seed, None, 0, weight=None)
                    continue
                if str(seed) in done.get(setup_name, {}).get(name, {}).get("seeds", {}):
                    continue
                needs_teacher = any(l["name"] != "ce" for l in losses)
                _, out = train(*s["student"], data, cfg, losses, seed=seed, teacher=source if needs_teacher else None)
                record(done, store, setup_name, name, seed, out, out.helper_params,
                       weight=next((l.get("weight") for l in losses if l["name"] not in ("ce",)), None))
                console.print(f"{setup_name} seed {seed} {name}: best {100 * out.best:.2f}%  last {100 * out.last:.2f}%  "
                              f"{out.seconds_per_epoch:.2f} s/epoch")
        write_markdown(done, setup_name, s, data, args)


def record(done: dict, store: Path, setup: str, method: str, seed: int, out: Outcome | None, helper: int, weight) -> None:
    entry = done.setdefault(setup, {}).setdefault(method, {"seeds": {}, "helper_params": helper, "weight": weight})
    entry["seeds"][str(seed)] = None if out is None else {"best": out.best, "last": out.last, "s_per_epoch": out.seconds_per_epoch}
    store.write_text(json.dumps(done, indent=1))


def write_markdown(done: dict, setup_name: str, s: dict, data, args) -> None:
    rows = []
    for method, entry in done.get(setup_name, {}).items():
        outs = [v for v in entry["seeds"].values() if v]
        if not outs:
            rows.append([method, "n/a", "n/a", "—", "—", "—", "0"])
            continue
        rows.append([method, mean_std([o["best"] for o in outs]), mean_std([o["last"] for o in outs]),
                     str(len(outs)), f"{sum(o['s_per_epoch'] for o in outs) / len(outs):.2f}",
                     "—" if entry["weight"] is None else f"{entry['weight']:g}",
                     f"— ({entry['helper_params']:,} own)" if method == "teacher" else f"{entry['helper_params']:,}"])
    t_name, t_kw = s["teacher"]
    st_name, st_kw = s["student"]
    suffix = ".quick" if args.quick else ""
    write_table(RESULTS / f"methods_{setup_name}{suffix}.md", f"Methods on {setup_name}",
                ["method", "test acc % (best val)", "test acc % (last)", "seeds", "s / epoch", "term weight", "helper params"],
                rows, [f"Data: {data.name}, train/val/test {len(data.train)}/{len(data.val)}/{len(data.test)}. "
                       f"Teacher {t_name} {t_kw} ({s['teacher_epochs']} epochs); student {st_name} {st_kw} "
                       f"({s['epochs']} epochs); AdamW {s['train']}, cosine schedule."
                       + (" Teacher outputs and features served from the teacher-output cache (computed once per "
                          "seed); s / epoch counts the epochs that filled it." if s.get("cache") else ""),
                       "Feature/relation/adversarial terms: ce + term, the term's weight set so that its first-batch "
                       "value equals ln 10 (seed 0), one significant figure. n/a: the term cannot compare these "
                       "layers (e.g. spatial maps needed but the MLP has none)."
                       + (f" {', '.join(POOLED)} compare spatially averaged maps (pool: true), the pooled "
                          "embeddings their papers use; flattened, cc's embedding alone would have 394M parameters."
                          if s.get("pool") else "")])


if __name__ == "__main__":
    main()
