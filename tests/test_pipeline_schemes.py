"""Schemes from a recipe (distill.scheme): multi-teacher with the teacher-output cache, a teacher-assistant chain,
data-free DAFL; each runs end to end through the pipeline and shows up in metrics.json and the report."""
import json

import pytest

from tinykd.errors import RecipeError
from tinykd.io import load_state_dict
from tinykd.pipeline import run
from tinykd.recipe import load_recipe

from test_pipeline import TINY

# The end-to-end tiny recipe (digits, cnn teacher → cnn student), shortened: no scratch baseline, fewer epochs.
BASE = ["name=scheme", "teacher.train.epochs=3", "student.train.epochs=3", "distill.scratch_baseline=false",
        "quantize.calibration_samples=64", "measure.warmup=1", "measure.repeats=5", "measure.batch_sizes=[1]"]


def _run(tmp_path, *overrides):
    return run(load_recipe(TINY, [f"output_dir={tmp_path}", *BASE, *overrides]), progress=False)


def test_multi_teacher_with_cache(tmp_path):
    res = _run(tmp_path, "distill.scheme=multi_teacher", "distill.teacher_weights=label", "distill.cache=true",
               "distill.teachers=[{model: mlp, kwargs: {hidden: [64]}, train: {epochs: 3}}]")
    m = res.metrics
    facts = m["scheme"]
    assert facts["name"] == "multi_teacher" and facts["teachers"] == ["teacher", "teacher_2"]
    # The second teacher was trained on the labels in its own folder, measured as a variant and never changed after.
    t2 = m["variants"]["teacher_2"]
    assert t2["model"] == "mlp" and t2["label"] == "Teacher 2 (fp32)" and t2["accuracy"] > 0.5
    saved = load_state_dict(res.run_dir / "teacher_2" / "best.safetensors")
    for key, value in res.models["teacher_2"].state_dict().items():
        assert (saved[key] == value).all(), key
    # The cache filled on the first epoch and served the later ones.
    stats = facts["cache_stats"]
    n_train = m["run"]["split_sizes"]["train"]
    assert stats["computed"] == n_train and stats["hits"] >= 2 * n_train and stats["live"] == 0
    assert any((res.run_dir / "teacher_cache").iterdir())
    assert m["variants"]["student"]["accuracy"] > 0.3
    html = (res.run_dir / "report.html").read_text()
    assert "Distillation scheme" in html and "Teacher 2 (fp32)" in html and "served from the store" in html


def test_assistant_chain_rows(tmp_path):
    res = _run(tmp_path, "distill.scheme=assistant")
    m = res.metrics
    stages = m["scheme"]["stages"]
    assert [s["label"] for s in stages] == ["teacher", "assistant1", "student"]
    assert [s["teacher"] for s in stages] == [None, "teacher", "assistant1"]
    t, a, s = (st["params"] for st in stages)
    assert t > a > s  # the automatic assistant sits between teacher and student
    assert m["variants"]["assistant1"]["params"] == a and m["variants"]["assistant1"]["model"] == "cnn"
    assert (res.run_dir / "chain" / "stage1-assistant1" / "best.safetensors").is_file()
    html = (res.run_dir / "report.html").read_text()
    assert "Teacher-assistant chain" in html and "Assistant 1 (fp32)" in html


def test_data_free_dafl_learns_without_data(tmp_path, monkeypatch):
    import importlib

    export = importlib.import_module("tinykd.stages.export")  # the module (tinykd.stages.export is the function)

    def no_real_data(*_a, **_k):
        raise AssertionError("int8 calibration of a data-free run must not read the training split")

    monkeypatch.setattr(export, "calibration_subset", no_real_data)
    res = _run(tmp_path, "distill.scheme=data_free", "student.train.epochs=4", "distill.scratch_baseline=true",
               "distill.losses=[{name: kd, temperature: 1.0, alpha: 1.0}]",
               # 120 steps: a short run learns faster with a small G learning rate than with the authors' 0.2
               "distill.data_free={steps_per_epoch: 30, batch_size: 64, generator_base: 16, generator_lr: 0.001}")
    m = res.metrics
    assert m["scheme"]["method"] == "dafl"
    assert m["variants"]["student"]["accuracy"] > 0.3  # 10 classes: chance is 0.1; no training input was seen
    assert (res.run_dir / m["scheme"]["samples_figure"]).is_file()
    html = (res.run_dir / "report.html").read_text()
    assert "fig-synthetic" in html and "Data-free distillation (no training input seen)" in html
    assert m["scheme"]["generator"] == {"base": 16, "lr": 0.001, "schedule": "cosine", "jitter": 2, "adversarial": 1.0, "batch_size": 64,
                                        "steps_per_epoch": 30}
    assert ("Adam learning rate 0.001 (cosine); each sample shifted by up to 2 positions before the student saw it; "
            "adversarial term weight 1") in html
    # The generator is never exported: the artifacts are the teacher's and the student's only.
    names = sorted(p.name for p in (res.run_dir / "artifacts").iterdir())
    assert names == ["preprocess.json", "student.int8.onnx", "student.onnx", "student_scratch.onnx", "teacher.onnx"]
    history = json.loads((res.run_dir / "student" / "last.json").read_text())["history"]
    assert len(history) == 4


@pytest.mark.parametrize("overrides, expected", [
    (["distill.scheme=multi_teacher"], "needs the extra teachers"),
    (["distill.teachers=[{model: mlp}]"], "only by scheme multi_teacher"),
    (["distill.assistants=[{model: cnn}]"], "only by scheme assistant"),
    (["distill.scheme=multi_teacher", "distill.teachers=[{model: mlp}]", "distill.teacher_weights=[1, 2, 3]"],
     "3 numbers for 2 teachers"),
    (["distill.scheme=data_free", "distill.mixup={alpha: 1.0}"], "synthetic inputs only"),
    (["distill.scheme=dml"], "distill.scheme"),
    (["distill.scheme=data_free", "compress.qat={epochs: 1}"], "synthetic inputs"),
])
def test_scheme_recipe_errors(overrides, expected):
    with pytest.raises(RecipeError) as err:
        load_recipe(TINY, [*BASE, *overrides])
    assert expected in str(err.value)


def test_automatic_assistant_needs_a_width(tmp_path):
    with pytest.raises(RecipeError) as err:
        _run(tmp_path, "distill.scheme=assistant", "student.model=lenet5_half", "student.kwargs={}",
             "teacher.model=lenet5", "teacher.kwargs={}", "data.name=mnist5k", "data.limit=300")
    assert "assistant_width_arg" in str(err.value)


def test_online_dml_peers_all_learn(tmp_path):
    res = _run(tmp_path, "distill.scheme=online", "distill.losses=[{name: dml}]",
               "distill.peers=[{model: mlp, kwargs: {hidden: [32]}}]")
    m = res.metrics
    assert m["scheme"]["peers"] == ["student", "peer_2"]
    v = m["variants"]
    assert v["peer_2"]["model"] == "mlp" and v["peer_2"]["label"] == "Peer 2 (fp32)"
    assert v["student"]["accuracy"] > 0.5 and v["peer_2"]["accuracy"] > 0.5  # both peers trained (chance 0.1)
    history = json.loads((res.run_dir / "student" / "last.json").read_text())["history"]
    assert any(k.startswith("loss/dml.peer1.kl") for k in history[-1])
    # Exported: the student alone (peer 0), not the group.
    from tinykd.deploy.onnx import ort_session
    sess = ort_session(res.run_dir / "artifacts" / "student.onnx")
    assert sess.get_outputs()[0].shape[-1] == 10


def test_self_distillation_byot_without_teacher(tmp_path):
    res = _run(tmp_path, "distill.scheme=self",
               "distill.losses=[{name: byot, exits: [features.0], deepest: features.1}]")
    v = res.metrics["variants"]
    assert v["student"]["accuracy"] > 0.3
    from tinykd.models import count_params, create_model
    plain = create_model("cnn", num_classes=10, in_shape=(1, 8, 8), widths=[4, 8], hidden=16)
    assert v["student"]["params"] == count_params(plain)  # the exit head trained along but is not the student's


def test_self_scheme_rejects_teacher_terms(tmp_path):
    with pytest.raises(RecipeError) as err:
        _run(tmp_path, "distill.scheme=self")
    assert "learns from a teacher" in str(err.value)
