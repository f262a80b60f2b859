"""Optional experiment tracking: MLflow and TensorBoard get every epoch of every model, the final metrics of every
variant, the recipe and the run's files.

The recipe's ``tracking`` section turns them on. While a run's stages execute, ``pipeline.run`` holds one
``Tracker``; the trainer reports each epoch's row to it (``log_epoch``: the total and per-term losses, validation
scores, learning rate and seconds, as ``<model>/<key>`` at step = epoch), live, so TensorBoard shows the curves while
the run trains. At the end the variants' numbers (accuracy or loss, sizes, latency, ...) are logged as
``final/<variant>/<key>``, and metrics.json, history.csv, recipe.yaml, report.html and the ONNX artifacts as MLflow
artifacts. By default everything stays in the run folder: ``<run>/tensorboard/`` (event files) and
``<run>/mlflow/`` (a SQLite store ``mlflow.db`` and its ``artifacts/``; browse with
``mlflow ui --backend-store-uri sqlite:///<run>/mlflow/mlflow.db``). ``tracking.mlflow_uri`` names another store (a
SQLite or other SQLAlchemy URL, an ``http(s)://`` server) that several runs share; the MLflow run id is kept in
``<run>/tracking.json``, so a resumed run continues its MLflow run. Under several processes rank 0 alone logs.
"""
from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator
from pathlib import Path

from . import distributed as dist
from .errors import RecipeError
from .io import read_json, write_json

EXTRA = "pip install 'tinykd[tracking]'"
_active: Tracker | None = None


def check(recipe) -> None:
    """A RecipeError, before anything is written, when a tracker the recipe asks for is not installed."""
    t = recipe.tracking
    for on, module, key in ((t.mlflow, "mlflow", "mlflow"), (t.tensorboard, "tensorboard", "tensorboard")):
        if not on:
            continue
        try:
            __import__(module)
        except ImportError:
            raise RecipeError(f"tracking.{key} is on, and the {module} package is not installed",
                              f"install the tracking extra: {EXTRA} (or set tracking.{key}: false)",
                              where=f"tracking.{key}") from None


def _numbers(prefix: str, value, out: dict[str, float], depth: int = 0) -> None:
    """The finite numeric leaves of a nested dict, keyed ``prefix/a/b``."""
    if isinstance(value, bool):
        return
    if isinstance(value, (int, float)):
        if math.isfinite(value):
            out[prefix] = float(value)
    elif isinstance(value, dict) and depth < 4:
        for k, v in value.items():
            _numbers(f"{prefix}/{k}", v, out, depth + 1)


def _params(recipe) -> dict[str, str]:
    """The recipe flattened to ``section.key`` strings (MLflow's params)."""
    out: dict[str, str] = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            out[prefix] = str(value)[:6000]
    walk("", recipe.model_dump(mode="json", exclude_none=True))
    return out


def _metric_name(name: str) -> str:
    """MLflow takes letters, digits, ``_ - . / `` and spaces in a metric name."""
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in name)


class Tracker:
    """The open trackers of one run (see the module docstring)."""

    def __init__(self, recipe, run_dir: Path):
        self.recipe, self.run_dir, self.cfg = recipe, Path(run_dir), recipe.tracking
        self.tb = None
        self.mlflow = None
        self.run_id: str | None = None

    def open(self) -> Tracker:
        if self.cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))
        if self.cfg.mlflow:
            self._open_mlflow()
        return self

    def _open_mlflow(self) -> None:
        import mlflow

        logging.getLogger("mlflow").setLevel(logging.WARNING)
        folder = self.run_dir / "mlflow"
        if self.cfg.mlflow_uri:
            uri, artifacts = self.cfg.mlflow_uri, None
        else:
            folder.mkdir(parents=True, exist_ok=True)
            uri, artifacts = f"sqlite:///{(folder / 'mlflow.db').resolve()}", (folder / "artifacts").resolve().as_uri()
        client = mlflow.MlflowClient(uri)
        name = self.cfg.experiment or self.recipe.name
        found = client.get_experiment_by_name(name)
        # A new experiment keeps its artifacts in this run's folder unless the store is a server that has its own.
        if artifacts is None and not uri.startswith(("http://", "https://", "databricks")):
            artifacts = (self.run_dir / "mlflow" / "artifacts").resolve().as_uri()
        experiment = found.experiment_id if found else client.create_experiment(name, artifact_location=artifacts)
        state = self.run_dir / "tracking.json"
        known = read_json(state).get("mlflow_run_id") if state.is_file() else None
        if known:
            try:
                client.get_run(known)
            except Exception:  # noqa: BLE001 (a store that lost the run: start a new one)
                known = None
        run = client.get_run(known) if known else client.create_run(experiment, run_name=self.recipe.name,
                                                                    tags={"tinykd.run_dir": str(self.run_dir)})
        self.mlflow, self.run_id = client, run.info.run_id
        write_json(state, {"mlflow_run_id": self.run_id, "mlflow_uri": uri})
        if not known:
            params = _params(self.recipe)
            items = [mlflow.entities.Param(k, v) for k, v in params.items()]
            for i in range(0, len(items), 100):
                client.log_batch(self.run_id, params=items[i:i + 100])
        else:
            client.update_run(self.run_id, status="RUNNING")

    def log_epoch(self, label: str, row: dict) -> None:
        step = int(row.get("epoch", 0))
        values: dict[str, float] = {}
        for k, v in row.items():
            if k not in ("epoch", "model"):
                _numbers(f"{label}/{k}", v, values)
        self._log(values, step)

    def _log(self, values: dict[str, float], step: int) -> None:
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(k, v, step)
            self.tb.flush()
        if self.mlflow is not None and values:
            import mlflow

            items = [mlflow.entities.Metric(_metric_name(k), v, 0, step) for k, v in values.items()]
            for i in range(0, len(items), 500):
                self.mlflow.log_batch(self.run_id, metrics=items[i:i + 500])

    def log_final(self, metrics: dict) -> None:
        values: dict[str, float] = {}
        for name, variant in (metrics.get("variants") or {}).items():
            _numbers(f"final/{name}", variant, values)
        _numbers("final/ratios", metrics.get("ratios") or {}, values)
        self._log(values, 0)
        if self.mlflow is not None:
            for name in ("metrics.json", "history.csv", "recipe.yaml", "report.html"):
                if (self.run_dir / name).is_file():
                    self.mlflow.log_artifact(self.run_id, str(self.run_dir / name))
            art = self.run_dir / "artifacts"
            if art.is_dir():
                self.mlflow.log_artifacts(self.run_id, str(art), "artifacts")

    def close(self, status: str) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.mlflow is not None:
            self.mlflow.set_terminated(self.run_id, status=status)


@contextlib.contextmanager
def tracking(recipe, run_dir: Path) -> Iterator[Tracker | None]:
    """The run's Tracker while the block runs (None when the recipe tracks nothing, and on ranks other than 0); the
    MLflow run ends FINISHED, FAILED or KILLED (interrupted) with the block."""
    global _active
    t = recipe.tracking
    if not (t.mlflow or t.tensorboard) or not dist.is_main():
        yield None
        return
    tracker = Tracker(recipe, run_dir).open()
    _active, status = tracker, "FAILED"
    try:
        yield tracker
        status = "FINISHED"
    except (KeyboardInterrupt, SystemExit):
        status = "KILLED"
        raise
    finally:
        _active = None
        tracker.close(status)


def log_epoch(label: str, row: dict) -> None:
    """One epoch's row of the model ``label`` to the run's trackers (nothing when none is open)."""
    if _active is not None:
        _active.log_epoch(label, row)
