"""Runs the stages of a recipe in order and owns the run directory. The only module that knows the order.

data → [microcontroller pre-check] → teacher (train or load) → [prune the teacher] → student from scratch
(baseline) → distilled student → [prune / low-rank / QAT-with-KD students] → ONNX export → int8 static
quantization → [fp16, dynamic int8, TFLite, ExecuTorch, C array] → measurement (accuracy, agreement, size, MACs,
latency, energy, microcontroller fit) → metrics.json, history.csv → report.html. Brackets: optional stages.
"""
from __future__ import annotations

import contextlib
import copy
import csv
import datetime as dt
import io
import itertools
import os
import platform
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from torch import nn

from .version import __version__
from .compress.quantize import (calibration_subset, convert_onnx_fp16, quantize_onnx_dynamic,
                                quantize_onnx_static, quantize_with_parity)
from .data import load_dataset
from .data.spec import DataBundle
from .deploy.onnx import export_onnx, ort_predict, ort_session
from .deploy.preprocess import (attach_metadata, preprocess_spec, raw_inputs, with_preprocessing,
                                write_preprocess_json)
from .distill.losses import build_loss
from .distill.schemes import SchemeContext, get_scheme, schemes
from .distill.trainer import Trainer, describe_device, resolve_device
from .errors import CheckpointError, DataError, RecipeError, StorageError, TinyKDError
from .inference import module_device, predict_logits
from .compress.prune import DEFAULT_LOSSES, finetune, iterative_prune
from .io import (atomic_write, check_finite, load_state_dict, load_weights, read_json, storage_error,
                 write_json)
from .measure import (agreement, classification_metrics, count_macs, count_params, file_bytes,
                      interleaved_latency, ort_timers, torch_timers)
from .models import create_model
from .recipe import PruneConfig, Recipe, TrainConfig, load_recipe
from .threads import available_cores, resolve_threads

CLAIMS = {"accuracy_retention": [0.90, 0.97], "size_reduction_pct": [50, 70], "speedup": [2, 5]}
LABELS = {"teacher": "Teacher (fp32)", "student_scratch": "Student from scratch (fp32)",
          "student": "Distilled student (fp32)", "student_int8": "Distilled student (int8, ORT)",
          "teacher_pruned": "Pruned teacher (fp32)", "student_pruned": "Pruned student (fp32)",
          "student_pruned_int8": "Pruned student (int8, ORT)", "student_lowrank": "Low-rank student (fp32)",
          "student_lowrank_int8": "Low-rank student (int8, ORT)", "student_qat": "QAT-KD student (int8, ORT)",
          "student_fp16": "Distilled student (fp16, ORT)", "student_dynamic_int8": "Distilled student (dynamic int8, ORT)",
          "student_tflite": "Distilled student (fp32, TFLite)", "student_tflite_int8": "Distilled student (int8, TFLite)",
          "student_pte": "Distilled student (fp32, ExecuTorch)"}
PARITY_MIN = 0.99  # an artifact agreeing with its fp32 PyTorch source on fewer test predictions is flagged


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict
    history: list[dict] = field(default_factory=list)
    models: dict[str, nn.Module] = field(default_factory=dict)
    complete: bool = False  # a resumed run that had finished before: stored results, nothing re-run

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


def output_root(recipe: Recipe) -> Path:
    """``output_dir``, created when missing; a RecipeError naming ``output_dir`` when it cannot hold run folders."""
    given = recipe.output_dir
    root = Path(given).expanduser()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise RecipeError(f"'{given}' (or a folder above it) is a file, not a folder",
                          "set output_dir to a folder, e.g. output_dir=runs", where="output_dir") from None
    except OSError as exc:
        raise RecipeError(f"cannot create the folder '{given}' ({exc.strerror or exc})",
                          "set output_dir to a folder you can write, e.g. output_dir=runs", where="output_dir") from None
    if not os.access(root, os.W_OK | os.X_OK):
        raise RecipeError(f"no permission to write in '{given}'",
                          "set output_dir to a folder you can write, or change its permissions", where="output_dir")
    return root


def claim_run_dir(recipe: Recipe) -> Path:
    """A new, empty run folder ``<output_dir>/<name>``, or ``<name>-2``, ``-3``... when taken, claimed atomically:
    ``mkdir`` without ``exist_ok`` succeeds for exactly one of several runs started at once with one name."""
    root = output_root(recipe)
    for n in itertools.count(1):
        candidate = root / (recipe.name if n == 1 else f"{recipe.name}-{n}")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        except OSError as exc:
            raise RecipeError(f"cannot create the run folder '{candidate}' ({exc.strerror or exc})",
                              "set output_dir to a folder you can write", where="output_dir") from None
        return candidate
    raise AssertionError("unreachable")


STATUS = "status.json"  # {"status": "running" | "complete" | "failed" | "interrupted", "error": ..., ...}
# What `tinykd run --resume DIR key=value` may change: settings that steer the stages still to run and change no
# model that exists (see README, Errors). The new values go into the run's recipe.yaml; status.json lists them.
RESUME_KEYS = re.compile(r"(teacher|student|distill\.teachers\.\d+)\.train\.(lr|grad_clip)|measure\.\w+|report\.enabled")


def run_status(run_dir: str | Path) -> dict:
    """What ``status.json`` says of a run folder; a folder from before status.json counts as complete when it has
    metrics.json, as ``unknown`` otherwise."""
    run_dir = Path(run_dir)
    path = run_dir / STATUS
    if path.is_file():
        with contextlib.suppress(TinyKDError):
            status = read_json(path)
            if isinstance(status, dict) and isinstance(status.get("status"), str):
                return status
    return {"status": "complete" if (run_dir / "metrics.json").is_file() else "unknown"}


def _set_status(run_dir: Path, status: str, **facts) -> None:
    """Record the run's state in status.json, keeping its earlier facts. Best effort: a disk that cannot take the
    file must not hide the error being recorded."""
    path = run_dir / STATUS
    old = run_status(run_dir) if path.is_file() else {}
    old.pop("error", None)
    old.update({"status": status, "updated": dt.datetime.now().isoformat(timespec="seconds"), **facts})
    with contextlib.suppress(TinyKDError, OSError):
        write_json(path, old)


def resume_recipe(run_dir: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """The recipe saved in an earlier run directory, to continue that run; ``overrides`` may change the settings
    of RESUME_KEYS (``run`` checks them against the saved recipe)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RecipeError(f"cannot resume: the run folder '{run_dir}' does not exist",
                          "pass the folder an earlier run printed, e.g. runs/default (see `ls runs/`)", where="--resume")
    saved = run_dir / "recipe.yaml"
    if not saved.is_file():
        raise RecipeError(f"'{run_dir}' is not a tinykd run directory (no recipe.yaml in it)",
                          "pass the folder printed by the interrupted run, e.g. runs/default")
    recipe = load_recipe(saved, overrides)
    base = (run_dir / "base_dir.txt")
    recipe.base_dir = base.read_text().strip() if base.is_file() else None
    return recipe


def _flat(data, prefix: str = "") -> dict[str, object]:
    """A recipe dump as {dotted key: value}; list items by index."""
    if isinstance(data, dict):
        items = data.items()
    elif isinstance(data, list) and data and all(isinstance(v, (dict, list)) for v in data):
        items = ((str(i), v) for i, v in enumerate(data))
    else:
        return {prefix: data}
    out: dict[str, object] = {}
    for k, v in items:
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


# the run folder of each model a RESUME_KEYS training setting steers
_STAGE_OF = {"teacher": "teacher", "student": "student"}


def _resume_changes(recipe: Recipe, run_dir: Path) -> list[str]:
    """The settings ``recipe`` changes against the run's saved recipe.yaml, as ``key=value``; a RecipeError for a
    change that resume cannot honour (a setting outside RESUME_KEYS, or one of a stage that has finished)."""
    saved = load_recipe(run_dir / "recipe.yaml")
    before, after = _flat(saved.model_dump(mode="json")), _flat(recipe.model_dump(mode="json"))
    changed = sorted(k for k in set(before) | set(after) if before.get(k, None) != after.get(k, None))
    bad = [k for k in changed if not RESUME_KEYS.fullmatch(k)]
    if bad:
        raise RecipeError(f"a resumed run cannot change {', '.join(bad)}: the run's models and data were made with the "
                          "saved values", "resume may change only train.lr and train.grad_clip of a stage still "
                          "training, measure.* and report.enabled; for anything else start a new run",
                          where="--resume")
    for key in changed:
        head = key.split(".train.")[0]
        stage = _STAGE_OF.get(head) or (f"teacher_{int(head.rsplit('.', 1)[1]) + 2}" if ".train." in key else None)
        state = run_dir / stage / "last.json" if stage else None
        if state is not None and state.is_file() and (read_json(state) or {}).get("finished") is True:
            raise RecipeError(f"a resumed run cannot change {key}: {stage} has finished training",
                              "start a new run for a different setting (a trained teacher can be reused: "
                              f"teacher.checkpoint={run_dir / 'teacher' / 'best.safetensors'})", where="--resume")
    return [f"{k}={after.get(k)}" for k in changed]


def _resumable(run_dir: str | Path | None, recipe: Recipe) -> tuple[Path, list[str]]:
    """The run folder to continue and the settings changed on resume, after checking that it is a run folder that
    can be written and that the changes are allowed."""
    if run_dir is None or not Path(run_dir).is_dir():
        raise RecipeError(f"cannot resume: the run folder '{run_dir}' does not exist",
                          "pass an existing runs/<name> folder", where="--resume")
    run_dir = Path(run_dir)
    if not (run_dir / "recipe.yaml").is_file():
        raise RecipeError(f"'{run_dir}' is not a tinykd run directory (no recipe.yaml in it)",
                          "pass the folder printed by the interrupted run, e.g. runs/default", where="--resume")
    changes = _resume_changes(recipe, run_dir)
    if run_status(run_dir)["status"] != "complete":
        try:
            with tempfile.TemporaryFile(dir=run_dir):
                pass
        except OSError as exc:
            raise StorageError(f"cannot resume '{run_dir}': the folder is not writable ({exc.strerror or exc})",
                               f"a resumed run writes its checkpoints there: make it writable (chmod -R u+w {run_dir}), "
                               "or copy it and resume the copy") from None
    return run_dir, changes


def _complete(run_dir: Path, changes: list[str], console: Console) -> RunResult:
    """A resumed run that had already finished: its stored results, re-run and overwritten never."""
    if changes:
        raise RecipeError(f"run '{run_dir}' is complete; {', '.join(changes)} would need new results",
                          "start a new run with that setting (results of a finished run are never overwritten)",
                          where="--resume")
    if not (run_dir / "metrics.json").is_file():
        raise CheckpointError(f"run '{run_dir}' is marked complete but has no metrics.json",
                              f"delete {run_dir / STATUS} to resume the run and measure it again")
    console.print(f"run {run_dir} is already complete: nothing was re-run or overwritten")
    return RunResult(run_dir, read_json(run_dir / "metrics.json"), complete=True)


def preflight(recipe: Recipe, bundle: DataBundle, *, teacher: nn.Module | None = None,
              student: nn.Module | None = None, console: Console | None = None) -> None:
    """Check everything a recipe can get wrong before the run folder is made or anything trains: every model
    builds (teacher, student, extra teachers, assistants, peers), every checkpoint loads (finite weights of the
    model's architecture), every loss term builds and its layer paths exist, the transfer set is a known dataset
    whose files exist, and the int8 student fits ``deploy.target_board``. The global RNG is left as it was."""
    spec, d = bundle.spec, recipe.distill
    console = console or Console(quiet=True)
    with torch.random.fork_rng(devices=[]):
        t_model = teacher if teacher is not None else _create(recipe.teacher.model, recipe.teacher.kwargs, spec,
                                                              "teacher", recipe.seed)
        if recipe.teacher.checkpoint:
            _load_checkpoint(t_model, recipe.teacher.checkpoint, "teacher", recipe)
        s_model = _fresh_student(recipe, spec, student)
        for where, cfg, loads in get_scheme(d.scheme).extra_models(d):
            model = _create(cfg.model, cfg.kwargs, spec, where, recipe.seed)
            if loads and cfg.checkpoint:
                _load_checkpoint(model, cfg.checkpoint, where, recipe)
        terms = _terms(recipe)
        _check_layer_paths(recipe, terms, s_model, t_model)
        _check_term_setup(recipe, terms, s_model, t_model, bundle)
        if d.transfer is not None:
            _check_transfer(recipe)
        if recipe.deploy.target_board is not None:
            _precheck_fit(recipe, s_model, bundle, console)


def _check_layer_paths(recipe: Recipe, terms: list, student: nn.Module, teacher: nn.Module) -> None:
    """Every module path a loss term names exists in the model it reads, for the models the scheme lets preflight
    see (``Scheme.checked_paths``: an ensemble or a chain has its own paths, online peers are checked in training)."""
    from .distill.capture import resolve_module

    models = {"student": student, "teacher": teacher}
    roles = get_scheme(recipe.distill.scheme).checked_paths
    for i, (_, term) in enumerate(terms):
        paths = {"student": term.student_paths, "teacher": term.teacher_paths}
        for role in roles:
            for path in paths[role]:
                try:
                    resolve_module(models[role], path, role=role)
                except TinyKDError as err:
                    raise RecipeError(err.what, err.fix, where=f"distill.losses[{i}]") from None


def _check_term_setup(recipe: Recipe, terms: list, student: nn.Module, teacher: nn.Module, bundle: DataBundle) -> None:
    """Every loss term of an offline run builds its helpers from example outputs of the (untrained) models, as the
    trainer will: layer shapes that cannot be compared fail here, before anything trains."""
    from .distill.capture import forward_with_features
    from .distill.losses.base import SetupContext
    from .distill.sources import as_teacher_source
    from .types import Batch

    if not get_scheme(recipe.distill.scheme).preflight_setup or len(bundle.train) == 0:
        return
    idx = torch.arange(min(len(bundle.train), 8))
    batch = Batch(bundle.train.x[idx], bundle.train.y[idx], idx)
    source = as_teacher_source(teacher)
    from .distill.losses import feature, relation

    modes = student.training, teacher.training
    student.eval(), teacher.eval()
    quiet = [(m.console, m.console.quiet) for m in (feature, relation)]  # the training run announces auto pairs
    for c, _ in quiet:
        c.quiet = True
    try:
        for i, (_, term) in enumerate(terms):
            try:
                with torch.no_grad():
                    s_out = forward_with_features(student, batch.x, term.student_paths, role="student")
                    t_out = source.outputs(batch, term.teacher_paths) if term.needs_teacher else None
                    term.setup(SetupContext(student, teacher, s_out, t_out, batch, len(bundle.train),
                                            bundle.spec.num_classes))
            except TinyKDError as err:
                raise RecipeError(err.what, err.fix, where=err.where or f"distill.losses[{i}]") from None
    finally:
        student.train(modes[0]), teacher.train(modes[1])
        for c, was in quiet:
            c.quiet = was


def _check_transfer(recipe: Recipe) -> None:
    """distill.transfer names a registered dataset with valid options, and its files exist."""
    t = recipe.distill.transfer
    _check_source(t.name, t.path, t.options, recipe, "distill.transfer")


def _check_source(name: str, path: str | None, options: dict, recipe: Recipe, where: str) -> None:
    """A dataset section (``data``, ``distill.transfer``) names a registered dataset with valid options, and its
    files exist; errors name the section."""
    from .data.loader import resolve_path
    from .data.registry import check_options, get_dataset

    try:
        entry = get_dataset(name)
        check_options(entry, options)
        if entry.needs_path and path is None:
            raise DataError(f"dataset '{name}' needs a path to its files", f"set {where}.path; {entry.description}")
        if not entry.needs_path and path is not None:
            raise DataError(f"dataset '{name}' is bundled and takes no path", f"remove {where}.path")
        if path is not None:
            resolve_path(path, recipe.base_dir)
    except TinyKDError as err:
        raise type(err)(err.what, err.fix, where=err.where or where) from None


def _load_checkpoint(model: nn.Module, checkpoint: str, where: str, recipe: Recipe) -> Path:
    """Load ``checkpoint`` (a recipe's ``<where>.checkpoint``) into ``model``: the architecture must match and every
    weight be finite (a NaN teacher would otherwise surface as a diverging student)."""
    path = _resolve(checkpoint, recipe.base_dir, f"{where}.checkpoint")
    try:
        state = load_state_dict(path)
        load_weights(model, state, source=str(path))
        check_finite(state, source=f"checkpoint '{path}'")
    except TinyKDError as err:
        raise type(err)(err.what, err.fix, where=f"{where}.checkpoint") from None
    return path


def run(recipe: Recipe, *, run_dir: str | Path | None = None, resume: bool = False, data: DataBundle | None = None,
        teacher: nn.Module | None = None, student: nn.Module | None = None, console: Console | None = None,
        progress: bool = True) -> RunResult:
    """Run every stage of ``recipe``. Custom ``data``, ``teacher`` or ``student`` modules replace the recipe's.

    Everything checkable is checked (``preflight``) before the run folder is claimed. The folder's status.json
    says whether the run is running, complete, failed (with the error) or interrupted; a resumed complete run
    returns its stored results and re-runs nothing. An exception raised after the folder exists carries it as
    ``err.run_dir``."""
    console = console or Console(quiet=not progress)
    t_start = time.perf_counter()
    for cfg in (recipe.teacher.train, recipe.student.train):
        resolve_device(cfg.device)  # a GPU asked for on a machine without one fails before anything is written
    changes: list[str] = []
    if resume:
        run_dir, changes = _resumable(run_dir, recipe)
        if run_status(run_dir)["status"] == "complete":
            return _complete(run_dir, changes, console)
    elif run_dir is None:
        output_root(recipe)
    if data is None:
        _check_source(recipe.data.name, recipe.data.path, recipe.data.options, recipe, "data")
    bundle = data or _load_data(recipe, console)
    preflight(recipe, bundle, teacher=teacher, student=student, console=console)
    if resume:
        if changes:
            atomic_write(run_dir / "recipe.yaml", recipe.to_yaml())
            console.print(f"[yellow]resuming with {', '.join(changes)}[/]")
    else:
        run_dir = claim_run_dir(recipe) if run_dir is None else _given_run_dir(Path(run_dir))
        try:
            atomic_write(run_dir / "recipe.yaml", recipe.to_yaml())
            if recipe.base_dir:
                atomic_write(run_dir / "base_dir.txt", recipe.base_dir)
        except TinyKDError as err:
            err.run_dir = run_dir
            raise
    status = run_status(run_dir) if resume else {}
    _set_status(run_dir, "running", **({"resumed_with": status.get("resumed_with", []) + changes} if changes else {}))
    console.print(f"[bold]tinykd[/] run [cyan]{recipe.name}[/] → {run_dir}")
    try:
        result = _stages(recipe, run_dir, bundle, teacher, student, console, progress, t_start)
    except BaseException as err:
        interrupted = isinstance(err, (KeyboardInterrupt, SystemExit))
        _set_status(run_dir, "interrupted" if interrupted else "failed",
                    **({} if interrupted else {"error": str(err) or type(err).__name__}))
        with contextlib.suppress(AttributeError, TypeError):
            err.run_dir = run_dir
        raise
    _set_status(run_dir, "complete")
    return result


def _given_run_dir(run_dir: Path) -> Path:
    """A run folder chosen by the caller (``run(run_dir=...)``): made when missing, refused when it holds anything."""
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise RecipeError(f"run directory '{run_dir}' already exists and is not empty",
                          f"use `tinykd run --resume {run_dir}` to continue it, or choose another name")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise storage_error(run_dir / STATUS, exc) from None
    return run_dir


def _stages(recipe: Recipe, run_dir: Path, bundle: DataBundle, teacher: nn.Module | None, student: nn.Module | None,
            console: Console, progress: bool, t_start: float) -> RunResult:
    """Every stage of the run, in order, in ``run_dir``."""
    torch.manual_seed(recipe.seed)
    spec = bundle.spec
    histories: list[dict] = []
    emissions: dict[str, dict] = {}
    terms = _terms(recipe)  # built (and checked against the scheme) before any training

    def tracked(label: str):
        return _tracked(recipe, run_dir, label, emissions)

    teacher_model = teacher or _create(recipe.teacher.model, recipe.teacher.kwargs, spec, "teacher", recipe.seed)
    histories += _train_or_load(teacher_model, recipe.teacher, "teacher", "teacher", recipe, bundle, run_dir, tracked,
                                console, progress)

    models: dict[str, nn.Module] = {"teacher": teacher_model}
    compression: dict[str, object] = {}
    distill_teacher = teacher_model
    if recipe.compress.prune_teacher is not None:
        with tracked("teacher_pruned"):
            pruned, rows = _prune(recipe.compress.prune_teacher, teacher_model, teacher_model, recipe.teacher.train,
                                  DEFAULT_LOSSES, bundle, run_dir / "teacher_pruned", recipe.seed, "teacher", console, progress)
        distill_teacher = models["teacher_pruned"] = pruned.eval().requires_grad_(False)
        compression["prune_teacher"] = rows

    if recipe.distill.scratch_baseline:
        scratch = _fresh_student(recipe, spec, student)
        with tracked("student_scratch"):
            res = Trainer(scratch, [(1.0, build_loss("ce", {"label_smoothing": recipe.student.train.label_smoothing}))],
                          recipe.student.train, out_dir=run_dir / "student_scratch", label="student_scratch",
                          seed=recipe.seed, console=console, progress=progress).fit(bundle.train, bundle.val)
        histories += res.history
        models["student_scratch"] = scratch

    distilled = _fresh_student(recipe, spec, student)
    transfer = _distill_inputs(recipe, bundle, terms, console)
    ctx = SchemeContext(recipe, bundle, run_dir, console, progress,
                        build=lambda name, kwargs, where, seed: _create(name, kwargs, spec, where, seed),
                        train_or_load=lambda model, cfg, label, where: _train_or_load(
                            model, cfg, label, where, recipe, bundle, run_dir, tracked, console, progress),
                        terms=lambda: _terms(recipe), resolve_dir=lambda path: _resolve_dir(path, recipe.base_dir))
    scheme = get_scheme(recipe.distill.scheme)(ctx)
    source, batches, train = scheme.prepare(distill_teacher, distilled)
    trained = scheme.trained_module(distilled)
    models.update(scheme.models)
    histories += scheme.history
    resolved = recipe.model_copy(update={"distill": scheme.resolved(recipe.distill)})
    with tracked("student"):
        res = Trainer(trained, terms, recipe.student.train, out_dir=run_dir / "student", label="student",
                      seed=recipe.seed, teacher=source, console=console, progress=progress, transfer=transfer,
                      mixup=recipe.distill.mixup, batches=batches).fit(train, bundle.val)
    histories += res.history
    models["student"] = distilled
    helper_params = sum(count_params(t) for _, t in terms)
    scheme_facts = scheme.finish(source, res, distilled)

    qat_model = _compress_student(recipe, distilled, distill_teacher, bundle, run_dir, models, compression,
                                  tracked, console, progress)
    artifacts, quantization = _export(recipe, models, bundle, run_dir, console, qat_model,
                                      calib=scheme.calibration(recipe.quantize.calibration_samples))
    metrics = _measure(resolved, models, artifacts, bundle, run_dir, console, quantization)
    metrics["run"].update({"helper_params": helper_params, "seconds": round(time.perf_counter() - t_start, 1)})
    metrics["scheme"] = scheme_facts
    metrics["health"] = {"dead_units": {r["model"]: {"epoch": r["epoch"], "warning": r["dead_units"]}
                                        for r in histories if r.get("dead_units")}}
    if compression:
        metrics["compression"] = compression
    if emissions:
        metrics["training_energy"] = emissions
    write_json(run_dir / "metrics.json", metrics)
    _write_history(run_dir / "history.csv", histories)
    if recipe.report.enabled:
        from .report import write_report
        with console.status("writing report"):
            write_report(run_dir, metrics, histories, resolved.to_yaml())
    return RunResult(run_dir, metrics, histories, models)


# ----- teachers and schemes -----------------------------------------------------------------------------------
def _train_or_load(model: nn.Module, cfg, label: str, where: str, recipe: Recipe, bundle: DataBundle, run_dir: Path,
                   tracked, console: Console, progress: bool) -> list[dict]:
    """Load ``cfg.checkpoint`` into ``model`` or train it on the labels in ``run_dir/label``; freeze it. Its history.
    ``where``: the recipe field of ``cfg``, for error messages."""
    history: list[dict] = []
    if cfg.checkpoint:
        path = _load_checkpoint(model, cfg.checkpoint, where, recipe)
        console.print(f"{label}: loaded weights from {path}")
    else:
        with tracked(label):
            res = Trainer(model, [(1.0, build_loss("ce", {"label_smoothing": cfg.train.label_smoothing}))],
                          cfg.train, out_dir=run_dir / label, label=label, seed=recipe.seed,
                          console=console, progress=progress).fit(bundle.train, bundle.val)
        history = res.history
    model.eval().requires_grad_(False)
    return history


def _terms(recipe: Recipe) -> list:
    """Fresh loss terms of ``distill.losses`` (each call builds new helpers). In an online run the online terms
    are told how many peers there are, unless the recipe says."""
    d = recipe.distill
    scheme = get_scheme(d.scheme)
    out = []
    for i, l in enumerate(d.losses):
        term = build_loss(l.name, scheme.term_params(l.name, l.params(), d), where=f"distill.losses[{i}]")
        if not scheme.teacher_in_loop and term.needs_teacher:
            raise RecipeError(f"'{l.name}' learns from a teacher, and scheme {d.scheme} has "
                              "none in the loop", "use terms that need no teacher (ce, dml, peer_ensemble, byot, "
                              "pskd), or scheme offline", where=f"distill.losses[{i}]")
        out.append((l.weight, term))
    return out


def _resolve_dir(path: str, base_dir: str | None) -> Path:
    p = Path(path)
    return p if p.is_absolute() or base_dir is None or Path.cwd().joinpath(p).exists() else Path(base_dir) / p


# ----- optional stages: microcontroller pre-check, energy tracking, compression -------------------------------
def _precheck_fit(recipe: Recipe, student: nn.Module, bundle: DataBundle, console: Console) -> None:
    """Fail before any training when the int8 student cannot fit ``deploy.target_board``.

    The untrained student goes through the same export and int8 quantization as the trained one will (the
    file's size does not depend on the weights' values), and the peak SRAM comes from its graph at one byte per
    activation element, so the check uses the numbers the final fit table will show.
    """
    import tempfile

    from .deploy.mcu import get_board, require_fit
    from .measure.memory import peak_activation_memory

    try:
        board = get_board(recipe.deploy.target_board)
    except TinyKDError as err:
        raise type(err)(err.what, err.fix, where="deploy.target_board") from None
    shape = tuple(bundle.spec.shape)
    with tempfile.TemporaryDirectory() as tmp:
        norm = bundle.info.get("normalize")
        fp32 = export_onnx(with_preprocessing(copy.deepcopy(student), norm), shape, Path(tmp) / "student.onnx",
                           opset=recipe.export.opset)
        q = recipe.quantize
        int8 = quantize_onnx_static(fp32, Path(tmp) / "student.int8.onnx", raw_inputs(bundle.train.x[:16], norm),
                                    per_channel=q.per_channel, activation_type=q.activation_type)
        flash = file_bytes(int8 if q.enabled else fp32)
        sram = peak_activation_memory(fp32, activation_bytes=1).peak_bytes
    try:
        fit = require_fit(flash, sram, board)
    except TinyKDError as err:
        raise TinyKDError(f"the int8 student ({recipe.student.model}) cannot fit {board.name}: {err.what}", err.fix,
                          where="deploy.target_board") from None
    console.print(f"microcontroller pre-check: {fit.summary()}")


@contextlib.contextmanager
def _tracked(recipe: Recipe, run_dir: Path, label: str, out: dict):
    """CodeCarbon's offline tracker around a training stage when ``energy.track_training`` is on."""
    if not recipe.energy.track_training:
        yield
        return
    from .measure.energy import track_training

    with track_training(label, run_dir / "emissions" / label, recipe.energy.country) as result:
        yield
    out[label] = result.as_dict()


def _finetune_cfg(base: TrainConfig, epochs: int, lr: float) -> TrainConfig:
    return base.model_copy(update={"epochs": epochs, "lr": lr, "warmup_epochs": 0})


def _prune(cfg: PruneConfig, model: nn.Module, teacher: nn.Module, train_cfg: TrainConfig, losses, bundle: DataBundle,
           out_dir: Path, seed: int, role: str, console: Console, progress: bool) -> tuple[nn.Module, list[dict]]:
    """A pruned copy of ``model``, fine-tuned with ``losses`` (KD from ``teacher``) after each of ``cfg.steps``."""
    structured = cfg.method == "structured"
    target = None if cfg.macs_target is not None else cfg.amount
    console.print(f"pruning the {role}: {cfg.method}, "
                  + (f"to {cfg.macs_target:,} MACs" if cfg.macs_target else f"amount {cfg.amount:g}")
                  + f", {cfg.steps} step(s) × {cfg.finetune_epochs} fine-tuning epoch(s)")
    try:
        pruned, rows = iterative_prune(copy.deepcopy(model).train().requires_grad_(True), teacher, bundle.train,
                                       bundle.val, target_sparsity=target, macs_target=cfg.macs_target,
                                       steps=cfg.steps, finetune_cfg=_finetune_cfg(train_cfg, cfg.finetune_epochs, cfg.lr),
                                       losses=losses, structured=structured, out_dir=out_dir, seed=seed,
                                       progress=progress)
    except TinyKDError as err:
        raise type(err)(err.what, err.fix, where=f"compress.prune_{role}") from None
    last = rows[-1]
    console.print(f"pruned {role}: {last['params']:,} params ({last['nonzero_params']:,} non-zero), "
                  f"{last['macs']:,} MACs, val acc {100 * last['val_accuracy']:.2f}%")
    return pruned, rows


def _logit_losses(recipe: Recipe) -> list:
    """The recipe's distillation losses if none reads intermediate features (QAT graphs have no module paths)."""
    terms = [build_loss(l.name, l.params()) for l in recipe.distill.losses]
    if any(t.student_paths or t.teacher_paths for t in terms):
        return list(DEFAULT_LOSSES)
    return list(recipe.distill.losses)


def _compress_student(recipe: Recipe, student: nn.Module, teacher: nn.Module, bundle: DataBundle, run_dir: Path,
                      models: dict, compression: dict, tracked, console: Console, progress: bool):
    """Pruned, low-rank and QAT-with-KD variants of the distilled student, as the recipe asks; returns the QAT model."""
    c = recipe.compress
    base_cfg = recipe.student.train
    if c.prune_student is not None:
        with tracked("student_pruned"):
            models["student_pruned"], compression["prune_student"] = _prune(
                c.prune_student, student, teacher, base_cfg, list(recipe.distill.losses), bundle,
                run_dir / "student_pruned", recipe.seed, "student", console, progress)
    if c.lowrank is not None:
        from .compress.lowrank import lowrank_factorize

        low = copy.deepcopy(student)
        try:
            report = lowrank_factorize(low, energy=None if c.lowrank.param_budget else c.lowrank.energy,
                                       param_budget=c.lowrank.param_budget)
        except TinyKDError as err:
            raise type(err)(err.what, err.fix, where="compress.lowrank") from None
        console.print(f"low-rank student: {report['params_before']:,} → {report['params_after']:,} params; "
                      f"KD fine-tuning {c.lowrank.finetune_epochs} epoch(s)")
        with tracked("student_lowrank"):
            res = finetune(low, teacher, bundle.train, bundle.val,
                           _finetune_cfg(base_cfg, c.lowrank.finetune_epochs, c.lowrank.lr),
                           list(recipe.distill.losses), run_dir / "student_lowrank", label="student_lowrank",
                           seed=recipe.seed, progress=progress)
        compression["lowrank"] = {**report, "finetune_best_val_accuracy": res.best_val_accuracy}
        models["student_lowrank"] = low
    if c.qat is None:
        return None
    from .compress.qat import qat_distill

    losses = _logit_losses(recipe)
    console.print(f"quantization-aware distillation: {c.qat.epochs} epoch(s), losses "
                  f"{', '.join(l['name'] if isinstance(l, dict) else l.name for l in losses)}")
    calib = torch.as_tensor(calibration_subset(bundle.train.x, bundle.train.y, recipe.quantize.calibration_samples,
                                               recipe.seed))
    with tracked("student_qat"):
        qat = qat_distill(student, teacher, bundle.train, bundle.val, _finetune_cfg(base_cfg, c.qat.epochs, c.qat.lr),
                          losses, run_dir / "student_qat", calib=calib, seed=recipe.seed, progress=progress)
    compression["qat"] = {"epochs": c.qat.epochs, "lr": c.qat.lr,
                          "losses": [l if isinstance(l, dict) else l.model_dump() for l in losses],
                          "history": getattr(qat, "history", [])}
    return qat


def _load_data(recipe: Recipe, console: Console) -> DataBundle:
    d = recipe.data
    with console.status(f"loading dataset {d.name}"):
        bundle = load_dataset(d.name, path=d.path, seed=recipe.seed, val_fraction=d.val_fraction,
                              test_fraction=d.test_fraction, normalize=d.normalize, limit=d.limit,
                              labelled=d.labelled, class_names=d.class_names, base_dir=recipe.base_dir, **d.options)
    unlabelled = "" if bundle.unlabelled is None else f" (+ {len(bundle.unlabelled)} unlabelled training inputs)"
    console.print(f"data: {bundle.name} {tuple(bundle.spec.shape)} × {bundle.spec.num_classes} classes — "
                  f"train {len(bundle.train)}{unlabelled}, val {len(bundle.val)}, test {len(bundle.test)}")
    for split, made in bundle.info.get("splits", {}).items():
        console.print(f"[dim]  {split}: {made}[/]")
    for note in bundle.info.get("not_applied", []):
        console.print(f"[dim]  not applied: {note}[/]")
    return bundle


def _distill_inputs(recipe: Recipe, bundle: DataBundle, terms: list, console: Console) -> torch.Tensor | None:
    """Inputs only the teacher labels for the distilled student: the transfer set and the unlabelled training
    inputs of a labelling budget (``data.labelled``, used when a loss term learns from the teacher)."""
    parts = [_transfer_inputs(recipe, bundle, console)] if recipe.distill.transfer else []
    if bundle.unlabelled is not None and len(bundle.unlabelled):
        if any(t.needs_teacher for _, t in terms) and get_scheme(recipe.distill.scheme).takes_unlabelled:
            parts.append(bundle.unlabelled)
            console.print(f"unlabelled training inputs: {len(bundle.unlabelled)} (teacher-labelled, for the "
                          f"distilled student; {len(bundle.train)} keep their labels)")
        else:
            console.print(f"[yellow]{len(bundle.unlabelled)} unlabelled training inputs unused: no loss term of this "
                          "scheme learns from a teacher[/]")
    return torch.cat(parts) if parts else None


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


STUDENT_FAMILY = ("student", "student_pruned", "student_lowrank")  # fp32 students that get an int8 twin


def _export(recipe: Recipe, models: dict, bundle: DataBundle, run_dir: Path, console: Console,
            qat_model: nn.Module | None = None, calib: np.ndarray | None = None) -> tuple[dict[str, Path], dict]:
    """Every artifact of the run under ``artifacts/``: ONNX fp32 of each model, ONNX int8 (static QDQ) of each
    student, and the optional fp16 / dynamic-int8 / QAT / TFLite / ExecuTorch / C-array artifacts. ``calib``:
    int8 calibration inputs, standardised like the training split (default: a class-balanced training subset).

    Every artifact starts with the input standardisation (``deploy.preprocess``): it takes raw inputs. The ONNX
    files carry the preprocessing in ``metadata_props`` and ``artifacts/preprocess.json`` states it too.
    Returns the artifacts and, per int8 artifact, how its quantization went (parity, nodes kept in fp32).
    """
    shape = tuple(bundle.spec.shape)
    art = run_dir / "artifacts"
    out: dict[str, Path] = {}
    q, d = recipe.quantize, recipe.deploy
    norm = bundle.info.get("normalize")
    # A data-free run's parity check reads the validation split alone: no training input, as in its calibration.
    check, held_out = _parity_split(bundle, recipe.seed, n=len(bundle.val) if calib is not None else 2048)
    if calib is None:  # calibrate on training inputs the parity check does not use, so the check sees unseen inputs
        rest = torch.ones(len(bundle.train), dtype=torch.bool)
        rest[held_out] = False
        calib = calibration_subset(bundle.train.x[rest], bundle.train.y[rest], q.calibration_samples, recipe.seed)
    calib = raw_inputs(calib, norm)
    quant_facts: dict[str, dict] = {}
    with console.status("exporting to ONNX") as status:
        for name, model in models.items():
            status.update(f"exporting {name} to ONNX")
            out[name] = export_onnx(with_preprocessing(model, norm), shape, art / f"{name}.onnx",
                                    opset=recipe.export.opset)
        if q.enabled:
            for name in (n for n in STUDENT_FAMILY if n in models):
                status.update(f"int8 static quantization of {name} (ONNX Runtime, QDQ)")
                out[f"{name}_int8"], quant_facts[f"{name}_int8"] = quantize_with_parity(
                    out[name], art / f"{name}.int8.onnx", calib, check, per_channel=q.per_channel,
                    activation_type=q.activation_type, calibrate_method=q.calibrate_method,
                    target=q.parity_target, keep_fp32=q.keep_fp32)
        if qat_model is not None:
            status.update("exporting the QAT-with-KD student (int8 QDQ ONNX)")
            out["student_qat"] = export_onnx(with_preprocessing(qat_model, norm), shape, art / "student_qat.int8.onnx",
                                             opset=recipe.export.opset)
        if d.fp16:
            status.update("fp16 student (ONNX)")
            out["student_fp16"] = convert_onnx_fp16(out["student"], art / "student.fp16.onnx")
        if d.dynamic_int8:
            status.update("dynamic int8 student (ONNX Runtime)")
            out["student_dynamic_int8"] = quantize_onnx_dynamic(out["student"], art / "student.dynamic_int8.onnx")
        deployable = with_preprocessing(models["student"], norm)
        if d.tflite:
            from .deploy.tflite import export_tflite

            status.update("TFLite fp32 and int8 students (LiteRT)")
            out["student_tflite"] = export_tflite(deployable, shape, art / "student.tflite")
            out["student_tflite_int8"] = export_tflite(deployable, shape, art / "student.int8.tflite",
                                                       int8=True, calib=calib)
        if d.executorch:
            from .deploy.executorch import export_pte

            status.update("ExecuTorch student (XNNPACK)")
            out["student_pte"] = export_pte(deployable, shape, art / "student.pte")
        spec = preprocess_spec(bundle.info, shape, bundle.spec.num_classes, list(bundle.spec.class_names))
        for path in out.values():
            if path.suffix == ".onnx":
                attach_metadata(path, spec)
        write_preprocess_json(art / "preprocess.json", spec)
        if d.c_array:
            from .deploy.carray import write_c_array

            source = out.get("student_tflite_int8") or out.get("student_int8") or out["student"]
            write_c_array(source, art / "student_model_data.h", "g_student_model")
    for name, facts in quant_facts.items():
        kept = f", {len(facts['kept_fp32'])} node(s) kept in fp32 ({', '.join(facts['kept_fp32'])})" \
            if facts["kept_fp32"] else ""
        kept += ", 16-bit activations (int8 weights)" if facts["activation_type"].endswith("16") else ""
        kept += "" if facts["met"] else f" [yellow](below the {100 * facts['target']:.1f}% target)[/]"
        console.print(f"{name}: agrees with fp32 on {100 * facts['agreement']:.1f}% of {facts['checked_on']} "
                      f"validation inputs{kept}")
    console.print(f"artifacts: {', '.join(p.name for p in out.values())}, preprocess.json")
    return out, quant_facts


def _parity_split(bundle: DataBundle, seed: int, n: int = 2048) -> tuple[np.ndarray, torch.Tensor]:
    """Raw inputs the int8 parity check runs on, never the test split: the validation split, topped up to ``n``
    with training inputs (at most a third of them) held out from calibration; and the indices of those."""
    x = bundle.val.x[:n]
    take = min(max(0, n - len(x)), len(bundle.train) // 3)  # nothing taken when the validation split fills n
    held = torch.randperm(len(bundle.train), generator=torch.Generator().manual_seed(seed + 7))[:take]
    return raw_inputs(torch.cat([x, bundle.train.x[held]]), bundle.info.get("normalize")), held


# runtime of each non-PyTorch artifact variant, and the fp32 model it was made from
ARTIFACT_RUNTIMES = {"student_int8": ("ort_int8", "student"), "student_pruned_int8": ("ort_int8", "student_pruned"),
                     "student_lowrank_int8": ("ort_int8", "student_lowrank"), "student_qat": ("ort_int8", "student"),
                     "student_fp16": ("ort_fp16", "student"), "student_dynamic_int8": ("ort_dynamic_int8", "student"),
                     "student_tflite": ("tflite", "student"), "student_tflite_int8": ("tflite_int8", "student"),
                     "student_pte": ("executorch", "student")}


def _runner(runtime: str, path: Path, shape: tuple[int, ...], m) -> tuple:
    """(predict(raw x) -> logits array, {batch: timed call}) for an artifact in its own runtime."""
    if runtime.startswith("ort"):
        sess = ort_session(path, threads=m.threads)
        return (lambda x: ort_predict(sess, x)), ort_timers(sess, shape, m.batch_sizes)
    if runtime.startswith("tflite"):
        from .deploy.tflite import tflite_predict, tflite_timer

        return (lambda x: tflite_predict(path, x, threads=m.threads)), {"b1": tflite_timer(path, threads=m.threads)}
    from .deploy.executorch import pte_predict, pte_timer

    return (lambda x: pte_predict(path, x)), {"b1": pte_timer(path, shape)}


def _measure(recipe: Recipe, models: dict, artifacts: dict, bundle: DataBundle, run_dir: Path, console: Console,
             quantization: dict | None = None) -> dict:
    """Accuracy, agreement, size, MACs and latency of every variant. PyTorch models run on standardised inputs,
    artifacts on raw ones (their graphs standardise). Latency: every variant in every runtime it has, interleaved."""
    m, spec, test = recipe.measure, bundle.spec, bundle.test
    shape = tuple(spec.shape)
    y = test.y.numpy()
    raw_test = raw_inputs(test.x, bundle.info.get("normalize"))
    preds: dict[str, np.ndarray] = {}
    timers: dict[str, dict[str, dict]] = {}
    extras: dict[str, dict] = {}
    quantization = quantization or {}
    with console.status("measuring accuracy") as status:
        for name, model in models.items():
            status.update(f"accuracy of {name}")
            preds[name] = predict_logits(model, test.x).argmax(1).numpy()
            sess = ort_session(artifacts[name], threads=m.threads)
            timers[name] = {"pytorch": torch_timers(model, shape, m.batch_sizes),
                            "ort_fp32": ort_timers(sess, shape, m.batch_sizes)}
            extras[name] = {"onnx_agreement": agreement(ort_predict(sess, raw_test).argmax(1), preds[name])}
        for name, (runtime, source) in ARTIFACT_RUNTIMES.items():
            if name not in artifacts:
                continue
            status.update(f"accuracy of {name}")
            predict, timer = _runner(runtime, artifacts[name], shape, m)
            timers[name] = {runtime: timer}
            preds[name] = predict(raw_test).argmax(1)
            agree = agreement(preds[name], preds[source])
            extras[name] = {"agreement_with_fp32_student": agree, "fp32_source": source,
                            "parity_flag": bool(agree < PARITY_MIN)}
            if name in quantization:
                extras[name]["quantization"] = quantization[name]
            if agree < PARITY_MIN:
                console.print(f"[yellow]{name}: agrees with the fp32 {source} on {100 * agree:.1f}% of test "
                              f"predictions (< {100 * PARITY_MIN:.0f}%)[/]")
        status.update(f"timing {sum(len(t) for t in timers.values())} variant/runtime pairs, interleaved "
                      f"({m.rounds} rounds)")
        flat = {f"{n}|{rt}": t for n, per in timers.items() for rt, t in per.items()}
        timed = interleaved_latency(flat, warmup=m.warmup, repeats=m.repeats, rounds=m.rounds, threads=m.threads)
    variants: dict[str, dict] = {}
    for name in timers:
        latency = {rt: timed[f"{name}|{rt}"] for rt in timers[name]}
        if name in models:
            model = models[name]
            variants[name] = _variant(name, preds[name], y, spec, latency, "pytorch",
                                      model_name=_model_name(recipe, name, model), params=count_params(model),
                                      macs=count_macs(model, shape), artifact=artifacts[name], run_dir=run_dir,
                                      extra=extras[name])
            sparsity = _sparsity(model)
            if sparsity > 0.01:
                variants[name]["sparsity"] = sparsity
        else:
            source = variants[ARTIFACT_RUNTIMES[name][1]]
            variants[name] = _variant(name, preds[name], y, spec, latency, ARTIFACT_RUNTIMES[name][0],
                                      model_name=source["model"], params=source["params"], macs=source["macs"],
                                      artifact=artifacts[name], run_dir=run_dir, extra=extras[name])
    for name, v in variants.items():
        v["agreement_with_teacher"] = agreement(preds[name], preds["teacher"])
        v["energy"] = _energy(recipe, name, v, artifacts)
    deploy = _deploy_choice(variants)
    out = {
        "run": _run_facts(recipe, bundle, run_dir),
        "variants": variants,
        "deploy": deploy,
        "speedups": _speedups(variants, deploy),
        "latency_quality": _latency_quality(timed, m),
        "ratios": _ratios(variants["teacher"], variants[deploy["variant"]], deploy)
        | {"compared": f"{deploy['variant']} vs teacher"},
        "claims": CLAIMS,
    }
    if out["latency_quality"]["noisy"]:
        console.print(f"[yellow]latency: {len(out['latency_quality']['noisy'])} of "
                      f"{sum(len(per) for per in timed.values())} timings were noisy (p90 / median or the spread across rounds too high): another process "
                      "competed for the cores; rerun on an idle machine before trusting the speed-ups[/]")
    fit = _mcu(recipe, artifacts, variants, console)
    if fit:
        out["mcu"] = fit
    return out


def _deploy_choice(variants: dict) -> dict:
    """The artifact to deploy: the fastest at batch 1 among the distilled student's artifacts (its fp32 ONNX in ONNX
    Runtime and every artifact made from it) that agree with the fp32 student on ≥ PARITY_MIN of the test
    predictions; when none does, the one that agrees most."""
    s = variants["student"]
    cands = [{"variant": "student", "runtime": "ort_fp32", "artifact": s["artifact"],
              "latency_ms_b1": s["latency"]["ort_fp32"]["b1"]["median_ms"], "agreement": s["onnx_agreement"]}]
    cands += [{"variant": n, "runtime": v["runtime"], "artifact": v["artifact"], "latency_ms_b1": v["latency_ms_b1"],
               "agreement": v["agreement_with_fp32_student"]}
              for n, v in variants.items() if v.get("fp32_source") == "student"]
    for c in cands:
        c["passes_parity"] = bool(c["agreement"] >= PARITY_MIN)
    passing = [c for c in cands if c["passes_parity"]]
    pick = min(passing, key=lambda c: c["latency_ms_b1"]) if passing else max(cands, key=lambda c: c["agreement"])
    rule = (f"fastest at batch 1 on this machine of the artifacts that agree with the fp32 student on "
            f"≥ {100 * PARITY_MIN:.0f}% of test predictions" if passing
            else "no artifact passes the parity check: the one that agrees most")
    return {**pick, "rule": rule, "candidates": cands}


def _median(latency: dict, runtime: str, batch: str) -> float | None:
    """The median latency of one runtime at one batch size, or None where it was not timed."""
    return ((latency.get(runtime) or {}).get(batch) or {}).get("median_ms")


def _speedups(variants: dict, deploy: dict) -> dict:
    """Batch-1 (and larger-batch) speed-ups, each labelled with what it compares."""
    def ratio(a, b):
        return float(a) / float(b) if a and b else None

    t, s = variants["teacher"], variants["student"]
    batches = [k for k in t["latency"]["pytorch"]]
    out = {"same_runtime": {"what": "teacher vs distilled student, both fp32 in ONNX Runtime",
                            **{b: ratio(_median(t["latency"], "ort_fp32", b), _median(s["latency"], "ort_fp32", b))
                               for b in batches}}}
    if "student_int8" in variants:
        q = variants["student_int8"]
        out["int8_vs_fp32"] = {"what": "int8 vs fp32 distilled student, both in ONNX Runtime",
                               **{b: ratio(_median(s["latency"], "ort_fp32", b), _median(q["latency"], "ort_int8", b))
                                  for b in batches}}
    d = variants[deploy["variant"]]["latency"]
    out["deployed"] = {"what": f"teacher in its fastest runtime ({t['best_runtime']}) vs the artifact to deploy "
                               f"({deploy['artifact']}, {deploy['runtime']})",
                       **{b: ratio(min(x[b]["median_ms"] for x in t["latency"].values() if b in x),
                                   _median(d, deploy["runtime"], b)) for b in batches}}
    return out


def _latency_quality(timed: dict, m) -> dict:
    """How far the timings can be trusted: the worst p90 / median and round spread, and the noisy timings."""
    stats = [(key, b, s) for key, per in timed.items() for b, s in per.items()]
    return {"rounds": m.rounds, "repeats": m.repeats, "threads": m.threads,
            "max_p90_over_median": max((s["p90_ms"] / s["median_ms"] for _, _, s in stats if s["median_ms"]),
                                       default=None),
            "max_round_spread": max((s.get("round_spread", 1.0) for _, _, s in stats), default=None),
            "noisy": [f"{key.replace('|', ' in ')} at {b}" for key, b, s in stats if s["noisy"]]}


def _sparsity(model: nn.Module) -> float:
    from .compress.prune import sparsity_report

    return float(sparsity_report(model)["sparsity"])


INT8_RUNTIMES = ("ort_int8", "ort_dynamic_int8", "tflite_int8")


def _energy(recipe: Recipe, name: str, variant: dict, artifacts: dict) -> dict | None:
    """Estimated energy of one inference from the variant's MACs and its ONNX graph's bytes (module energy)."""
    from .measure.energy import onnx_inference_energy

    runtime = variant.get("runtime", "pytorch")
    dtype = "int8" if runtime in INT8_RUNTIMES else "fp16" if runtime == "ort_fp16" else "fp32"
    source = variant.get("fp32_source", name)
    graph = artifacts.get(source)
    if graph is None or not variant.get("macs"):
        return None
    try:
        return onnx_inference_energy(graph, variant["macs"], dtype=dtype, memory=recipe.energy.memory)
    except TinyKDError:
        return None


def _mcu(recipe: Recipe, artifacts: dict, variants: dict, console: Console) -> dict | None:
    """Flash and SRAM of the deployable int8 student against each board of ``deploy.boards``."""
    from .deploy.mcu import TFLM_FLASH_BYTES, TFLM_SRAM_BYTES, fit_check, get_board
    from .measure.memory import peak_activation_memory

    name = "student_tflite_int8" if "student_tflite_int8" in artifacts else "student_int8"
    if name not in artifacts:
        return None
    d = recipe.deploy
    flash = file_bytes(artifacts[name])
    act = (variants[name].get("quantization") or {}).get("activation_type", "uint8")
    peak = peak_activation_memory(artifacts["student"], activation_bytes=2 if act.endswith("16") else 1)
    boards = {}
    notes = {}
    for spec in d.boards:
        board = get_board(spec)
        boards[board.name] = fit_check(flash, peak.peak_bytes, board).as_dict()
        notes[board.name] = board.notes
    target = None
    if d.target_board is not None:
        board = get_board(d.target_board)
        target = board.name
        boards[board.name] = fit_check(flash, peak.peak_bytes, board).as_dict()
        notes[board.name] = board.notes
    console.print("microcontroller fit of " + name + ": " + "; ".join(
        f"{b} {'fits' if f['fits'] else 'does NOT fit'}" for b, f in boards.items()))
    return {"variant": name, "artifact": variants[name]["artifact"], "flash_bytes": flash,
            "peak_sram_bytes": peak.peak_bytes, "peak_node": f"{peak.node} ({peak.op_type})",
            "runtime_flash_bytes": TFLM_FLASH_BYTES, "runtime_sram_bytes": TFLM_SRAM_BYTES,
            "target_board": target, "boards": boards, "notes": notes}


def _variant(name: str, pred, y, spec, latency: dict, runtime: str, *, model_name: str, params: int, macs: int,
             artifact: Path, run_dir: Path, extra: dict) -> dict:
    acc = classification_metrics(y, pred, spec.num_classes)
    primary = latency[runtime]
    v = {"label": _label(name), "model": model_name, "runtime": runtime,
         "accuracy": acc["accuracy"], "macro_f1": acc["macro_f1"], "params": params,
         "file_bytes": file_bytes(artifact), "artifact": str(artifact.relative_to(run_dir)), "macs": macs,
         "latency_ms_b1": primary["b1"]["median_ms"], "latency_ms_b1_p90": primary["b1"]["p90_ms"]}
    for key, val in primary.items():
        if key != "b1":
            v[f"latency_ms_{key}"] = val["median_ms"]
    best = min(latency, key=lambda rt: latency[rt]["b1"]["median_ms"])
    v.update({"best_runtime": best, "latency_ms_b1_best": latency[best]["b1"]["median_ms"],
              "latency_noisy": any(s.get("noisy", False) for per in latency.values() for s in per.values())})
    v.update({"latency": latency, "per_class_accuracy": acc["per_class_accuracy"], "confusion": acc["confusion"]})
    v.update(extra)
    return v


def _label(name: str) -> str:
    """The display label of a variant: teacher_2 → "Teacher 2 (fp32)", assistant1 → "Assistant 1 (fp32)"."""
    if name in LABELS:
        return LABELS[name]
    for scheme in schemes():
        for prefix, word in scheme.variant_words.items():
            if name.startswith(prefix) and name[len(prefix):].isdigit():
                return f"{word} {name[len(prefix):]} (fp32)"
    return name


def _model_name(recipe: Recipe, name: str, model: nn.Module) -> str:
    if not type(model).__module__.startswith("tinykd"):
        return type(model).__name__
    extra = get_scheme(recipe.distill.scheme).variant_configs(recipe.distill)
    cfg = recipe.teacher if name in ("teacher", "teacher_pruned") else extra.get(name, recipe.student)
    return cfg.model


def _ratios(teacher: dict, final: dict, deploy: dict) -> dict:
    """The artifact to deploy against the teacher; the speed-up is deployed: each in its fastest runtime."""
    def ratio(a, b):
        return float(a) / float(b) if a and b else None
    return {"size_reduction": ratio(teacher["file_bytes"], final["file_bytes"]),
            "macs_reduction": ratio(teacher["macs"], final["macs"]),
            "speedup_b1": ratio(teacher["latency_ms_b1_best"], deploy["latency_ms_b1"]),
            "speedup_kind": f"deployed: teacher in {teacher['best_runtime']}, {deploy['variant']} in {deploy['runtime']}",
            "accuracy_retention": ratio(final["accuracy"], teacher["accuracy"])}


def _run_facts(recipe: Recipe, bundle: DataBundle, run_dir: Path) -> dict:
    return {"name": recipe.name, "run_dir": str(run_dir), "dataset": bundle.name, "seed": recipe.seed,
            "created": dt.datetime.now().isoformat(timespec="seconds"), "tinykd": __version__,
            "spec": bundle.spec.to_dict(), "data_info": bundle.info,
            "split_sizes": {"train": len(bundle.train), "val": len(bundle.val), "test": len(bundle.test),
                            **({"unlabelled": len(bundle.unlabelled)} if bundle.unlabelled is not None else {})},
            "machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version(),
                        "torch": torch.__version__, "system": platform.system(),
                        "available_cores": available_cores(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                        # training and timing use their own thread counts: one "threads" fact would hide either
                        "train_threads": resolve_threads(recipe.student.train.threads),
                        **({"teacher_train_threads": resolve_threads(recipe.teacher.train.threads)}
                           if recipe.teacher.train.threads != recipe.student.train.threads else {}),
                        "measure_threads": recipe.measure.threads,
                        "train_device": describe_device(resolve_device(recipe.student.train.device))}}


def _write_history(path: Path, rows: list[dict]) -> None:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(path, buf.getvalue())
