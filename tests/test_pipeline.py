"""End to end: a tiny recipe produces every artifact, a faithful int8 student, and resumes exactly."""
import csv
import json

import numpy as np
import pytest

from tinykd.deploy.onnx import ort_predict, ort_session
from tinykd.distill.trainer import Trainer
from tinykd.pipeline import resume_recipe, run
from tinykd.recipe import load_recipe

TINY = {
    "name": "tiny",
    "data": {"name": "digits"},
    "teacher": {"model": "cnn", "kwargs": {"widths": [16, 32], "hidden": 64},
                "train": {"epochs": 4, "batch_size": 64, "lr": 0.005}},
    "student": {"model": "cnn", "kwargs": {"widths": [4, 8], "hidden": 16},
                "train": {"epochs": 4, "batch_size": 64, "lr": 0.01}},
    "distill": {"losses": [{"name": "kd", "temperature": 4.0, "alpha": 0.9}]},
    "quantize": {"calibration_samples": 128},
    "measure": {"warmup": 2, "repeats": 10, "batch_sizes": [1, 8]},
}


# The shared run and its resumed copy train on the CPU, where resume is bit-exact (on a GPU some kernels are not).
ON_CPU = ["teacher.train.device=cpu", "student.train.device=cpu"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    return run(load_recipe(TINY, [f"output_dir={out}", *ON_CPU]), progress=False)


def test_every_artifact_is_written(tiny_run):
    d = tiny_run.run_dir
    for rel in ["recipe.yaml", "metrics.json", "history.csv", "report.html", "artifacts/teacher.onnx",
                "artifacts/student.onnx", "artifacts/student.int8.onnx", "artifacts/student_scratch.onnx",
                "teacher/best.safetensors", "teacher/last.safetensors", "teacher/last.json",
                "student/best.safetensors", "student_scratch/last.json"]:
        assert (d / rel).is_file(), rel
    figures = sorted(p.name for p in (d / "figures").glob("*.png"))
    assert len(figures) == 6, figures
    html = (d / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 6


def test_metrics_schema_and_values(tiny_run):
    m = json.loads((tiny_run.run_dir / "metrics.json").read_text())
    for name in ["teacher", "student_scratch", "student", "student_int8"]:
        v = m["variants"][name]
        for key in ["accuracy", "macro_f1", "params", "file_bytes", "macs", "latency_ms_b1", "agreement_with_teacher"]:
            assert v[key] is not None, (name, key)
        assert 0.0 <= v["accuracy"] <= 1.0
    v = m["variants"]
    assert v["teacher"]["agreement_with_teacher"] == 1.0
    assert v["teacher"]["params"] > 5 * v["student"]["params"]
    assert v["teacher"]["macs"] > v["student"]["macs"] > 0
    assert v["student_int8"]["file_bytes"] < v["student"]["file_bytes"]
    assert v["teacher"]["accuracy"] > 0.8  # digits: 10 classes, chance 0.1
    # The ratios compare the artifact to deploy: the fastest of the distilled student's artifacts that passes parity.
    dep, r = m["deploy"], m["ratios"]
    final = v[dep["variant"]]
    passing = [c for c in dep["candidates"] if c["passes_parity"]]
    assert {c["variant"] for c in dep["candidates"]} == {"student", "student_int8"}
    if passing:
        assert dep["latency_ms_b1"] == min(c["latency_ms_b1"] for c in passing)
    assert r["compared"] == f"{dep['variant']} vs teacher"
    assert r["size_reduction"] == pytest.approx(v["teacher"]["file_bytes"] / final["file_bytes"])
    assert r["accuracy_retention"] == pytest.approx(final["accuracy"] / v["teacher"]["accuracy"])
    # deployed speed-up: each side in its fastest runtime; the same-runtime ones are labelled apart
    t_best = min(v["teacher"]["latency"][rt]["b1"]["median_ms"] for rt in ("pytorch", "ort_fp32"))
    assert v["teacher"]["latency_ms_b1_best"] == t_best
    assert r["speedup_b1"] == pytest.approx(t_best / dep["latency_ms_b1"])
    s = m["speedups"]
    assert s["same_runtime"]["b1"] == pytest.approx(v["teacher"]["latency"]["ort_fp32"]["b1"]["median_ms"]
                                                    / v["student"]["latency"]["ort_fp32"]["b1"]["median_ms"])
    assert s["int8_vs_fp32"]["b8"] == pytest.approx(v["student"]["latency"]["ort_fp32"]["b8"]["median_ms"]
                                                    / v["student_int8"]["latency"]["ort_int8"]["b8"]["median_ms"])
    assert s["deployed"]["b1"] == pytest.approx(r["speedup_b1"])
    assert all(s[k]["what"] for k in s)
    assert set(v["teacher"]["latency"]) == {"pytorch", "ort_fp32"}
    assert set(v["teacher"]["latency"]["pytorch"]) == {"b1", "b8"}
    # interleaved: every timing has its rounds, their spread and a noise flag, and the run says how noisy it was
    b1 = v["student_int8"]["latency"]["ort_int8"]["b1"]
    assert b1["rounds"] == 5 and len(b1["round_medians_ms"]) == 5 and b1["round_spread"] >= 1.0
    assert isinstance(b1["noisy"], bool)
    q = m["latency_quality"]
    assert q["rounds"] == 5 and q["max_round_spread"] >= 1.0 and isinstance(q["noisy"], list)
    facts = m["run"]["machine"]
    assert facts["train_threads"] >= 1 and facts["available_cores"] >= 1 and facts["measure_threads"] == 1


def test_int8_student_agrees_with_fp32_student(tiny_run):
    d = tiny_run.run_dir
    m = json.loads((d / "metrics.json").read_text())
    assert m["variants"]["student_int8"]["agreement_with_fp32_student"] >= 0.95
    assert m["variants"]["student"]["onnx_agreement"] == 1.0
    # Independently: run both ONNX files on the raw (never standardised) test inputs, as a device would feed them:
    # the graphs standardise their inputs themselves and reach the reported accuracy.
    from tinykd.data import load_dataset
    test = load_dataset("digits", seed=0, normalize=False).test
    fp32 = ort_predict(ort_session(d / "artifacts/student.onnx"), test.x).argmax(1)
    int8 = ort_predict(ort_session(d / "artifacts/student.int8.onnx"), test.x).argmax(1)
    assert np.mean(fp32 == int8) >= 0.95
    y = test.y.numpy()
    # the pipeline feeds x·std + mean of the standardised split, equal to the file's values up to float rounding,
    # which can move a prediction that sits on a decision boundary
    assert np.mean(int8 == y) == pytest.approx(m["variants"]["student_int8"]["accuracy"], abs=1.5 / len(y))
    assert np.mean(fp32 == y) == pytest.approx(m["variants"]["student"]["accuracy"], abs=1.5 / len(y))


def test_artifacts_state_their_preprocessing(tiny_run):
    from tinykd.data import load_dataset
    from tinykd.deploy.preprocess import METADATA_KEY, read_metadata

    art = tiny_run.run_dir / "artifacts"
    spec = json.loads((art / "preprocess.json").read_text())
    norm = load_dataset("digits", seed=0).info["normalize"]
    assert spec["normalize_in_graph"]["mean"] == pytest.approx(norm["mean"])
    assert spec["normalize_in_graph"]["std"] == pytest.approx(norm["std"])
    assert spec["input"]["shape"] == ["batch", 1, 8, 8] and spec["output"]["shape"] == ["batch", 10]
    for f in ("student.onnx", "student.int8.onnx", "teacher.onnx"):
        assert read_metadata(art / f) == spec, (f, METADATA_KEY)
    q = json.loads((tiny_run.run_dir / "metrics.json").read_text())["variants"]["student_int8"]["quantization"]
    assert q["target"] == 0.995 and q["checked_on"] > 0 and isinstance(q["kept_fp32"], list)


def test_history_has_per_term_losses(tiny_run):
    with open(tiny_run.run_dir / "history.csv") as f:
        rows = list(csv.DictReader(f))
    student = [r for r in rows if r["model"] == "student"]
    assert [int(r["epoch"]) for r in student] == [1, 2, 3, 4]
    assert {"loss/kd", "loss/kd.soft", "loss/kd.hard", "val_accuracy"} <= set(rows[0])
    assert {r["model"] for r in rows} == {"teacher", "student_scratch", "student"}


def test_interrupted_run_resumes_to_the_same_metrics(tiny_run, tmp_path, monkeypatch):
    recipe = load_recipe(TINY, [f"output_dir={tmp_path}", "report.enabled=false", *ON_CPU])
    original = Trainer._log

    def crash_in_student(self, row):
        original(self, row)
        if self.label == "student" and row["epoch"] == 2:
            raise KeyboardInterrupt
    monkeypatch.setattr(Trainer, "_log", crash_in_student)
    with pytest.raises(KeyboardInterrupt):
        run(recipe, progress=False)
    monkeypatch.setattr(Trainer, "_log", original)
    run_dir = tmp_path / "tiny"
    assert not (run_dir / "metrics.json").exists()
    resumed = run(resume_recipe(run_dir), run_dir=run_dir, resume=True, progress=False)
    for name in ["teacher", "student_scratch", "student"]:
        assert resumed.metrics["variants"][name]["accuracy"] == tiny_run.metrics["variants"][name]["accuracy"]
    a = [r["train_loss"] for r in resumed.history if r["model"] == "student"]
    b = [r["train_loss"] for r in tiny_run.history if r["model"] == "student"]
    assert a == b


def test_existing_run_is_never_overwritten(tiny_run):
    recipe = load_recipe(TINY, [f"output_dir={tiny_run.run_dir.parent}"])
    from tinykd.pipeline import new_run_dir
    assert new_run_dir(recipe) == tiny_run.run_dir.parent / "tiny-2"
    from tinykd.errors import RecipeError
    with pytest.raises(RecipeError, match=r"(?s)already exists.*--resume"):
        run(recipe, run_dir=tiny_run.run_dir, progress=False)


EDGE = {**TINY, "name": "edge",
        "teacher": {**TINY["teacher"], "train": {**TINY["teacher"]["train"], "epochs": 2}},
        "student": {**TINY["student"], "train": {**TINY["student"]["train"], "epochs": 2}},
        "compress": {"prune_student": {"method": "structured", "amount": 0.5, "finetune_epochs": 1},
                     "lowrank": {"energy": 0.8, "finetune_epochs": 1},
                     "qat": {"epochs": 1}},
        "deploy": {"target_board": "nano33ble", "boards": ["nano33ble", "pico"], "fp16": True, "dynamic_int8": True}}


def test_compression_and_deployment_stages_add_measured_variants(tmp_path):
    """Each optional stage appears as a variant measured in its own runtime, with energy and an MCU verdict."""
    res = run(load_recipe(EDGE, [f"output_dir={tmp_path}"]), progress=False)
    m = res.metrics
    v = m["variants"]
    for name, runtime in [("student_pruned", "pytorch"), ("student_pruned_int8", "ort_int8"),
                          ("student_lowrank", "pytorch"), ("student_lowrank_int8", "ort_int8"),
                          ("student_qat", "ort_int8"), ("student_fp16", "ort_fp16"),
                          ("student_dynamic_int8", "ort_dynamic_int8")]:
        assert v[name]["runtime"] == runtime, name
        assert (res.run_dir / v[name]["artifact"]).is_file()
        assert 0.0 <= v[name]["accuracy"] <= 1.0
        assert v[name]["energy"]["label"] == "estimate" and v[name]["energy"]["total_uj"] > 0
    assert v["student_pruned"]["macs"] < v["student"]["macs"]  # channels really removed
    assert v["student_pruned"]["params"] < v["student"]["params"]
    assert v["student_fp16"]["agreement_with_fp32_student"] > 0.95
    assert v["student_int8"]["energy"]["total_uj"] < v["teacher"]["energy"]["total_uj"]
    assert set(m["mcu"]["boards"]) == {"nano33ble", "pico"} and m["mcu"]["target_board"] == "nano33ble"
    assert m["mcu"]["boards"]["nano33ble"]["fits"] and m["mcu"]["flash_bytes"] == v["student_int8"]["file_bytes"]
    assert set(m["compression"]) == {"prune_student", "lowrank", "qat"}
    html = res.report.read_text()
    assert "Deployment" in html and "nano33ble" in html.lower() or "Nano 33" in html


def test_target_board_that_cannot_fit_fails_before_training(tmp_path):
    from tinykd.errors import TinyKDError
    tiny_board = {"name": "tiny_mcu", "flash_kb": 70, "sram_kb": 17}
    with pytest.raises(TinyKDError, match=r"deploy.target_board: the int8 student \(cnn\) cannot fit tiny_mcu") as err:
        run(load_recipe({**TINY, "deploy": {"target_board": tiny_board}}, [f"output_dir={tmp_path}"]), progress=False)
    assert "fix:" in str(err.value)
    assert not list(tmp_path.glob("*/teacher/*.safetensors"))  # no training happened


def test_a_gpu_asked_for_without_one_fails_before_anything_is_written(tmp_path, monkeypatch):
    import torch

    from tinykd.errors import TrainingError
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(TrainingError, match=r"train.device is 'cuda:0' but torch sees no CUDA GPU") as err:
        run(load_recipe(TINY, [f"output_dir={tmp_path}", "student.train.device=cuda:0"]), progress=False)
    assert "set train.device to 'auto' or 'cpu'" in str(err.value)
    assert not any(tmp_path.iterdir())  # no run folder was made


def test_a_labelling_budget_feeds_the_rest_to_the_distilled_student_alone(tmp_path, monkeypatch):
    seen = {}
    original = Trainer.__init__

    def spy(self, model, terms, cfg, *args, **kwargs):
        original(self, model, terms, cfg, *args, **kwargs)
        seen[kwargs["label"]] = None if kwargs.get("transfer") is None else len(kwargs["transfer"])
    monkeypatch.setattr(Trainer, "__init__", spy)
    recipe = load_recipe(TINY, [f"output_dir={tmp_path}", "data.labelled=300", "teacher.train.epochs=1",
                                "student.train.epochs=1", "report.enabled=false", "quantize.enabled=false",
                                "measure.repeats=5", *ON_CPU])
    result = run(recipe, progress=False)
    sizes = result.metrics["run"]["split_sizes"]
    assert sizes["train"] == 300 and sizes["unlabelled"] > 0
    assert seen == {"teacher": None, "student_scratch": None, "student": sizes["unlabelled"]}


def test_every_runtime_takes_raw_inputs(tmp_path):
    """TFLite and ExecuTorch artifacts carry the standardisation too: raw test inputs give their reported accuracy,
    and every runtime of every variant is timed."""
    pytest.importorskip("ai_edge_litert")
    pytest.importorskip("executorch")
    from tinykd.data import load_dataset
    from tinykd.deploy.executorch import pte_predict
    from tinykd.deploy.tflite import tflite_predict

    recipe = load_recipe(TINY, [f"output_dir={tmp_path}", "teacher.train.epochs=1", "student.train.epochs=2",
                                "report.enabled=false", "measure.repeats=5", "deploy.tflite=true",
                                "deploy.executorch=true", *ON_CPU])
    res = run(recipe, progress=False)
    art, v = res.run_dir / "artifacts", res.metrics["variants"]
    test = load_dataset("digits", seed=0, normalize=False).test
    y = test.y.numpy()
    for name, predict in (("student_tflite", lambda: tflite_predict(art / "student.tflite", test.x)),
                          ("student_tflite_int8", lambda: tflite_predict(art / "student.int8.tflite", test.x)),
                          ("student_pte", lambda: pte_predict(art / "student.pte", test.x))):
        assert np.mean(predict().argmax(1) == y) == pytest.approx(v[name]["accuracy"], abs=1.5 / len(y)), name
    for name in ("student_tflite", "student_pte"):
        assert v[name]["agreement_with_fp32_student"] >= 0.99
        assert v[name]["latency"][v[name]["runtime"]]["b1"]["rounds"] == 5
    assert {c["variant"] for c in res.metrics["deploy"]["candidates"]} >= {"student", "student_int8", "student_tflite",
                                                                          "student_tflite_int8", "student_pte"}


def test_a_recipe_names_its_classes_and_the_run_says_where_each_split_came_from(tmp_path, monkeypatch):
    import io

    from rich.console import Console

    from test_data import FASHION, _mnist_folder
    from tinykd.pipeline import _load_data

    (tmp_path / "recipes").mkdir()
    _mnist_folder(tmp_path / "recipes" / "m")  # 40 train images (labels 0..3) and 10 t10k images
    (tmp_path / "recipes" / "classes.txt").write_text("\n".join(FASHION) + "\n")
    (tmp_path / "recipes" / "own.yaml").write_text("data:\n  name: idx\n  path: m\n  class_names: classes.txt\n"
                                                   "  limit: 40\n")
    monkeypatch.chdir(tmp_path)  # relative paths resolve from the recipe's folder
    said = io.StringIO()
    bundle = _load_data(load_recipe(tmp_path / "recipes" / "own.yaml"), Console(file=said, width=300))
    assert bundle.spec.class_names == tuple(FASHION)
    assert bundle.info["sizes"] == {"train": 29, "val": 3, "test": 8}  # 40 in all: 32 of the 40 train, 8 of the 10 test
    out = said.getvalue()
    assert "train 29, val 3, test 8" in out
    assert "test: predefined: t10k-images-idx3-ubyte.gz + t10k-labels-idx1-ubyte.gz (limit: 8 of its 10 samples" in out
    assert "not applied: test_fraction 0.2: the test split is the data's own" in out


def test_layers_a_term_cannot_compare_fail_before_anything_trains(tmp_path, monkeypatch):
    """A term whose helpers cannot be built for these layers (here CAT-KD on a classifier behind a hidden layer) is a
    recipe error raised before the run folder exists or the teacher trains."""
    from tinykd.errors import RecipeError

    trained = []
    monkeypatch.setattr(Trainer, "fit", lambda self, *a, **k: trained.append(self.label))
    recipe = load_recipe(TINY, [f"output_dir={tmp_path}", "distill.losses=[{name: ce}, {name: catkd}]", *ON_CPU])
    with pytest.raises(RecipeError) as err:
        run(recipe, progress=False)
    assert "distill.losses[1]" in str(err.value)
    assert trained == [] and not any(tmp_path.iterdir())
