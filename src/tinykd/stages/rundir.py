"""The run folder: claiming a new one atomically, its status.json, continuing an earlier run (which settings a
resume may change) and the files written around the stages (recipe.yaml, history.csv)."""
from __future__ import annotations

import contextlib
import csv
import datetime as dt
import io
import itertools
import os
import re
import tempfile
from pathlib import Path

from rich.console import Console

from ..errors import CheckpointError, RecipeError, StorageError, TinyKDError
from ..io import atomic_write, read_json, storage_error, write_json
from ..recipe import Recipe, load_recipe

STATUS = "status.json"  # {"status": "running" | "complete" | "failed" | "interrupted", "error": ..., ...}
# What `tinykd run --resume DIR key=value` may change: settings that steer the stages still to run and change no
# model that exists (see README, Errors). The new values go into the run's recipe.yaml; status.json lists them.
RESUME_KEYS = re.compile(r"(teacher|student|distill\.teachers\.\d+)\.train\.(lr|grad_clip)|measure\.\w+|report\.enabled")


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


def given_run_dir(run_dir: Path) -> Path:
    """A run folder chosen by the caller (``run(run_dir=...)``): made when missing, refused when it holds anything."""
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise RecipeError(f"run directory '{run_dir}' already exists and is not empty",
                          f"use `tinykd run --resume {run_dir}` to continue it, or choose another name")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise storage_error(run_dir / STATUS, exc) from None
    return run_dir


def open_run_dir(recipe: Recipe, run_dir: str | Path | None, *, resume: bool, changes: list[str],
                 console: Console) -> Path:
    """The folder the stages write in, with the recipe saved in it: a new one (claimed, or the caller's empty one),
    or the resumed one, whose recipe.yaml takes the changed settings."""
    if resume:
        run_dir = Path(run_dir)
        if changes:
            atomic_write(run_dir / "recipe.yaml", recipe.to_yaml())
            console.print(f"[yellow]resuming with {', '.join(changes)}[/]")
        return run_dir
    run_dir = claim_run_dir(recipe) if run_dir is None else given_run_dir(Path(run_dir))
    try:
        atomic_write(run_dir / "recipe.yaml", recipe.to_yaml())
        if recipe.base_dir:
            atomic_write(run_dir / "base_dir.txt", recipe.base_dir)
    except TinyKDError as err:
        err.run_dir = run_dir
        raise
    return run_dir


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


def set_status(run_dir: Path, status: str, **facts) -> None:
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
    base = run_dir / "base_dir.txt"
    return load_recipe(saved, overrides).model_copy(
        update={"base_dir": base.read_text().strip() if base.is_file() else None})


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


def resume_changes(recipe: Recipe, run_dir: Path) -> list[str]:
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


def resumable(run_dir: str | Path | None, recipe: Recipe) -> tuple[Path, list[str]]:
    """The run folder to continue and the settings changed on resume, after checking that it is a run folder that
    can be written and that the changes are allowed."""
    if run_dir is None or not Path(run_dir).is_dir():
        raise RecipeError(f"cannot resume: the run folder '{run_dir}' does not exist",
                          "pass an existing runs/<name> folder", where="--resume")
    run_dir = Path(run_dir)
    if not (run_dir / "recipe.yaml").is_file():
        raise RecipeError(f"'{run_dir}' is not a tinykd run directory (no recipe.yaml in it)",
                          "pass the folder printed by the interrupted run, e.g. runs/default", where="--resume")
    changes = resume_changes(recipe, run_dir)
    if run_status(run_dir)["status"] != "complete":
        try:
            with tempfile.TemporaryFile(dir=run_dir):
                pass
        except OSError as exc:
            raise StorageError(f"cannot resume '{run_dir}': the folder is not writable ({exc.strerror or exc})",
                               f"a resumed run writes its checkpoints there: make it writable (chmod -R u+w {run_dir}), "
                               "or copy it and resume the copy") from None
    return run_dir, changes


def completed_metrics(run_dir: Path, changes: list[str], console: Console) -> dict:
    """The stored metrics of a resumed run that had already finished: re-run and overwritten never."""
    if changes:
        raise RecipeError(f"run '{run_dir}' is complete; {', '.join(changes)} would need new results",
                          "start a new run with that setting (results of a finished run are never overwritten)",
                          where="--resume")
    if not (run_dir / "metrics.json").is_file():
        raise CheckpointError(f"run '{run_dir}' is marked complete but has no metrics.json",
                              f"delete {run_dir / STATUS} to resume the run and measure it again")
    console.print(f"run {run_dir} is already complete: nothing was re-run or overwritten")
    return read_json(run_dir / "metrics.json")


def write_history(path: Path, rows: list[dict]) -> None:
    """Every training row of the run as CSV; columns in the order they first appear."""
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(path, buf.getvalue())
