"""An Optuna study over a recipe: every trial applies its values as recipe overrides and runs the stages it needs
(``tinykd.stages``), so each objective and constraint is measured, never estimated. The teacher is trained once per
study, keyed by a fingerprint of the settings that shape it, and every trial loads it by its checkpoint path.

Several workers (``tinykd search`` started more than once with one ``--study``) share the study through its
storage: a journal file in the search folder by default, or any SQLAlchemy URL. Together they run the requested
number of trials: a worker takes a new trial only while the study holds fewer, under a lock in the search folder.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from ..data.spec import DataBundle
from ..distill.callbacks import Callback
from ..errors import RecipeError, TinyKDError
from ..io import atomic_write, write_json
from ..recipe import Recipe
from .space import SearchPlan, check_space, check_storage, parse_search, probe_error, probe_recipes, with_values

JOURNAL = "study.journal"
LOCK = "study.lock"
MAX_FAILED_IN_A_ROW = 3  # a search stops when this many trials in a row fail: the space, not bad luck, is wrong


def require_optuna():
    try:
        import optuna
    except ImportError:
        raise TinyKDError("tinykd search needs Optuna, which is not installed",
                          "pip install 'tinykd[search]'") from None
    return optuna


@contextlib.contextmanager
def locked(path: Path):
    """An exclusive lock on ``path`` across the processes of this machine (POSIX ``flock``)."""
    try:
        import fcntl
    except ImportError:  # no flock: workers on this system rely on the storage's own locking
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def fingerprint(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def teacher_fingerprint(recipe: Recipe) -> str:
    """What the teacher depends on: its section, the data section, the seed and where relative paths start."""
    dump = recipe.model_dump(mode="json")
    return fingerprint({"teacher": dump["teacher"], "data": dump["data"], "seed": dump["seed"],
                        "base_dir": recipe.base_dir})


def study_fingerprint(recipe: Recipe, plan: SearchPlan) -> str:
    """What makes two workers' searches the same study: the recipe without the trial count, the space, the
    objectives and constraints."""
    dump = recipe.model_dump(mode="json")
    dump["search"] = {k: v for k, v in (dump.get("search") or {}).items() if k != "trials"}
    return fingerprint({"recipe": dump, "objectives": [dataclasses.asdict(o) for o in plan.objectives]})


class ReportToTrial(Callback):
    """Pruning: each epoch's validation accuracy goes to the Optuna trial, which may stop the student there."""

    def __init__(self, trial):
        self.trial = trial

    def on_epoch_end(self, trainer, epoch: int, train, row: dict) -> None:
        import optuna

        value = row.get("val_accuracy")
        if value is None:
            return
        self.trial.report(float(value), epoch)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"validation accuracy {100 * value:.2f} % after epoch {epoch}, behind the "
                                     "median of earlier trials")


class Infeasible(Exception):
    """The student cannot meet a constraint, known before it trains (the untrained int8 student's file and SRAM
    already exceed the board: they do not depend on the weights)."""


@dataclass
class SearchResult:
    """What a worker leaves: the search folder, the study's trials and the best of them."""

    folder: Path
    study_name: str
    storage: str
    plan: SearchPlan
    trials: list = field(default_factory=list)  # optuna FrozenTrial, every state
    best: list = field(default_factory=list)  # the best trial, or the Pareto front
    report: Path | None = None
    best_recipe: Path | None = None
    ran: int = 0  # trials this worker ran


class Searcher:
    """One worker of a study: the data and teacher it reuses across trials, and the trial loop."""

    def __init__(self, recipe: Recipe, plan: SearchPlan, folder: Path, console: Console, progress: bool):
        self.recipe, self.plan, self.folder = recipe, plan, Path(folder)
        self.console, self.progress = console, progress
        self._bundles: dict[str, DataBundle] = {}
        self._teachers: dict[str, str] = {}

    # ----- what trials reuse ------------------------------------------------------------------------------------
    def data(self, recipe: Recipe) -> DataBundle:
        """The recipe's data, loaded once per worker for each data section and seed."""
        from ..stages.data import check_source, load_data

        key = fingerprint({"data": recipe.model_dump(mode="json")["data"], "seed": recipe.seed,
                           "base_dir": recipe.base_dir})
        if key not in self._bundles:
            check_source(recipe.data.name, recipe.data.path, recipe.data.options, recipe, "data")
            bundle = load_data(recipe, self.console)
            if len(bundle.val) == 0:
                raise RecipeError("a search measures accuracy on the validation split, and it is empty",
                                  "set data.val_fraction above 0 (e.g. 0.1)", where="data.val_fraction")
            self._bundles[key] = bundle
        return self._bundles[key]

    def teacher(self, recipe: Recipe, bundle: DataBundle) -> str:
        """The checkpoint path of the teacher ``recipe`` asks for: its own ``teacher.checkpoint``, else one trained
        once per study in ``teachers/<fingerprint>/`` (a worker waits while another trains it)."""
        from ..stages import train_teacher

        if recipe.teacher.checkpoint:
            return recipe.teacher.checkpoint
        key = teacher_fingerprint(recipe)
        if key in self._teachers:
            return self._teachers[key]
        home = self.folder / "teachers" / key
        best = home / "teacher" / "best.safetensors"
        with locked(self.folder / "teachers" / f"{key}.lock"):
            state = home / "teacher" / "last.json"
            if not (best.is_file() and state.is_file() and json.loads(state.read_text()).get("finished")):
                home.mkdir(parents=True, exist_ok=True)
                atomic_write(home / "recipe.yaml", recipe.model_copy(update={"search": None}).to_yaml())
                self.console.print(f"training the study's teacher ({recipe.teacher.model}) in {home}")
                torch.manual_seed(recipe.seed)
                train_teacher(recipe.model_copy(update={"compress": recipe.compress.model_copy(
                    update={"prune_teacher": None})}), bundle, home, console=self.console, progress=self.progress)
            else:
                self.console.print(f"[dim]the study's teacher: {best}[/]")
        self._teachers[key] = str(best.resolve())
        return self._teachers[key]

    # ----- checks before any trial ------------------------------------------------------------------------------
    def preflight_space(self) -> None:
        """Each probe value (the ends of every range, every choice) builds: models, loss terms, layer paths. The board
        is left out here: a student too large for it is a constraint a trial measures, not a recipe error."""
        from ..stages import preflight

        extra = {"deploy.target_board": None}
        bundle = self.data(self.recipe)
        for d, value, probe in probe_recipes(self.recipe, self.plan, extra):
            try:
                preflight(probe, self.data(probe) if _data_changes(d.key) else bundle)
            except TinyKDError as err:
                raise probe_error(d, value, err) from None

    # ----- one trial --------------------------------------------------------------------------------------------
    def trial_settings(self, number: int) -> dict[str, Any]:
        """The settings every trial's recipe gets besides its values: its folder, no scratch baseline (the search
        measures distilled students), no per-trial report, and the board of the constraints."""
        out = {"name": f"trial-{number:04d}", "output_dir": str(self.folder / "trials"),
               "distill.scratch_baseline": False, "report.enabled": False}
        if self.plan.board is not None:
            out["deploy.target_board"] = self.plan.board
        return out

    def run_trial(self, trial) -> dict[str, Any]:
        """Apply the trial's values, run the stages, return what it measured (metrics, test numbers, folder)."""
        from ..stages import build_terms, compress, distill, export, measure, preflight, train_teacher
        from ..stages.rundir import set_status, write_history

        t0 = time.perf_counter()
        values = {d.key: d.suggest(trial) for d in self.plan.dimensions}
        trial.set_user_attr("values", values)
        extra = self.trial_settings(trial.number)
        recipe = with_values(self.recipe, values, extra)
        bundle = self.data(recipe)
        t_teacher = time.perf_counter()
        checkpoint = self.teacher(recipe, bundle)
        t_teacher = time.perf_counter() - t_teacher  # the study's cost, not this trial's: left out of trial_seconds
        if t_teacher > 1:
            trial.set_user_attr("teacher_seconds", round(t_teacher, 1))
        recipe = with_values(self.recipe, values, extra | {"teacher.checkpoint": checkpoint})
        run_dir = self.folder / "trials" / extra["name"]
        if run_dir.exists():  # a trial number is never reused in a study: this is left from a deleted study
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True)
        trial.set_user_attr("folder", str(run_dir))
        atomic_write(run_dir / "recipe.yaml", recipe.to_yaml())
        set_status(run_dir, "running")
        try:
            try:
                preflight(recipe, bundle)
            except TinyKDError as err:
                if err.where == "deploy.target_board" and self.plan.board is not None:
                    raise Infeasible(err.what) from None
                raise
            torch.manual_seed(recipe.seed)
            terms = build_terms(recipe)
            opts = dict(console=Console(quiet=True), progress=False)
            t = train_teacher(recipe, bundle, run_dir, **opts)
            callbacks = [ReportToTrial(trial)] if self.plan.pruning else None
            d = distill(recipe, bundle, run_dir, t.teaching, terms=terms, callbacks=callbacks, **opts)
            models = dict(t.models) | d.models
            c = compress(recipe, bundle, run_dir, d.student, t.teaching, **opts)
            models |= c.models
            exported = export(recipe, bundle, run_dir, models, qat=c.qat, calibration=d.calibration)
            metrics = measure(d.recipe, bundle, run_dir, models, exported)
            measured, test = trial_metrics(metrics, d, bundle, exported, self.plan,
                                           time.perf_counter() - t0 - t_teacher)
            metrics["search"] = {"study_folder": str(self.folder), "trial": trial.number, "values": values,
                                 "measured": measured, "test": test}
            metrics["scheme"] = d.scheme
            write_json(run_dir / "metrics.json", metrics)
            write_history(run_dir / "history.csv", list(t.history) + list(d.history))
        except BaseException as err:
            import optuna

            stopped = isinstance(err, (optuna.TrialPruned, Infeasible))
            set_status(run_dir, "pruned" if stopped else "interrupted" if isinstance(err, KeyboardInterrupt)
                       else "failed", **{"note" if stopped else "error": str(err) or type(err).__name__})
            raise
        set_status(run_dir, "complete")
        return {"measured": measured, "test": test}


def _data_changes(key: str) -> bool:
    return key.split(".")[0] in ("data", "seed")


def trial_metrics(metrics: dict, d, bundle: DataBundle, exported, plan: SearchPlan,
                  seconds: float) -> tuple[dict[str, float], dict[str, float]]:
    """The search's metrics of one trial (validation accuracy, sizes, latency, energy, microcontroller numbers) and,
    apart, its test accuracies (for the report of the best trials only)."""
    v = metrics["variants"]
    s, q = v["student"], v.get("student_int8")
    out = {"accuracy": float(d.result.best_val_accuracy), "fp32_size_kb": s["file_bytes"] / 1000,
           "params": s["params"], "macs": s["macs"], "latency_ms": metrics["deploy"]["latency_ms_b1"],
           "trial_seconds": round(seconds, 2)}
    test = {"accuracy": s["accuracy"]}
    if q is not None:
        out |= {"int8_accuracy": _val_accuracy(exported.artifacts["student_int8"], bundle),
                "int8_size_kb": q["file_bytes"] / 1000, "int8_latency_ms": q["latency_ms_b1"]}
        if (q.get("energy") or {}).get("total_uj") is not None:
            out["energy_uj"] = q["energy"]["total_uj"]
        test["int8_accuracy"] = q["accuracy"]
    mcu = metrics.get("mcu")
    if mcu:
        out |= {"flash_kb": mcu["flash_bytes"] / 1000, "sram_kb": mcu["peak_sram_bytes"] / 1000}
        if plan.board is not None:
            from ..deploy.mcu import get_board

            fit = mcu["boards"][get_board(plan.board).name]
            out["board_over_kb"] = max(-fit["flash_margin"], -fit["sram_margin"]) / 1000
    missing = [m for m in plan.metrics if m not in out]
    if missing:
        raise TinyKDError(f"this run does not measure {', '.join(missing)} (e.g. no int8 student, or token-id models "
                          "that have no microcontroller fit)", "choose metrics this recipe measures",
                          where="search.objectives")
    return out, test


def _val_accuracy(artifact: Path, bundle: DataBundle) -> float:
    """Top-1 accuracy of an exported artifact on the validation split (raw inputs: the graph standardises)."""
    from ..deploy.onnx import ort_predict, ort_session
    from ..deploy.preprocess import raw_inputs

    val = bundle.val
    x = (val.x, val.mask) if val.mask is not None else raw_inputs(val.x, bundle.info.get("normalize"))
    pred = ort_predict(ort_session(artifact), x).argmax(1)
    return float((torch.as_tensor(pred) == val.y).float().mean())


# --- the study --------------------------------------------------------------------------------------------------


def open_storage(plan: SearchPlan, folder: Path):
    """Optuna storage: a journal file in the search folder, or an SQLAlchemy URL (RDB storage)."""
    optuna = require_optuna()
    if plan.storage is None:
        from optuna.storages.journal import JournalFileBackend

        path = folder / JOURNAL
        return optuna.storages.JournalStorage(JournalFileBackend(str(path))), str(path)
    try:
        return optuna.storages.RDBStorage(plan.storage), plan.storage
    except Exception as err:  # noqa: BLE001 (SQLAlchemy raises many kinds for a bad URL or server)
        raise RecipeError(f"cannot open the study storage {plan.storage!r} ({type(err).__name__}: "
                          f"{str(err).splitlines()[0][:200]})", "check the URL, its database driver and the server",
                          where="search.storage") from None


def make_sampler(plan: SearchPlan, seed: int):
    optuna = require_optuna()
    if plan.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if plan.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(population_size=max(4, min(50, plan.trials // 3)), seed=seed)
    # TPE: a quarter of the trials (3 to 10) sampled at random first; the constant liar keeps parallel workers apart
    return optuna.samplers.TPESampler(n_startup_trials=min(10, max(3, plan.trials // 4)), seed=seed,
                                      constant_liar=True)


def make_pruner(plan: SearchPlan, epochs: int):
    """The median rule (a trial stops when its validation accuracy at an epoch is below the median of earlier
    trials' at that epoch) after 3 to 5 complete trials, never in the first third of the student's epochs."""
    optuna = require_optuna()
    if not plan.pruning:
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=min(5, max(3, plan.trials // 4)),
                                       n_warmup_steps=epochs // 3 + 1)  # the earliest epoch it may stop at


def open_study(recipe: Recipe, plan: SearchPlan, folder: Path, name: str, console: Console):
    """The study ``name`` in its storage, made on first use (with the recipe's own values enqueued as the first
    trial when ``search.baseline`` and the space holds them); a RecipeError when the stored study was made for
    another recipe, space or objectives."""
    optuna = require_optuna()
    storage, where = open_storage(plan, folder)
    mark = study_fingerprint(recipe, plan)
    with locked(folder / LOCK):
        study = optuna.create_study(study_name=name, storage=storage, directions=plan.directions,
                                    load_if_exists=True)
        made_for = study.user_attrs.get("tinykd")
        if made_for is None:
            study.set_user_attr("tinykd", {"fingerprint": mark, "objectives": [o.metric for o in plan.objectives],
                                           "space": [d.key for d in plan.dimensions]})
            if plan.baseline and not study.get_trials(deepcopy=False):
                _enqueue_baseline(study, recipe, plan, console)
        elif made_for.get("fingerprint") != mark:
            raise RecipeError(f"study '{name}' in {where} was made for another recipe, space or objectives "
                              f"(objectives {made_for.get('objectives')}, space {made_for.get('space')})",
                              "give this search another --study name, or run the recipe that made it",
                              where="search")
    study.pruner = make_pruner(plan, recipe.student.train.epochs)
    return study, where


def _enqueue_baseline(study, recipe: Recipe, plan: SearchPlan, console: Console) -> None:
    from .space import resolved_values

    own = resolved_values(recipe, plan)
    params, outside = {}, []
    for d in plan.dimensions:
        p = d.param(own[d.key]) if d.key in own else None
        if p is None:
            outside.append(f"{d.key} = {own.get(d.key, '(not set)')}")
        params[d.key] = p
    if outside:
        console.print(f"[dim]no baseline trial: the recipe's own values are outside the space ({'; '.join(outside)})[/]")
        return
    study.enqueue_trial(params, user_attrs={"baseline": True})


def search(recipe: Recipe, *, trials: int | None = None, study_name: str | None = None,
           folder: str | Path | None = None, storage: str | None = None, console: Console | None = None,
           progress: bool = True) -> SearchResult:
    """Run trials of ``recipe``'s search section until its study holds ``trials`` (default ``search.trials``), then
    write the search report (``report.html``, the Pareto figure) and the best trial's recipe (``best.yaml``) in the
    search folder (default ``<output_dir>/search-<study>``). Everything the search section or the space can get
    wrong is checked first, before the study is opened or anything trains."""
    from ..stages.rundir import output_root

    console = console or Console(quiet=not progress)
    plan = parse_search(recipe)
    plan = dataclasses.replace(plan, **({"trials": trials} if trials is not None else {}),
                               **({"storage": storage} if storage is not None else {}))
    if plan.trials < 1:
        raise TinyKDError(f"--trials must be at least 1, got {plan.trials}", "give --trials 1 or more")
    check_storage(plan.storage)
    check_space(recipe, plan)
    optuna = require_optuna()
    name = study_name or recipe.name
    if not name.strip() or any(c in name for c in "/\\\0") or name in (".", ".."):
        raise TinyKDError(f"--study {name!r} is not a plain name", "give a name without '/', e.g. --study widths")
    folder = Path(folder) if folder is not None else output_root(recipe) / f"search-{name}"
    searcher = Searcher(recipe, plan, folder, console, progress)
    searcher.preflight_space()  # before the search folder exists
    folder.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=optuna.exceptions.ExperimentalWarning)
        study, where = open_study(recipe, plan, folder, name, console)
        console.print(f"[bold]tinykd[/] search [cyan]{name}[/]: {plan.trials} trials in the study, "
                      f"{len(plan.dimensions)} setting(s), {plan.sampler} sampler, objectives "
                      + ", ".join(f"{o.metric} ({o.direction})" for o in plan.objectives)
                      + f" → {folder} (storage {where})")
        ran = _trials(study, searcher, console)
    from .report import write_search_report

    running = sum(t.state.name == "RUNNING" for t in study.get_trials(deepcopy=False))
    if running:
        console.print(f"{running} trial(s) still running in other workers: the last worker to finish writes the "
                      "final report")
    result = SearchResult(folder, name, where, plan, study.get_trials(deepcopy=False), ran=ran)
    return write_search_report(result, study, recipe, console)


def _trials(study, searcher: Searcher, console: Console) -> int:
    """Take trials while the study holds fewer than requested; a progress line per trial. Returns how many ran."""
    import optuna
    from optuna.trial import TrialState

    from .report import progress_line

    plan, ran, failed_in_a_row = searcher.plan, 0, 0
    while True:
        with locked(searcher.folder / LOCK):
            n = len(study.get_trials(deepcopy=False))
            if n >= plan.trials:
                break
            # a sampler seeded by the study's trial count: workers started together do not draw the same values,
            # and one worker draws what a single-worker search with the same seed would
            study.sampler = make_sampler(plan, plan.seed + n)
            trial = study.ask()
        if trial.number >= plan.trials:  # another machine's worker took the last one first (shared database)
            study.tell(trial, state=TrialState.FAIL)
            break
        t0 = time.perf_counter()
        state, values, note = TrialState.COMPLETE, None, ""
        try:
            out = searcher.run_trial(trial)
        except optuna.TrialPruned as err:
            state, note = TrialState.PRUNED, str(err) or "pruned"
        except Infeasible as err:
            state, note = TrialState.PRUNED, f"infeasible before training: {err}"
            trial.set_user_attr("infeasible", str(err))
        except TinyKDError as err:
            state, note = TrialState.FAIL, str(err)
            trial.set_user_attr("error", str(err))
            if failed_in_a_row + 1 >= MAX_FAILED_IN_A_ROW:
                study.tell(trial, state=state)
                raise TinyKDError(f"{MAX_FAILED_IN_A_ROW} trials in a row failed; the last: {err.what}",
                                  err.fix, where=err.where) from None
        except BaseException:
            study.tell(trial, state=TrialState.FAIL)
            raise
        else:
            measured = out["measured"]
            trial.set_user_attr("measured", measured)
            trial.set_user_attr("test", out["test"])
            for b in plan.bounds:
                trial.set_constraint(b.key, b.violation(measured[b.metric]))
            if plan.board is not None:
                trial.set_constraint("board", measured["board_over_kb"])
            values = [measured[o.metric] for o in plan.objectives]
        failed_in_a_row = failed_in_a_row + 1 if state == TrialState.FAIL else 0
        study.tell(trial, values if state == TrialState.COMPLETE else None, state=state)
        ran += 1
        console.print(progress_line(study, trial.number, plan, state, note, time.perf_counter() - t0))
    return ran
