"""Text classification end to end on the core: a TSV the test writes → tokenizer → transformer teacher → kd student →
ONNX (dynamic batch and sequence) → int8 → measurement and report."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest

pytest.importorskip("transformers")

from tinykd.data.tokenize import TextTokenizer  # noqa: E402
from tinykd.deploy.onnx import ort_predict_inputs, ort_session  # noqa: E402
from tinykd.pipeline import run  # noqa: E402
from tinykd.recipe import load_recipe  # noqa: E402

POSITIVE = ["good", "great", "fine", "lovely", "superb", "warm"]
NEGATIVE = ["bad", "awful", "dull", "poor", "weak", "cold"]
FILLER = ["the", "film", "was", "a", "story", "and", "very", "quite", "acting", "plot", "it", "is"]


def write_tsv(path, n, seed):
    rng = random.Random(seed)
    lines = ["sentence\tlabel"]
    for _ in range(n):
        label = rng.randint(0, 1)
        words = rng.choices(FILLER, k=rng.randint(2, 10)) + [rng.choice(POSITIVE if label else NEGATIVE)]
        rng.shuffle(words)
        lines.append(" ".join(words) + f"\t{label}")
    path.write_text("\n".join(lines) + "\n")


RECIPE = """
name: text
seed: 0
data:
  name: glue_tsv
  path: {data}
  val_fraction: 0.15
  options: {{tokenizer: wordpiece, vocab_size: 200, max_length: 16}}
teacher:
  model: transformer
  kwargs: {{layers: 2, heads: 2, hidden: 32, intermediate: 64, dropout: 0.0}}
  train: {{epochs: 6, batch_size: 32, optimizer: adamw, lr: 0.003}}
student:
  model: transformer
  kwargs: {{layers: 1, heads: 2, hidden: 16, intermediate: 32, dropout: 0.0}}
  train: {{epochs: 6, batch_size: 32, optimizer: adamw, lr: 0.003}}
distill:
  losses:
    - {{name: kd, weight: 1.0, temperature: 2.0, alpha: 0.5}}
quantize: {{calibration_samples: 128}}
measure: {{repeats: 5, rounds: 1, warmup: 1, sequence_length: 12}}
output_dir: {out}
"""


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("text")
    data = root / "data"
    data.mkdir()
    write_tsv(data / "train.tsv", 360, 0)
    write_tsv(data / "test.tsv", 80, 1)
    (root / "recipe.yaml").write_text(RECIPE.format(data=data, out=root / "runs"))
    recipe = load_recipe(root / "recipe.yaml")
    return run(recipe, progress=False), recipe


def test_a_text_run_trains_exports_and_measures_every_variant(text_run):
    result, _ = text_run
    m = result.metrics
    v = m["variants"]
    assert {"teacher", "student_scratch", "student", "student_int8", "student_dynamic_int8"} <= set(v)
    assert v["teacher"]["accuracy"] > 0.8  # the label word decides: a trained transformer finds it
    assert v["student"]["accuracy"] > 0.7
    assert m["run"]["spec"]["modality"] == "text" and m["run"]["spec"]["vocab_size"] <= 200
    assert m["inputs"]["sequence_length"] == 12
    assert v["student"]["onnx_agreement"] == 1.0  # the ONNX graph predicts what PyTorch does on every test text
    assert v["student"]["macs"] < v["teacher"]["macs"]
    assert v["student_int8"]["agreement_with_fp32_student"] >= 0.9
    assert m["deploy"]["variant"] in v and "examples" in m


def test_the_tokenizer_is_saved_with_the_run_and_the_artifacts(text_run):
    result, _ = text_run
    saved = TextTokenizer.load(result.run_dir / "tokenizer.json")
    assert saved == TextTokenizer.load(result.run_dir / "artifacts" / "tokenizer.json")
    assert saved.vocab_size == result.metrics["run"]["spec"]["vocab_size"]


def test_the_onnx_student_takes_any_batch_and_sequence_length(text_run):
    result, _ = text_run
    tok = TextTokenizer.load(result.run_dir / "tokenizer.json")
    sess = ort_session(result.run_dir / "artifacts" / "student.onnx")
    texts = ["the film was good", "awful acting and a dull plot it is very weak"]
    for length in (8, 16):
        ids, mask = tok.encode(texts, length)
        logits = ort_predict_inputs(sess, (ids, mask), trim=False)
        assert logits.shape == (2, 2) and np.isfinite(logits).all()
    short, long = (ort_predict_inputs(sess, tok.encode(texts[:1], n), trim=False) for n in (8, 16))
    assert np.allclose(short, long, atol=1e-4)  # more padding, same logits


def test_the_report_shows_the_sentences_they_disagree_on(text_run):
    result, _ = text_run
    html = result.report.read_text()
    assert "tinykd distillation report" in html
    ex = result.metrics["examples"]
    assert ex["of"] == 80 and 0 <= ex["disagreements"] <= 80
    assert ("Where they disagree" in html) == bool(ex)
    stored = json.loads((result.run_dir / "metrics.json").read_text())
    assert stored["examples"] == ex


def test_a_resumed_text_run_reads_its_tokenizer_back(text_run):
    import torch

    from tinykd.stages.data import load_data
    result, recipe = text_run
    fresh = load_data(recipe)
    saved = load_data(recipe, tokenizer_path=result.run_dir / "tokenizer.json")
    assert "saved" in str(saved.info["text"]["source"])
    assert torch.equal(fresh.test.x, saved.test.x) and torch.equal(fresh.train.mask, saved.train.mask)


def test_a_layer_list_that_does_not_fit_the_teacher_fails_before_the_run_folder(tmp_path):
    from tinykd.errors import RecipeError

    data = tmp_path / "data"
    data.mkdir()
    write_tsv(data / "train.tsv", 60, 0)
    text = RECIPE.format(data=data, out=tmp_path / "runs").replace(
        "  model: transformer\n  kwargs: {layers: 1, heads: 2, hidden: 16, intermediate: 32, dropout: 0.0}",
        "  model: transformer\n  init_layers: [0, 9]\n  kwargs: {layers: 2, heads: 2, hidden: 32, intermediate: 64, "
        "dropout: 0.0}")
    (tmp_path / "recipe.yaml").write_text(text)
    with pytest.raises(RecipeError, match="init_layers"):
        run(load_recipe(tmp_path / "recipe.yaml"), progress=False)
    assert not (tmp_path / "runs" / "text").exists()  # no run folder was claimed


@pytest.mark.parametrize("extra, key", [("compress: {qat: {epochs: 1}}", "compress.qat"),
                                        ("compress: {prune_student: {amount: 0.5}}", "compress.prune_student"),
                                        ("distill: {losses: [{name: kd}], mixup: {alpha: 0.2}}", "distill.mixup")])
def test_dense_only_stages_are_recipe_errors_for_text(tmp_path, extra, key):
    from tinykd.errors import RecipeError

    data = tmp_path / "data"
    data.mkdir()
    write_tsv(data / "train.tsv", 60, 0)
    text = RECIPE.format(data=data, out=tmp_path / "runs")
    if extra.startswith("distill"):
        text = text.replace("distill:\n  losses:\n    - {name: kd, weight: 1.0, temperature: 2.0, alpha: 0.5}\n", "")
    (tmp_path / "recipe.yaml").write_text(text + extra + "\n")
    with pytest.raises(RecipeError, match="token ids") as err:
        run(load_recipe(tmp_path / "recipe.yaml"), progress=False)
    assert err.value.where == key and not (tmp_path / "runs" / "text").exists()
