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
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from torch import nn

from . import __version__
from .compress.quantize import (calibration_subset, convert_onnx_fp16, quantize_onnx_dynamic,
                                quantize_onnx_static)
from .data import load_dataset
from .data.spec import DataBundle
from .deploy.onnx import export_onnx, ort_predict, ort_session
from .distill.losses import build_loss
from .distill.trainer import Trainer, describe_device, resolve_device
from .errors import RecipeError, TinyKDError
from .inference import module_device, predict_logits
from .compress.prune import DEFAULT_LOSSES, finetune, iterative_prune
from .io import atomic_write, load_state_dict, load_weights, read_json, write_json
from .measure import (agreement, classification_metrics, count_macs, count_params, file_bytes, ort_latency,
                      torch_latency)
from .models import create_model
from .recipe import PruneConfig, Recipe, TrainConfig, load_recipe

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
    for cfg in (recipe.teacher.train, recipe.student.train):
        resolve_device(cfg.device)  # a GPU asked for on a machine without one fails before anything is written
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
    if recipe.deploy.target_board is not None:
        _precheck_fit(recipe, _fresh_student(recipe, spec, student), bundle, console)
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
    transfer = _transfer_inputs(recipe, bundle, console) if recipe.distill.transfer else None
    scheme = _Scheme(recipe, bundle, run_dir, console, progress)
    source, batches, train = scheme.prepare(distill_teacher, distilled, models, histories, tracked)
    trained = scheme.trained_module(distilled, models)
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
    artifacts = _export(recipe, models, bundle, run_dir, console, qat_model,
                        calib=scheme.calibration(recipe.quantize.calibration_samples))
    metrics = _measure(recipe, models, artifacts, bundle, run_dir, console)
    metrics["run"].update({"helper_params": helper_params, "seconds": round(time.perf_counter() - t_start, 1)})
    metrics["scheme"] = scheme_facts
    if compression:
        metrics["compression"] = compression
    if emissions:
        metrics["training_energy"] = emissions
    write_json(run_dir / "metrics.json", metrics)
    _write_history(run_dir / "history.csv", histories)
    if recipe.report.enabled:
        from .report import write_report
        with console.status("writing report"):
            write_report(run_dir, metrics, histories, recipe.to_yaml())
    return RunResult(run_dir, metrics, histories, models)


# ----- teachers and schemes -----------------------------------------------------------------------------------
def _train_or_load(model: nn.Module, cfg, label: str, where: str, recipe: Recipe, bundle: DataBundle, run_dir: Path,
                   tracked, console: Console, progress: bool) -> list[dict]:
    """Load ``cfg.checkpoint`` into ``model`` or train it on the labels in ``run_dir/label``; freeze it. Its history.
    ``where``: the recipe field of ``cfg``, for error messages."""
    history: list[dict] = []
    if cfg.checkpoint:
        path = _resolve(cfg.checkpoint, recipe.base_dir, f"{where}.checkpoint")
        load_weights(model, load_state_dict(path), source=str(path))
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
    out = []
    for i, l in enumerate(d.losses):
        params = l.params()
        if d.scheme == "online" and l.name in ("dml", "peer_ensemble"):
            params.setdefault("peers", 1 + max(1, len(d.peers)))
        term = build_loss(l.name, params, where=f"distill.losses[{i}]")
        if d.scheme in ("online", "self") and term.needs_teacher:
            raise RecipeError(f"'{l.name}' learns from a teacher, and scheme {d.scheme} has "
                              "none in the loop", "use terms that need no teacher (ce, dml, peer_ensemble, byot, "
                              "pskd), or scheme offline", where=f"distill.losses[{i}]")
        out.append((l.weight, term))
    return out


def _kd_temperature(recipe: Recipe) -> float:
    """The temperature of the first loss term that has one (a multi-teacher ensemble mixes probabilities at it)."""
    for l in recipe.distill.losses:
        t = l.params().get("temperature")
        if isinstance(t, (int, float)):
            return float(t)
    return 4.0


WIDTH_ARGS = ("widths", "width", "hidden", "channels", "width_mult", "base")


class _Scheme:
    """Who teaches the distilled student (DistillConfig.scheme), and what the report says about it."""

    def __init__(self, recipe: Recipe, bundle: DataBundle, run_dir: Path, console: Console, progress: bool):
        self.recipe, self.bundle, self.run_dir, self.console, self.progress = recipe, bundle, run_dir, console, progress
        self.d = recipe.distill
        self.facts: dict = {"name": self.d.scheme}
        self.batches = self.synthetic = None

    def trained_module(self, student: nn.Module, models: dict) -> nn.Module:
        """What the trainer trains: the student, or in an online run the Peers group whose peer 0 it is (the
        other peers become variants ``peer_2``, ``peer_3``... of the report)."""
        if self.d.scheme != "online":
            return student
        from .distill.schemes import Peers

        r, spec = self.recipe, self.bundle.spec
        configs = list(self.d.peers) or [r.student]
        others = []
        for i, cfg in enumerate(configs, start=2):
            if self.d.peers:
                model = _create(cfg.model, cfg.kwargs, spec, f"distill.peers[{i - 2}]", r.seed + 200 + i)
            else:  # the student's architecture, initialised differently
                model = copy.deepcopy(student)
                torch.manual_seed(r.seed + 200 + i)
                for m in model.modules():
                    if m is not model and hasattr(m, "reset_parameters"):
                        m.reset_parameters()
            others.append(model)
            models[f"peer_{i}"] = model  # trained in place with the student; measured after training
        self.facts["peers"] = ["student", *(f"peer_{i}" for i in range(2, len(others) + 2))]
        return Peers([student, *others])

    def prepare(self, teacher: nn.Module, student: nn.Module, models: dict, histories: list, tracked):
        """(teacher source, batch source or None, training split or None) for the distilled student."""
        d, spec = self.d, self.bundle.spec
        if d.scheme in ("online", "self"):
            return None, None, self.bundle.train
        if d.scheme == "data_free":
            return self._data_free(teacher)
        source: object = teacher
        if d.scheme == "multi_teacher":
            from .distill.schemes import TeacherEnsemble

            members, labels = [teacher], ["teacher"]
            for i, cfg in enumerate(d.teachers, start=2):
                label, where = f"teacher_{i}", f"distill.teachers[{i - 2}]"
                model = _create(cfg.model, cfg.kwargs, spec, where, self.recipe.seed + i)
                histories += _train_or_load(model, cfg, label, where, self.recipe, self.bundle, self.run_dir, tracked,
                                            self.console, self.progress)
                models[label] = model
                members.append(model)
                labels.append(label)
            temperature = _kd_temperature(self.recipe)
            source = TeacherEnsemble(members, weights=d.teacher_weights, temperature=temperature)
            self.facts.update({"teachers": labels, "teacher_weights": d.teacher_weights, "temperature": temperature})
            self.console.print(f"multi-teacher: {len(members)} teachers, weights {d.teacher_weights}")
        elif d.scheme == "assistant":
            source = self._chain(teacher, student, models, histories)
        if d.cache:
            from .distill.cache import TeacherCache

            folder = (_resolve_dir(d.cache_dir, self.recipe.base_dir) if d.cache_dir else self.run_dir / "teacher_cache")
            source = TeacherCache(source, folder, preprocessing=self.bundle.info.get("normalize"))
            self.facts["cache_dir"] = str(folder)
        return source, None, self.bundle.train

    def _chain(self, teacher: nn.Module, student: nn.Module, models: dict, histories: list) -> nn.Module:
        from .distill.schemes import assistant_kwargs, distill_chain

        d, spec, r = self.d, self.bundle.spec, self.recipe
        configs = list(d.assistants)
        if not configs:
            if not type(student).__module__.startswith("tinykd"):
                raise RecipeError("an automatic assistant needs a registry student (the assistant is the student's "
                                  "family at a larger width)", "list the assistants in distill.assistants",
                                  where="distill.assistants")
            arg = d.assistant_width_arg or next((a for a in WIDTH_ARGS if a in r.student.kwargs), None)
            if arg is None:
                raise RecipeError(f"cannot size an assistant: student.kwargs {sorted(r.student.kwargs)} name no width "
                                  f"argument ({', '.join(WIDTH_ARGS)})", "set distill.assistant_width_arg to the "
                                  "student's width keyword, or list distill.assistants", where="distill.assistants")
            try:
                (kwargs,) = assistant_kwargs(r.student.model, dict(r.student.kwargs), width_arg=arg,
                                             num_classes=spec.num_classes, in_shape=tuple(spec.shape),
                                             teacher_params=count_params(teacher), student_params=count_params(student))
            except TinyKDError as err:
                raise type(err)(err.what, err.fix, where="distill.assistants") from None
            configs = [r.student.model_copy(update={"kwargs": kwargs, "checkpoint": None})]
            self.console.print(f"assistant chosen: {r.student.model} {arg}={kwargs[arg]} "
                               "(parameters nearest the geometric mean of teacher and student)")
            d.assistants = configs
        stages = [("teacher", teacher)]
        for i, cfg in enumerate(configs, start=1):
            stages.append((f"assistant{i}", _create(cfg.model, cfg.kwargs, spec, f"distill.assistants[{i - 1}]",
                                                    r.seed + 100 + i)))
        chain = distill_chain(stages, self.bundle.train, self.bundle.val, r.student.train,
                              out_dir=self.run_dir / "chain", terms=lambda: _terms(r), train_first=False,
                              seed=r.seed, console=self.console, progress=self.progress)
        for st in chain[1:]:
            models[st.label] = st.model.requires_grad_(False)
            state = st.out_dir / "last.json"
            if state.is_file():
                histories += read_json(state).get("history", [])
        self.facts["stages"] = [{k: v for k, v in st.row().items() if k != "out_dir"} for st in chain]
        return chain[-1].model

    def _data_free(self, teacher: nn.Module):
        from .distill.schemes import DAFLBatches, deep_inversion

        cfg, shape = self.d.data_free, tuple(self.bundle.spec.shape)
        self.facts["method"] = cfg.method
        if cfg.method == "dafl":
            self.facts["generator"] = {"base": cfg.generator_base, "lr": cfg.generator_lr,
                                       "schedule": cfg.generator_schedule, "jitter": cfg.jitter,
                                       "adversarial": cfg.adversarial,
                                       "batch_size": cfg.batch_size, "steps_per_epoch": cfg.steps_per_epoch}
            torch.manual_seed(self.recipe.seed)
            self.batches = DAFLBatches(teacher, shape, steps_per_epoch=cfg.steps_per_epoch, batch_size=cfg.batch_size,
                                       latent_dim=cfg.latent_dim, lr=cfg.generator_lr, base=cfg.generator_base,
                                       one_hot=cfg.one_hot, activation=cfg.activation, info_entropy=cfg.info_entropy,
                                       lr_schedule=cfg.generator_schedule, jitter=cfg.jitter,
                                       adversarial=cfg.adversarial,
                                       total_steps=cfg.steps_per_epoch * self.recipe.student.train.epochs)
            self.console.print(f"data-free (DAFL): {cfg.steps_per_epoch} generated batches of {cfg.batch_size} "
                               "per epoch; the student sees no training input")
            return teacher, self.batches, None
        home = module_device(teacher)
        teacher.to(resolve_device(self.recipe.student.train.device))  # inverting is training: on the student's device
        try:
            synth = deep_inversion(teacher, shape, cfg.samples, batch_size=min(256, cfg.samples),
                                   iterations=cfg.iterations, lr=cfg.inversion_lr, bn_weight=cfg.bn_weight,
                                   seed=self.recipe.seed, console=self.console)
        except TinyKDError as err:
            raise type(err)(err.what, err.fix, where="distill.data_free.method") from None
        finally:
            teacher.to(home)
        self.synthetic = synth
        return teacher, None, synth

    def calibration(self, n: int) -> np.ndarray | None:
        """Int8 calibration inputs of a data-free run (synthetic, like everything its student saw); else None."""
        if self.d.scheme != "data_free":
            return None
        if self.batches is not None:
            with torch.random.fork_rng():
                torch.manual_seed(self.recipe.seed)
                return self.batches.sample(n).numpy()
        return self.synthetic.x[:n].numpy()

    def finish(self, source, result, student: nn.Module) -> dict:
        """Facts about the scheme for metrics.json, and the synthetic-sample figure of a data-free run."""
        from .distill.cache import TeacherCache

        if isinstance(source, TeacherCache):
            self.facts["cache_stats"] = dict(source.stats)
        if self.d.scheme == "data_free":
            from .distill.schemes import save_grid
            from .report.scheme import DATA_FREE_NAMES

            if self.batches is not None:
                x = self.batches.sample(32)
                labels = predict_logits(self.batches.teacher, x).argmax(1).tolist()
            else:
                x, labels = self.synthetic.x[:32], self.synthetic.y[:32].tolist()
            path = self.run_dir / "figures" / "synthetic_samples.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            method = DATA_FREE_NAMES[self.d.data_free.method]
            save_grid(x, path, labels=labels, title=f"{method}: synthetic inputs, titled with the teacher's class")
            self.facts["samples_figure"] = str(path.relative_to(self.run_dir))
        if self.d.scheme == "assistant":
            self.facts["stages"].append({"stage": len(self.facts["stages"]), "label": "student",
                                         "teacher": self.facts["stages"][-1]["label"], "params": count_params(student),
                                         "best_epoch": result.best_epoch,
                                         "best_val_accuracy": result.best_val_accuracy})
        return self.facts


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
        fp32 = export_onnx(copy.deepcopy(student), shape, Path(tmp) / "student.onnx", opset=recipe.export.opset)
        q = recipe.quantize
        int8 = quantize_onnx_static(fp32, Path(tmp) / "student.int8.onnx", bundle.train.x[:16].numpy(),
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


STUDENT_FAMILY = ("student", "student_pruned", "student_lowrank")  # fp32 students that get an int8 twin


def _export(recipe: Recipe, models: dict, bundle: DataBundle, run_dir: Path, console: Console,
            qat_model: nn.Module | None = None, calib: np.ndarray | None = None) -> dict[str, Path]:
    """Every artifact of the run under ``artifacts/``: ONNX fp32 of each model, ONNX int8 (static QDQ) of each
    student, and the optional fp16 / dynamic-int8 / QAT / TFLite / ExecuTorch / C-array artifacts. ``calib``:
    int8 calibration inputs (default: a class-balanced subset of the training split)."""
    shape = tuple(bundle.spec.shape)
    art = run_dir / "artifacts"
    out: dict[str, Path] = {}
    q, d = recipe.quantize, recipe.deploy
    if calib is None:
        calib = calibration_subset(bundle.train.x, bundle.train.y, q.calibration_samples, recipe.seed)
    with console.status("exporting to ONNX") as status:
        for name, model in models.items():
            status.update(f"exporting {name} to ONNX")
            out[name] = export_onnx(model, shape, art / f"{name}.onnx", opset=recipe.export.opset)
        if q.enabled:
            for name in (n for n in STUDENT_FAMILY if n in models):
                status.update(f"int8 static quantization of {name} (ONNX Runtime, QDQ)")
                out[f"{name}_int8"] = quantize_onnx_static(out[name], art / f"{name}.int8.onnx", calib,
                                                           per_channel=q.per_channel, activation_type=q.activation_type,
                                                           calibrate_method=q.calibrate_method)
        if qat_model is not None:
            status.update("exporting the QAT-with-KD student (int8 QDQ ONNX)")
            out["student_qat"] = export_onnx(qat_model, shape, art / "student_qat.int8.onnx", opset=recipe.export.opset)
        if d.fp16:
            status.update("fp16 student (ONNX)")
            out["student_fp16"] = convert_onnx_fp16(out["student"], art / "student.fp16.onnx")
        if d.dynamic_int8:
            status.update("dynamic int8 student (ONNX Runtime)")
            out["student_dynamic_int8"] = quantize_onnx_dynamic(out["student"], art / "student.dynamic_int8.onnx")
        if d.tflite:
            from .deploy.tflite import export_tflite

            status.update("TFLite fp32 and int8 students (LiteRT)")
            out["student_tflite"] = export_tflite(models["student"], shape, art / "student.tflite")
            out["student_tflite_int8"] = export_tflite(models["student"], shape, art / "student.int8.tflite",
                                                       int8=True, calib=calib)
        if d.executorch:
            from .deploy.executorch import export_pte

            status.update("ExecuTorch student (XNNPACK)")
            out["student_pte"] = export_pte(models["student"], shape, art / "student.pte")
        if d.c_array:
            from .deploy.carray import write_c_array

            source = out.get("student_tflite_int8") or out.get("student_int8") or out["student"]
            write_c_array(source, art / "student_model_data.h", "g_student_model")
    console.print(f"artifacts: {', '.join(p.name for p in out.values())}")
    return out


# runtime of each non-PyTorch artifact variant, and the fp32 model it was made from
ARTIFACT_RUNTIMES = {"student_int8": ("ort_int8", "student"), "student_pruned_int8": ("ort_int8", "student_pruned"),
                     "student_lowrank_int8": ("ort_int8", "student_lowrank"), "student_qat": ("ort_int8", "student"),
                     "student_fp16": ("ort_fp16", "student"), "student_dynamic_int8": ("ort_dynamic_int8", "student"),
                     "student_tflite": ("tflite", "student"), "student_tflite_int8": ("tflite_int8", "student"),
                     "student_pte": ("executorch", "student")}


def _runner(runtime: str, path: Path, shape: tuple[int, ...], m) -> tuple:
    """(predict(x) -> logits array, latency dict) for an artifact in its own runtime."""
    if runtime.startswith("ort"):
        sess = ort_session(path, threads=m.threads)
        return (lambda x: ort_predict(sess, x)), ort_latency(sess, shape, m.batch_sizes, warmup=m.warmup, repeats=m.repeats)
    if runtime.startswith("tflite"):
        from .deploy.tflite import tflite_latency, tflite_predict

        return ((lambda x: tflite_predict(path, x, threads=m.threads)),
                tflite_latency(path, warmup=m.warmup, repeats=m.repeats, threads=m.threads))
    from .deploy.executorch import pte_latency, pte_predict

    return (lambda x: pte_predict(path, x)), pte_latency(path, shape, warmup=m.warmup, repeats=m.repeats)


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
            sparsity = _sparsity(model)
            if sparsity > 0.01:
                variants[name]["sparsity"] = sparsity
        for name, (runtime, source) in ARTIFACT_RUNTIMES.items():
            if name not in artifacts:
                continue
            status.update(f"measuring {name}")
            predict, lat = _runner(runtime, artifacts[name], shape, m)
            preds[name] = predict(test.x).argmax(1)
            agree = agreement(preds[name], preds[source])
            variants[name] = _variant(
                name, preds[name], y, spec, {runtime: lat}, runtime, model_name=variants[source]["model"],
                params=variants[source]["params"], macs=variants[source]["macs"], artifact=artifacts[name],
                run_dir=run_dir, extra={"agreement_with_fp32_student": agree, "fp32_source": source,
                                        "parity_flag": bool(agree < PARITY_MIN)})
            if agree < PARITY_MIN:
                console.print(f"[yellow]{name}: agrees with the fp32 {source} on {100 * agree:.1f}% of test "
                              f"predictions (< {100 * PARITY_MIN:.0f}%)[/]")
    for name, v in variants.items():
        v["agreement_with_teacher"] = agreement(preds[name], preds["teacher"])
        v["energy"] = _energy(recipe, name, v, artifacts)
    final = "student_int8" if "student_int8" in variants else "student"
    out = {
        "run": _run_facts(recipe, bundle, run_dir),
        "variants": variants,
        "ratios": _ratios(variants["teacher"], variants[final]) | {"compared": f"{final} vs teacher"},
        "claims": CLAIMS,
    }
    fit = _mcu(recipe, artifacts, variants, console)
    if fit:
        out["mcu"] = fit
    return out


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
    peak = peak_activation_memory(artifacts["student"], activation_bytes=1)
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
    v.update({"latency": latency, "per_class_accuracy": acc["per_class_accuracy"], "confusion": acc["confusion"]})
    v.update(extra)
    return v


def _label(name: str) -> str:
    """The display label of a variant: teacher_2 → "Teacher 2 (fp32)", assistant1 → "Assistant 1 (fp32)"."""
    if name in LABELS:
        return LABELS[name]
    for prefix, word in (("teacher_", "Teacher"), ("assistant", "Assistant"), ("peer_", "Peer")):
        if name.startswith(prefix) and name[len(prefix):].isdigit():
            return f"{word} {name[len(prefix):]} (fp32)"
    return name


def _model_name(recipe: Recipe, name: str, model: nn.Module) -> str:
    if not type(model).__module__.startswith("tinykd"):
        return type(model).__name__
    d = recipe.distill
    extra = {f"teacher_{i}": c for i, c in enumerate(d.teachers, start=2)}
    extra |= {f"assistant{i}": c for i, c in enumerate(d.assistants, start=1)}
    extra |= {f"peer_{i}": c for i, c in enumerate(d.peers, start=2)}
    cfg = recipe.teacher if name in ("teacher", "teacher_pruned") else extra.get(name, recipe.student)
    return cfg.model


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
                        "torch": torch.__version__, "threads": recipe.measure.threads, "system": platform.system(),
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
