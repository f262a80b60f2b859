"""Experiment tracking: MLflow and TensorBoard receive every epoch and the final metrics of a run, inside its folder."""
import csv
import json
import sys

import pytest

from tinykd.errors import RecipeError
from tinykd.pipeline import run
from tinykd.recipe import load_recipe

pytest.importorskip("mlflow")
pytest.importorskip("tensorboard")

TINY = {
    "name": "tracked",
    "data": {"name": "digits"},
    "teacher": {"model": "mlp", "kwargs": {"hidden": [32]}, "train": {"epochs": 2, "batch_size": 64}},
    "student": {"model": "mlp", "kwargs": {"hidden": [16]}, "train": {"epochs": 3, "batch_size": 64}},
    "distill": {"losses": [{"name": "kd", "temperature": 4.0, "alpha": 0.9}]},
    "quantize": {"calibration_samples": 64},
    "measure": {"warmup": 1, "repeats": 5, "batch_sizes": [1]},
    "tracking": {"mlflow": True, "tensorboard": True},
}


def test_mlflow_and_tensorboard_get_every_epoch_the_final_metrics_and_the_files(tmp_path, monkeypatch):
    import mlflow
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.chdir(tmp_path)  # anything written to the current folder would show here
    result = run(load_recipe(TINY, [f"output_dir={tmp_path / 'runs'}"]), progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]  # nothing outside the run folder
    run_dir = result.run_dir
    state = json.loads((run_dir / "tracking.json").read_text())
    client = mlflow.MlflowClient(state["mlflow_uri"])
    mrun = client.get_run(state["mlflow_run_id"])
    assert mrun.info.status == "FINISHED" and mrun.data.params["student.train.epochs"] == "3"
    with open(run_dir / "history.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    student = [r for r in rows if r["model"] == "student"]
    logged = client.get_metric_history(mrun.info.run_id, "student/train_loss")
    assert [m.step for m in logged] == [1, 2, 3]
    assert [m.value for m in logged] == pytest.approx([float(r["train_loss"]) for r in student])
    acc = result.metrics["variants"]["student"]["accuracy"]
    assert mrun.data.metrics["final/student/accuracy"] == pytest.approx(acc)
    artifacts = {a.path for a in client.list_artifacts(mrun.info.run_id)}
    assert {"metrics.json", "history.csv", "recipe.yaml", "report.html", "artifacts"} <= artifacts
    assert mrun.info.artifact_uri.startswith((run_dir / "mlflow").resolve().as_uri())
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    teacher = [e.value for e in events.Scalars("teacher/train_loss")]
    assert teacher == pytest.approx([float(r["train_loss"]) for r in rows if r["model"] == "teacher"], rel=1e-6)
    # A resumed run continues its MLflow run (the id kept in tracking.json), not a new one.
    from tinykd.tracking import Tracker

    again = Tracker(result.recipe if hasattr(result, "recipe") else load_recipe(TINY), run_dir).open()
    assert again.run_id == mrun.info.run_id and client.get_run(again.run_id).info.status == "RUNNING"
    again.close("FINISHED")
    assert len(client.search_runs([mrun.info.experiment_id])) == 1


def test_a_tracker_that_is_not_installed_is_named_before_the_run_starts(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow now raises ImportError
    with pytest.raises(RecipeError, match="(?s)mlflow package is not installed.*tinykd\\[tracking\\]"):
        run(load_recipe(TINY, [f"output_dir={tmp_path / 'runs'}"]), progress=False)
    assert not (tmp_path / "runs" / "tracked").exists()
