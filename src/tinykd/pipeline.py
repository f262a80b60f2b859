"""Runs the stages of a recipe in order and owns the run directory. The only module that knows the order.

data → teacher (train or load) → student from scratch (baseline) → distilled student → ONNX export →
int8 static quantization → measurement → metrics.json, history.csv → report.html
"""
from __future__ import annotations

import csv
import datetime as dt
import io
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from torch import nn

from . import __version__
from .compress.quantize import calibration_subset, quantize_onnx_static
from .data import load_dataset
from .data.spec import DataBundle
from .deploy.onnx import export_onnx, ort_predict, ort_session
from .distill.losses import build_loss
from .distill.trainer import Trainer
from .errors import RecipeError, TinyKDError
from .inference import predict_logits
from .io import atomic_write, load_state_dict, load_weights, write_json
from .measure import (agreement, classification_metrics, count_macs, count_params, file_bytes, ort_latency,
                      torch_latency)
from .models import create_model
from .recipe import Recipe, load_recipe

CLAIMS = {"accuracy_retention": [0.90, 0.97], "size_reduction_pct": [50, 70], "speedup": [2, 5]}
LABELS = {"teacher": "Teacher (fp32)", "student_scratch": "Student from scratch (fp32)",
          "student": "Distilled student (fp32)", "student_int8": "Distilled student (int8, ORT)"}


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict
    history: list[dict] = field(default_factory=list)
    models: dict[str, nn.Module] = field(default_factory=dict)

    @property
    def report(self) -> Path:
        return self.run_dir / "report.html"


def new_run_dir(recipe: Recipe) -> Path:
    """``<output_dir>/<name>``, or ``<name>-2``, ``-3``... when taken: an existing run is never overwritten."""
    root = Path(recipe.output_dir)
    candidate, n = root / recipe.name, 1
    while candidate.exists():
        n += 1
        candidate = root / f"{recipe.name}-{n}"
    return candidate


def resume_recipe(run_dir: str | Path) -> Recipe:
    """The recipe saved in an earlier run directory, to continue that run."""
    run_dir = Path(run_dir)
    saved = run_dir / "recipe.yaml"
    if not saved.is_file():
        raise RecipeError(f"'{run_dir}' is not a tinykd run directory (no recipe.yaml in it)",
                          "pass the folder printed by the interrupted run, e.g. runs/default")
    recipe = load_recipe(saved)
    base = (run_dir / "base_dir.txt")
    recipe.base_dir = base.read_text().strip() if base.is_file() else None
    return recipe


def run(recipe: Recipe, *, run_dir: str | Path | None = None, resume: bool = False, data: DataBundle | None = None,
        teacher: nn.Module | None = None, student: nn.Module | None = None, console: Console | None = None,
        progress: bool = True) -> RunResult:
    """Run every stage of ``recipe``. Custom ``data``, ``teacher`` or ``student`` modules replace the recipe's."""
    console = console or Console(quiet=not progress)
    if resume:
        if run_dir is None or not Path(run_dir).is_dir():
            raise RecipeError(f"cannot resume: run directory '{run_dir}' does not exist", "pass an existing runs/<name> folder")
        run_dir = Path(run_dir)
    else:
        run_dir = Path(run_dir) if run_dir else new_run_dir(recipe)
        if run_dir.exists() and any(run_dir.iterdir()):
            raise RecipeError(f"run directory '{run_dir}' already exists and is not empty",
                              f"use `tinykd run --resume {run_dir}` to continue it, or choose another name")
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(run_dir / "recipe.yaml", recipe.to_yaml())
        if recipe.base_dir:
            atomic_write(run_dir / "base_dir.txt", recipe.base_dir)
    console.print(f"[bold]tinykd[/] run [cyan]{recipe.name}[/] → {run_dir}")
    t_start = time.perf_counter()
    torch.manual_seed(recipe.seed)

    bundle = data or _load_data(recipe, console)
    spec = bundle.spec
    histories: list[dict] = []

    teacher_model = teacher or _create(recipe.teacher.model, recipe.teacher.kwargs, spec, "teacher", recipe.seed)
    if recipe.teacher.checkpoint:
        path = _resolve(recipe.teacher.checkpoint, recipe.base_dir, "teacher.checkpoint")
        load_weights(teacher_model, load_state_dict(path), source=str(path))
        console.print(f"teacher: loaded weights from {path}")
    else:
        res = Trainer(teacher_model, [(1.0, build_loss("ce", {"label_smoothing": recipe.teacher.train.label_smoothing}))],
                      recipe.teacher.train, out_dir=run_dir / "teacher", label="teacher", seed=recipe.seed,
                      console=console, progress=progress).fit(bundle.train, bundle.val)
        histories += res.history
    teacher_model.eval().requires_grad_(False)

    models: dict[str, nn.Module] = {"teacher": teacher_model}
    if recipe.distill.scratch_baseline:
        scratch = _fresh_student(recipe, spec, student)
        res = Trainer(scratch, [(1.0, build_loss("ce", {"label_smoothing": recipe.student.train.label_smoothing}))],
                      recipe.student.train, out_dir=run_dir / "student_scratch", label="student_scratch",
                      seed=recipe.seed, console=console, progress=progress).fit(bundle.train, bundle.val)
        histories += res.history
        models["student_scratch"] = scratch

    distilled = _fresh_student(recipe, spec, student)
    terms = [(l.weight, build_loss(l.name, l.params(), where=f"distill.losses[{i}]"))
             for i, l in enumerate(recipe.distill.losses)]
    transfer = _transfer_inputs(recipe, bundle, console) if recipe.distill.transfer else None
    res = Trainer(distilled, terms, recipe.student.train, out_dir=run_dir / "student", label="student",
                  seed=recipe.seed, teacher=teacher_model, console=console, progress=progress,
                  transfer=transfer, mixup=recipe.distill.mixup).fit(bundle.train, bundle.val)
    histories += res.history
    models["student"] = distilled
    helper_params = sum(count_params(t) for _, t in terms)

    artifacts = _export(recipe, models, bundle, run_dir, console)
    metrics = _measure(recipe, models, artifacts, bundle, run_dir, console)
    metrics["run"].update({"helper_params": helper_params, "seconds": round(time.perf_counter() - t_start, 1)})
    write_json(run_dir / "metrics.json", metrics)
    _write_history(run_dir / "history.csv", histories)
    if recipe.report.enabled:
        from .report import write_report
        with console.status("writing report"):
            write_report(run_dir, metrics, histories, recipe.to_yaml())
    return RunResult(run_dir, metrics, histories, models)


def _load_data(recipe: Recipe, console: Console) -> DataBundle:
    d = recipe.data
    with console.status(f"loading dataset {d.name}"):
        bundle = load_dataset(d.name, path=d.path, seed=recipe.seed, val_fraction=d.val_fraction,
                              test_fraction=d.test_fraction, normalize=d.normalize, limit=d.limit,
                              base_dir=recipe.base_dir, **d.options)
    console.print(f"data: {bundle.name} {tuple(bundle.spec.shape)} × {bundle.spec.num_classes} classes — "
                  f"train {len(bundle.train)}, val {len(bundle.val)}, test {len(bundle.test)}")
    return bundle


def _transfer_inputs(recipe: Recipe, bundle: DataBundle, console: Console) -> torch.Tensor:
    """Inputs of the unlabelled transfer set, standardised like the labelled training set."""
    t = recipe.distill.transfer
    with console.status(f"loading transfer set {t.name}"):
        extra = load_dataset(t.name, path=t.path, seed=recipe.seed, normalize=False, limit=t.limit,
                             base_dir=recipe.base_dir, **t.options)
    if tuple(extra.spec.shape) != tuple(bundle.spec.shape):
        raise RecipeError(f"distill.transfer: inputs shaped {tuple(extra.spec.shape)} do not match the training data's "
                          f"{tuple(bundle.spec.shape)}", "use a transfer set with the same input shape and front end")
    x = torch.cat([getattr(extra, s).x for s in t.splits])
    norm = bundle.info.get("normalize")
    if norm:
        x = (x - norm["mean"]) / norm["std"]
    console.print(f"transfer set: {len(x)} unlabelled inputs from {extra.name} (labels dropped, teacher-labelled)")
    return x


def _create(name: str, kwargs: dict, spec, role: str, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    try:
        return create_model(name, num_classes=spec.num_classes, in_shape=tuple(spec.shape), **kwargs)
    except TinyKDError as err:
        raise type(err)(err.what, err.fix, where=f"{role}.model") from None


def _fresh_student(recipe: Recipe, spec, given: nn.Module | None) -> nn.Module:
    """A newly initialised student: from the recipe, or a deep copy of a user module's initial weights."""
    if given is not None:
        import copy
        return copy.deepcopy(given)
    return _create(recipe.student.model, recipe.student.kwargs, spec, "student", recipe.seed + 1)


def _resolve(path: str, base_dir: str | None, field_name: str) -> Path:
    p = Path(path)
    tried = [p] if p.is_absolute() else [Path.cwd() / p] + ([Path(base_dir) / p] if base_dir else [])
    for c in tried:
        if c.is_file():
            return c
    raise RecipeError(f"{field_name}: file '{path}' not found (tried {', '.join(str(t) for t in tried)})",
                      "give a path relative to the current folder or to the recipe file, or an absolute path")


def _export(recipe: Recipe, models: dict, bundle: DataBundle, run_dir: Path, console: Console) -> dict[str, Path]:
    shape = tuple(bundle.spec.shape)
    art = run_dir / "artifacts"
    out: dict[str, Path] = {}
    with console.status("exporting to ONNX") as status:
        for name, model in models.items():
            status.update(f"exporting {name} to ONNX")
            out[name] = export_onnx(model, shape, art / f"{name}.onnx", opset=recipe.export.opset)
        if recipe.quantize.enabled:
            status.update("int8 static quantization (ONNX Runtime, QDQ)")
            q = recipe.quantize
            calib = calibration_subset(bundle.train.x, bundle.train.y, q.calibration_samples, recipe.seed)
            out["student_int8"] = quantize_onnx_static(out["student"], art / "student.int8.onnx", calib,
                                                       per_channel=q.per_channel, activation_type=q.activation_type,
                                                       calibrate_method=q.calibrate_method)
    console.print(f"artifacts: {', '.join(p.name for p in out.values())}")
    return out


def _measure(recipe: Recipe, models: dict, artifacts: dict, bundle: DataBundle, run_dir: Path, console: Console) -> dict:
    m, spec, test = recipe.measure, bundle.spec, bundle.test
    shape = tuple(spec.shape)
    y = test.y.numpy()
    preds: dict[str, np.ndarray] = {}
    variants: dict[str, dict] = {}
    with console.status("measuring accuracy, size, MACs and latency") as status:
        for name, model in models.items():
            status.update(f"measuring {name}")
            preds[name] = predict_logits(model, test.x).argmax(1).numpy()
            lat = {"pytorch": torch_latency(model, shape, m.batch_sizes, threads=m.threads, warmup=m.warmup, repeats=m.repeats)}
            sess = ort_session(artifacts[name], threads=m.threads)
            lat["ort_fp32"] = ort_latency(sess, shape, m.batch_sizes, warmup=m.warmup, repeats=m.repeats)
            ort_pred = ort_predict(sess, test.x).argmax(1)
            variants[name] = _variant(name, preds[name], y, spec, lat, "pytorch", model_name=_model_name(recipe, name, model),
                                      params=count_params(model), macs=count_macs(model, shape), artifact=artifacts[name],
                                      run_dir=run_dir, extra={"onnx_agreement": agreement(ort_pred, preds[name])})
        if "student_int8" in artifacts:
            status.update("measuring student_int8")
            sess = ort_session(artifacts["student_int8"], threads=m.threads)
            preds["student_int8"] = ort_predict(sess, test.x).argmax(1)
            lat = {"ort_int8": ort_latency(sess, shape, m.batch_sizes, warmup=m.warmup, repeats=m.repeats)}
            variants["student_int8"] = _variant(
                "student_int8", preds["student_int8"], y, spec, lat, "ort_int8", model_name=variants["student"]["model"],
                params=variants["student"]["params"], macs=variants["student"]["macs"], artifact=artifacts["student_int8"],
                run_dir=run_dir, extra={"agreement_with_fp32_student": agreement(preds["student_int8"], preds["student"])})
    for name, v in variants.items():
        v["agreement_with_teacher"] = agreement(preds[name], preds["teacher"])
    final = "student_int8" if "student_int8" in variants else "student"
    return {
        "run": _run_facts(recipe, bundle, run_dir),
        "variants": variants,
        "ratios": _ratios(variants["teacher"], variants[final]) | {"compared": f"{final} vs teacher"},
        "claims": CLAIMS,
    }


def _variant(name: str, pred, y, spec, latency: dict, runtime: str, *, model_name: str, params: int, macs: int,
             artifact: Path, run_dir: Path, extra: dict) -> dict:
    acc = classification_metrics(y, pred, spec.num_classes)
    primary = latency[runtime]
    v = {"label": LABELS.get(name, name), "model": model_name, "runtime": runtime,
         "accuracy": acc["accuracy"], "macro_f1": acc["macro_f1"], "params": params,
         "file_bytes": file_bytes(artifact), "artifact": str(artifact.relative_to(run_dir)), "macs": macs,
         "latency_ms_b1": primary["b1"]["median_ms"], "latency_ms_b1_p90": primary["b1"]["p90_ms"]}
    for key, val in primary.items():
        if key != "b1":
            v[f"latency_ms_{key}"] = val["median_ms"]
    v.update({"latency": latency, "per_class_accuracy": acc["per_class_accuracy"], "confusion": acc["confusion"]})
    v.update(extra)
    return v


def _model_name(recipe: Recipe, name: str, model: nn.Module) -> str:
    cfg = recipe.teacher if name == "teacher" else recipe.student
    return cfg.model if type(model).__module__.startswith("tinykd") else type(model).__name__


def _ratios(teacher: dict, final: dict) -> dict:
    def ratio(a, b):
        return float(a) / float(b) if a and b else None
    return {"size_reduction": ratio(teacher["file_bytes"], final["file_bytes"]),
            "macs_reduction": ratio(teacher["macs"], final["macs"]),
            "speedup_b1": ratio(teacher["latency_ms_b1"], final["latency_ms_b1"]),
            "accuracy_retention": ratio(final["accuracy"], teacher["accuracy"])}


def _run_facts(recipe: Recipe, bundle: DataBundle, run_dir: Path) -> dict:
    return {"name": recipe.name, "run_dir": str(run_dir), "dataset": bundle.name, "seed": recipe.seed,
            "created": dt.datetime.now().isoformat(timespec="seconds"), "tinykd": __version__,
            "spec": bundle.spec.to_dict(), "data_info": bundle.info,
            "split_sizes": {"train": len(bundle.train), "val": len(bundle.val), "test": len(bundle.test)},
            "machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version(),
                        "torch": torch.__version__, "threads": recipe.measure.threads, "system": platform.system()}}


def _write_history(path: Path, rows: list[dict]) -> None:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(path, buf.getvalue())
