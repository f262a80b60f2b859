"""Causal language models: corpus and prompt/response data, the CausalLM task, GPT models, on-policy and
sequence-level batches, and the pipeline end to end on a small corpus written here."""
from __future__ import annotations

import json
import math
import random

import pytest
import torch
import torch.nn.functional as F
from rich.console import Console
from torch import nn

from tinykd.data import load_dataset
from tinykd.data.spec import InputSpec, Split
from tinykd.distill.lm_policy import OnPolicy, continue_prompts, generated_batch, sequence_kd_split
from tinykd.errors import DataError, RecipeError
from tinykd.io import load_tensors, load_weights, save_tensors
from tinykd.models import create_model
from tinykd.tasks import CausalLM, get_task
from tinykd.types import Batch

pytest.importorskip("transformers")

WORDS = "the king and queen of a small land went to sea with ships of gold and came home again".split()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    rng = random.Random(0)
    lines = [" ".join(rng.choice(WORDS) for _ in range(10)) for _ in range(400)]
    path = folder / "corpus.txt"
    lines[-10] = "Z Z Z Z"  # a character only the test part has
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def _gpt(vocab: int, context: int = 16, **kw):
    torch.manual_seed(0)
    return create_model("gpt", num_classes=vocab, in_shape=(context,), vocab_size=vocab, **kw)


# ----- data --------------------------------------------------------------------------------------------------------
def test_corpus_splits_are_contiguous_blocks_and_targets_are_the_next_tokens(corpus):
    b = load_dataset("text_corpus", path=str(corpus), val_fraction=0.1, test_fraction=0.1, context=16)
    assert b.spec.task == "causal_lm" and b.spec.num_classes == b.spec.vocab_size == b.tokenizer.vocab_size
    text = corpus.read_text()
    ids = b.tokenizer._pieces([text[:int(len(text) * 0.8)]])[0]
    assert b.train.x[0].tolist() == ids[:16] and b.train.y[0].tolist() == ids[1:17]
    assert b.train.x[1].tolist() == ids[16:32]  # stride = context: every token predicted once
    assert len(b.train) == (len(ids) - 1) // 16
    assert bool((b.train.mask == 1).all()) and bool((b.train.y >= 0).all())
    assert "Z" not in b.tokenizer.vocab  # learnt from the training text only
    assert 1 in b.test.y.flatten().tolist()  # the unseen character is [UNK] in the test split


def test_prompt_response_scores_only_the_response_and_the_end_token(tmp_path):
    path = tmp_path / "pairs.jsonl"
    rows = [{"prompt": f"{a}+{b}=", "response": str(a + b)} for a in range(10) for b in range(10)]
    path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    bundle = load_dataset("prompt_response", path=str(path), val_fraction=0.1, test_fraction=0.1, context=16)
    tok = bundle.tokenizer
    for split in (bundle.train, bundle.test):
        for x, y, m in zip(split.x, split.y, split.mask):
            n = int(m.sum())
            text = "".join(tok.vocab[i] for i in x[:n].tolist())
            prompt = text.split("=")[0] + "="
            scored = [tok.vocab[i] for i in y[y >= 0].tolist()]
            assert scored[-1] == "[CLS]" and "".join(scored[:-1]) == str(eval(prompt[:-1]))  # the answer, then end
            assert bool((y[n:] == -1).all())  # padding unscored
    assert len(bundle.train) + len(bundle.val) + len(bundle.test) == 100


def test_corpus_errors_name_the_fix(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("   ")
    with pytest.raises(DataError, match="empty"):
        load_dataset("text_corpus", path=str(empty))
    short = tmp_path / "short.txt"
    short.write_text("abc" * 20)
    with pytest.raises(DataError, match="holds no block"):
        load_dataset("text_corpus", path=str(short), context=64)
    with pytest.raises(DataError, match="context"):
        load_dataset("text_corpus", path=str(short), context=1)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a"}\n')
    with pytest.raises(DataError, match="prompt.*response"):
        load_dataset("prompt_response", path=str(bad))


def test_byte_level_bpe_decodes_to_the_text_itself_and_other_sub_word_kinds_are_refused(corpus, tmp_path):
    from tinykd.data.tokenize import TextTokenizer

    text = corpus.read_text()
    tok = TextTokenizer.train([text], "byte_bpe", 400, lowercase=False)
    assert tok.vocab_size <= 400 and len(tok.merges) > 0
    again = TextTokenizer.train([text], "byte_bpe", 400, lowercase=False)
    assert again.to_dict() == tok.to_dict()  # the vocabulary depends on the text alone
    unseen = "Zebra naïve — 12\n\n  end\t!"  # characters and bytes the training text never had: no [UNK]
    for s in (text[:500], unseen):
        ids = tok._pieces([s])[0]
        assert 1 not in ids and tok.decode(ids) == s
    assert len(tok._pieces([text])[0]) < 0.6 * len(text)  # the merges shorten the sequence
    tok.save(tmp_path / "tok.json")
    assert TextTokenizer.load(tmp_path / "tok.json")._pieces([unseen]) == tok._pieces([unseen])
    b = load_dataset("text_corpus", path=str(corpus), tokenizer="byte_bpe", vocab_size=400, context=16)
    assert b.spec.vocab_size == b.tokenizer.vocab_size and b.tokenizer.kind == "byte_bpe"
    assert b.tokenizer.decode(b.train.x[0].tolist() + b.train.x[1].tolist()) == text[:len(
        b.tokenizer.decode(b.train.x[0].tolist() + b.train.x[1].tolist()))]  # contiguous blocks of the text
    for kind in ("bpe", "wordpiece"):
        with pytest.raises(DataError, match="(?s)drops the text.s whitespace.*byte_bpe"):
            load_dataset("text_corpus", path=str(corpus), tokenizer=kind, vocab_size=400)
    with pytest.raises(DataError, match="at least 260"):
        load_dataset("text_corpus", path=str(corpus), tokenizer="byte_bpe", vocab_size=100)


# ----- task --------------------------------------------------------------------------------------------------------
def test_evaluate_is_the_per_token_cross_entropy_over_scored_positions():
    torch.manual_seed(0)
    model = _gpt(11, 8, layers=1, heads=1, hidden=8)
    x = torch.randint(3, 11, (5, 8))
    y = torch.randint(3, 11, (5, 8))
    y[0, :3] = -1
    mask = torch.ones_like(x)
    scores = CausalLM().evaluate(model, Split(x, y, mask), batch_size=2)
    model.eval()
    with torch.no_grad():
        logits = model(x)
    keep = y >= 0
    ce = F.cross_entropy(logits[keep], y[keep]).item()
    assert scores["loss"] == pytest.approx(ce, rel=1e-6)
    assert scores["perplexity"] == pytest.approx(math.exp(ce), rel=1e-6)
    assert scores["accuracy"] == pytest.approx((logits[keep].argmax(-1) == y[keep]).float().mean().item())
    assert CausalLM.selection == ("val_loss", "min") and get_task("causal_lm").name == "causal_lm"


def test_generation_is_reproducible_and_greedy_is_top_k_one():
    model = _gpt(11, 8, layers=1, heads=1, hidden=8)
    task = CausalLM()
    prompt = torch.tensor([[3, 4, 5]])
    a = task.generate(model, prompt, 12, context=8, temperature=1.0, seed=1)
    b = task.generate(model, prompt, 12, context=8, temperature=1.0, seed=1)
    assert torch.equal(a, b) and a.shape == (1, 15) and torch.equal(a[:, :3], prompt)
    greedy = task.generate(model, prompt, 12, context=8, temperature=0.0)
    assert torch.equal(greedy, task.generate(model, prompt, 12, context=8, temperature=0.7, top_k=1, seed=5))
    # the key/value-cache loop of training-time generation gives the windowed task's greedy text (within the context)
    cached = continue_prompts(model, prompt, 5, temperature=0.0, top_k=None)
    assert torch.equal(cached, greedy[:, :8])


def test_generated_batches_leave_the_prompt_unscored():
    ids = torch.arange(20).reshape(2, 10)
    b = generated_batch(ids, 4, torch.tensor([-1, -1]))
    assert b.x.shape == (2, 9) and torch.equal(b.y[:, 3:], ids[:, 4:])
    assert bool((b.y[:, :3] == -1).all())


def test_on_policy_replaces_the_fraction_of_batches_with_the_students_text():
    model = _gpt(11, 8, layers=1, heads=1, hidden=8)
    x = torch.randint(3, 11, (4, 8))
    batch = Batch({"input_ids": x}, torch.randint(3, 11, (4, 8)), torch.arange(4), torch.ones_like(x))

    class T:
        pass
    t = T()
    t.model = model
    always, never = OnPolicy(1.0, 3, temperature=1.0), OnPolicy(0.0, 3)
    assert never.on_batch(t, batch) is batch
    got = always.on_batch(t, batch)
    assert torch.equal(got.x[:, :3], x[:, :3]) and got.x.shape == x.shape
    assert bool((got.index == -1).all()) and bool((got.y[:, :2] == -1).all()) and bool((got.y[:, 2:] >= 0).all())
    assert always.changes_inputs


def test_sequence_kd_split_is_the_teachers_greedy_continuation():
    teacher = _gpt(11, 8, layers=1, heads=1, hidden=8)
    x = torch.randint(3, 11, (3, 8))
    split = Split(x, torch.randint(3, 11, (3, 8)), torch.ones_like(x))
    out = sequence_kd_split(teacher, split, 3, batch_size=2)
    greedy = CausalLM().generate(teacher, x[:, :3], 6, context=8, temperature=0.0)
    assert torch.equal(out.x, greedy[:, :8]) and torch.equal(out.y[:, 2:], greedy[:, 3:9])
    assert bool((out.y[:, :2] == -1).all())


def test_tied_embeddings_save_and_load(tmp_path):
    model = _gpt(11, 8, layers=1, heads=1, hidden=8)
    save_tensors(tmp_path / "m.safetensors", model.state_dict())
    other = _gpt(11, 8, layers=1, heads=1, hidden=8)
    with torch.no_grad():
        for p in other.parameters():
            p.zero_()
    load_weights(other, load_tensors(tmp_path / "m.safetensors"), source="m.safetensors")
    x = torch.randint(3, 11, (2, 8))
    model.eval(), other.eval()
    assert torch.equal(model(x), other(x))
    assert other.model.lm_head.weight.data_ptr() == other.model.transformer.wte.weight.data_ptr()


# ----- pipeline ----------------------------------------------------------------------------------------------------
def _recipe(corpus, tmp_path, **distill):
    from tinykd.recipe import load_recipe

    return load_recipe({
        "name": "lm", "output_dir": str(tmp_path / "runs"),
        "data": {"name": "text_corpus", "path": str(corpus), "val_fraction": 0.1, "test_fraction": 0.1,
                 "options": {"context": 32}},
        "teacher": {"model": "gpt", "kwargs": {"layers": 2, "heads": 2, "hidden": 32},
                    "train": {"epochs": 4, "batch_size": 16, "lr": 0.005, "threads": 1}},
        "student": {"model": "gpt", "kwargs": {"layers": 1, "heads": 2, "hidden": 16},
                    "train": {"epochs": 2, "batch_size": 16, "lr": 0.005, "threads": 1}},
        "distill": {"losses": [{"name": "kd", "temperature": 1.0, "alpha": 0.5}], **distill},
        "measure": {"repeats": 6, "warmup": 1, "rounds": 2, "generate": {"max_new_tokens": 12}},
    })


def test_pipeline_trains_exports_measures_and_reports_a_language_model(corpus, tmp_path):
    import tinykd
    import onnxruntime as ort

    result = tinykd.run(_recipe(corpus, tmp_path), progress=False)
    m = result.metrics
    assert m["task"] == {"task": "causal_lm", "metric": "perplexity"}
    v = m["variants"]
    assert set(v) == {"teacher", "student_scratch", "student", "student_int8"}
    uniform = math.log(m["run"]["spec"]["vocab_size"])
    assert v["teacher"]["loss"] < 0.75 * uniform  # it learnt the corpus (uniform guessing: log V nats)
    assert v["teacher"]["loss"] < v["student_scratch"]["loss"]
    for name in v:
        assert v[name]["perplexity"] == pytest.approx(math.exp(v[name]["loss"]))
        assert v[name]["ms_per_token"] > 0 and v[name]["file_bytes"] > 0
    for name in ("teacher", "student"):
        assert v[name]["onnx_loss"] == pytest.approx(v[name]["loss"], rel=1e-4)  # ONNX = PyTorch
    q = v["student_int8"]["quantization"]
    assert q["method"] == "dynamic" and abs(q["loss_change"]) < 0.02 and q["met"]
    assert m["gap"]["closed"] == pytest.approx((m["gap"]["scratch_loss"] - m["gap"]["student_loss"])
                                               / (m["gap"]["scratch_loss"] - m["gap"]["teacher_loss"]))
    rows = m["samples"]["rows"]
    assert rows and set(rows[0]["continuations"]) == set(v)
    history = result.history
    teacher_rows = [r for r in history if r["model"] == "teacher"]
    best = min(teacher_rows, key=lambda r: r["val_loss"])["epoch"]
    state = json.loads((result.run_dir / "teacher" / "last.json").read_text())
    assert state["best_epoch"] == best  # the lowest validation loss is the kept epoch
    page = (result.run_dir / "report.html").read_text()
    assert "Validation perplexity per epoch" in page and "Samples" in page and "Distilled student, int8" in page
    art = result.run_dir / "artifacts"
    sess = ort.InferenceSession(str(art / "student.int8.onnx"), providers=["CPUExecutionProvider"])
    ids = torch.randint(3, 20, (1, 7)).numpy()
    assert sess.run(None, {"input_ids": ids})[0].shape == (1, 7, m["run"]["spec"]["vocab_size"])
    assert (art / "tokenizer.json").is_file()


def test_vocabulary_mismatch_is_an_error_naming_both_before_training(corpus, tmp_path):
    import tinykd

    recipe = _recipe(corpus, tmp_path)
    wrong = _gpt(99, 32, layers=1, heads=1, hidden=8)
    with pytest.raises(RecipeError, match=r"teacher predicts over a vocabulary of 99 tokens.*char tokenizer has"):
        tinykd.run(recipe, teacher=wrong, progress=False)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_language_model_recipe_errors(corpus, tmp_path):
    import tinykd

    with pytest.raises(RecipeError, match="does not apply to a language model"):
        tinykd.run(_recipe(corpus, tmp_path, losses=[{"name": "crd"}]), progress=False)
    with pytest.raises(RecipeError, match="not available for language models"):
        tinykd.run(_recipe(corpus, tmp_path, scheme="online", losses=[{"name": "dml"}]), progress=False)
    with pytest.raises(RecipeError, match="leaves nothing to generate"):
        tinykd.run(_recipe(corpus, tmp_path, on_policy={"prompt_tokens": 32}), progress=False)


@pytest.mark.parametrize("extra", [{"on_policy": {"fraction": 1.0, "prompt_tokens": 8}},
                                   {"sequence_kd": {"prompt_tokens": 8}},
                                   {"cache": True, "cache_top_k": 4}])
def test_on_policy_sequence_kd_and_cached_runs_train(corpus, tmp_path, extra):
    from tinykd.stages import distill, load_data, preflight, train_teacher
    from tinykd.stages.rundir import open_run_dir

    recipe = _recipe(corpus, tmp_path, **extra)
    recipe = recipe.model_copy(update={"teacher": recipe.teacher.model_copy(
        update={"train": recipe.teacher.train.model_copy(update={"epochs": 1})})})
    bundle = load_data(recipe)
    preflight(recipe, bundle)
    run_dir = open_run_dir(recipe, None, resume=False, changes=[], console=Console(quiet=True))
    t = train_teacher(recipe, bundle, run_dir, progress=False)
    d = distill(recipe, bundle, run_dir, t.teaching, progress=False)
    losses = [r["loss/kd"] for r in d.history if r["model"] == "student"]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses) and losses[1] < losses[0]
    if "sequence_kd" in extra:
        assert (run_dir / "student" / "sequence_kd.safetensors").is_file()
    if "cache" in extra:  # the teacher ran once per training block (prepare); its top-4 served both epochs
        stats = d.scheme["cache_stats"]
        assert stats["computed"] == len(bundle.train) and stats["hits"] >= 2 * len(bundle.train)
        assert stats["live"] == 0
        assert d.scheme["cache_bytes_per_token"] == 4 * (2 + 2)


def test_causal_lm_example_inputs_and_axes():
    spec = InputSpec((16,), 30, "text", vocab_size=30, task="causal_lm")
    task = CausalLM()
    (ids,) = task.example_inputs(spec, 2, length=5)
    assert ids.shape == (2, 5) and int(ids.min()) >= 3 and int(ids.max()) < 30
    assert task.input_names(spec) == ["input_ids"] and task.dynamic_axes(spec)["logits"] == {0: "batch", 1: "sequence"}
    assert isinstance(_gpt(30, 16, layers=1, heads=1, hidden=8), nn.Module)


def test_a_saved_causal_lm_loads_as_hf_path_and_teaches(corpus, tmp_path):
    import tinykd
    from tinykd.errors import TinyKDError

    b = load_dataset("text_corpus", path=str(corpus), val_fraction=0.1, test_fraction=0.1, context=32)
    vocab = b.tokenizer.vocab_size
    b.tokenizer.save(tmp_path / "tokenizer.json")
    model = _gpt(vocab, context=32, layers=2, heads=2, hidden=32).eval()
    model.model.save_pretrained(tmp_path / "lm")  # config.json (GPT2LMHeadModel) + model.safetensors
    loaded = create_model(f"hf:{tmp_path / 'lm'}", num_classes=vocab, in_shape=(32,), vocab_size=vocab).eval()
    assert type(loaded).__name__ == "HFCausalLM" and loaded.config.eos_token_id == 2
    x = b.train.x[:3]
    torch.testing.assert_close(loaded(x), model(x))  # the same weights, the same logits at every position
    with pytest.raises(TinyKDError, match=f"(?s)vocabulary of {vocab} tokens.*tokenizer_path"):
        create_model(f"hf:{tmp_path / 'lm'}", num_classes=vocab + 1, in_shape=(32,), vocab_size=vocab + 1)
    with pytest.raises(TinyKDError, match="exceeds the model's 32 positions"):
        create_model(f"hf:{tmp_path / 'lm'}", num_classes=vocab, in_shape=(64,), vocab_size=vocab)
    from tinykd.recipe import load_recipe

    recipe = _recipe(corpus, tmp_path)
    recipe = load_recipe({**recipe.model_dump(mode="json", exclude_none=True),
                          "teacher": {"model": f"hf:{tmp_path / 'lm'}", "train": {"epochs": 1, "batch_size": 16}},
                          "data": {**recipe.data.model_dump(mode="json", exclude_none=True),
                                   "options": {"context": 32, "tokenizer_path": str(tmp_path / "tokenizer.json")}}})
    result = tinykd.run(recipe, progress=False)
    assert set(result.metrics["variants"]) >= {"teacher", "student", "student_int8"}
    assert math.isfinite(result.metrics["variants"]["student"]["loss"])
