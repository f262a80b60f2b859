"""Runs the stages of a recipe in order in one run directory: the only module that knows the order.

data → [microcontroller pre-check] → teacher (train or load) → [prune the teacher] → student from scratch
(baseline) → distilled student → [prune / low-rank / QAT-with-KD students] → ONNX export → int8 static
quantization → [fp16, dynamic int8, TFLite, ExecuTorch, C array] → measurement (accuracy, agreement, size, MACs,
latency, energy, microcontroller fit) → metrics.json, history.csv → report.html. Brackets: optional stages.
Each stage is a public function of ``tinykd.stages``; the run folder and resume are ``tinykd.stages.rundir``.

Under torchrun every process runs the training stages together (``tinykd.distributed``); rank 0 alone checks the
recipe, claims the run folder (or takes the one decided before the processes started), writes every file, and
exports, measures and reports; the other ranks return after the last training stage.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from rich.console import Console
from torch import nn

from . import distributed as dist
from .tracking import tracking
from .data.spec import DataBundle
from .distill.trainer import resolve_device
from .io import write_json
from .recipe import Recipe
from .stages import (CLAIMS, LABELS, PARITY_MIN, EnergyTracker, build_terms, compress, distill, export, measure,  # noqa: F401
                     preflight, train_scratch, train_teacher)
from .stages.data import check_source, load_data
from .stages.rundir import (RESUME_KEYS, STATUS, claim_run_dir, completed_metrics, new_run_dir,  # noqa: F401
                            open_run_dir, output_root, resumable, resume_recipe, run_status, set_status,
                            write_history)

_load_data = load_data  # the name tests and scripts knew it by
TOKENIZER = "tokenizer.json"  # a text run's tokenizer, learnt from its training texts


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


def run(recipe: Recipe, *, run_dir: str | Path | None = None, resume: bool = False, data: DataBundle | None = None,
        teacher: nn.Module | None = None, student: nn.Module | None = None, console: Console | None = None,
        progress: bool = True) -> RunResult:
    """Run every stage of ``recipe``. Custom ``data``, ``teacher`` or ``student`` modules replace the recipe's.

    Everything checkable is checked (``preflight``) before the run folder is claimed. The folder's status.json
    says whether the run is running, complete, failed (with the error) or interrupted; a resumed complete run
    returns its stored results and re-runs nothing. An exception raised after the folder exists carries it as
    ``err.run_dir``. Started by torchrun, it joins the process group; see the module's docstring."""
    console = console or Console(quiet=not progress)
    t_start = time.perf_counter()
    if dist.init() and not dist.is_main():
        console = Console(quiet=True)  # rank 0 prints the run
    for cfg in (recipe.teacher.train, recipe.student.train):
        resolve_device(cfg.device)  # a GPU asked for on a machine without one fails before anything is written
    opened: dict = {}
    run_dir, complete = dist.from_main(_open, recipe, run_dir, resume, data, teacher, student, console, opened)
    run_dir = Path(run_dir)
    if complete:
        return RunResult(run_dir, opened.get("metrics", {}), complete=True)
    with dist.together():  # the other ranks read the data themselves, with the tokenizer rank 0 saved
        bundle = opened.get("bundle") or data or load_data(
            recipe, console, tokenizer_path=run_dir / TOKENIZER if (run_dir / TOKENIZER).is_file() else None)
    try:
        with tracking(recipe, run_dir) as tracker:
            result = _stages(recipe, run_dir, bundle, teacher, student, console, progress, t_start)
            if tracker is not None:
                tracker.log_final(result.metrics)
    except BaseException as err:
        interrupted = isinstance(err, (KeyboardInterrupt, SystemExit))
        if dist.is_main():
            set_status(run_dir, "interrupted" if interrupted else "failed",
                       **({} if interrupted else {"error": str(err) or type(err).__name__}))
        with contextlib.suppress(AttributeError, TypeError):
            err.run_dir = run_dir
        raise
    if dist.is_main():
        set_status(run_dir, "complete")
    return result


def _open(recipe: Recipe, run_dir: str | Path | None, resume: bool, data: DataBundle | None, teacher: nn.Module | None,
          student: nn.Module | None, console: Console, opened: dict) -> tuple[str, bool]:
    """Check the recipe and the data, then claim (or reopen) the run folder and mark it running: (the folder, whether
    it holds a complete run already). The data bundle, and a complete run's metrics, go into ``opened``."""
    changes: list[str] = []
    if resume:
        run_dir, changes = resumable(run_dir, recipe)
        if run_status(run_dir)["status"] == "complete":
            opened["metrics"] = completed_metrics(run_dir, changes, console)
            return str(run_dir), True
    elif run_dir is None:
        output_root(recipe)
    if data is None:
        check_source(recipe.data.name, recipe.data.path, recipe.data.options, recipe, "data")
    saved = Path(run_dir) / TOKENIZER if resume else None  # a resumed text run reads its own tokenizer back
    bundle = data or load_data(recipe, console, tokenizer_path=saved if saved and saved.is_file() else None)
    preflight(recipe, bundle, teacher=teacher, student=student, console=console)
    run_dir = open_run_dir(recipe, run_dir, resume=resume, changes=changes, console=console)
    if bundle.tokenizer is not None and not (run_dir / TOKENIZER).is_file():
        bundle.tokenizer.save(run_dir / TOKENIZER)
    status = run_status(run_dir) if resume else {}
    set_status(run_dir, "running", **({"resumed_with": status.get("resumed_with", []) + changes} if changes else {}))
    processes = f" on {dist.world_size()} processes" if dist.active() else ""
    console.print(f"[bold]tinykd[/] run [cyan]{recipe.name}[/] → {run_dir}{processes}")
    opened["bundle"] = bundle
    return str(run_dir), False


def _stages(recipe: Recipe, run_dir: Path, bundle: DataBundle, teacher: nn.Module | None, student: nn.Module | None,
            console: Console, progress: bool, t_start: float) -> RunResult:
    """Every stage of the run, in order, in ``run_dir``."""
    torch.manual_seed(recipe.seed)
    terms = build_terms(recipe)  # built (and checked against the scheme) before any training
    tracked = EnergyTracker(recipe, run_dir)
    opts = dict(tracked=tracked, console=console, progress=progress)

    t = train_teacher(recipe, bundle, run_dir, teacher=teacher, **opts)
    models, histories = dict(t.models), list(t.history)
    if recipe.distill.scratch_baseline:
        scratch = train_scratch(recipe, bundle, run_dir, student=student, **opts)
        models["student_scratch"], histories = scratch.student, histories + scratch.history
    d = distill(recipe, bundle, run_dir, t.teaching, student=student, terms=terms, **opts)
    models |= d.models
    histories += d.history
    c = compress(recipe, bundle, run_dir, d.student, t.teaching, **opts)
    models |= c.models
    if not dist.is_main():  # the models are trained: rank 0 exports, measures and reports them
        return RunResult(run_dir, {}, histories, models)
    lm = bundle.spec.task == "causal_lm"
    if lm:
        from .stages.lm import export_lm, measure_lm

        exported = export_lm(recipe, bundle, run_dir, models, console=console)
        metrics = measure_lm(d.recipe, bundle, run_dir, models, exported, console=console)
    else:
        exported = export(recipe, bundle, run_dir, models, qat=c.qat, calibration=d.calibration, console=console)
        metrics = measure(d.recipe, bundle, run_dir, models, exported, console=console)
    metrics["run"].update({"helper_params": d.helper_params, "seconds": round(time.perf_counter() - t_start, 1)})
    metrics["scheme"] = d.scheme
    metrics["health"] = {"dead_units": {r["model"]: {"epoch": r["epoch"], "warning": r["dead_units"]}
                                        for r in histories if r.get("dead_units")}}
    compression = ({"prune_teacher": t.prune_rows} if t.pruned is not None else {}) | c.facts
    if compression:
        metrics["compression"] = compression
    if tracked.emissions:
        metrics["training_energy"] = tracked.emissions
    write_json(run_dir / "metrics.json", metrics)
    write_history(run_dir / "history.csv", histories)
    if recipe.report.enabled:
        from .report import write_report
        from .report.lm import write_lm_report
        with console.status("writing report"):
            (write_lm_report if lm else write_report)(run_dir, metrics, histories, d.recipe.to_yaml())
    return RunResult(run_dir, metrics, histories, models)
