"""Rationale distillation: the arithmetic generator and its rationales (checked by an independent recomputation),
the prompt masking of its bundles, the shared tokenizer, exact match of final answers, the per-sequence loss and
the flow end to end on a tiny budget."""
from __future__ import annotations

import json
import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tinykd.data import load_dataset
from tinykd.data.arithmetic import (ANSWER_TASK, CHARS, RATIONALE_TASK, Problem, longest_sequence, make_problems,
                                    rationale, response)
from tinykd.data.tokenize import CLS
from tinykd.distill.losses import Batch, build_loss
from tinykd.errors import DataError, RecipeError
from tinykd.measure.exact_match import exact_match, final_answer, greedy_complete, greedy_tokens
from tinykd.types import Outputs

pytest.importorskip("transformers")


def check_rationale(a: int, b: int, text: str) -> int:
    """The answer a rationale ``text`` states for a + b, after checking every step against the digits of a and b:
    step k adds the k-th digits from the right (0 past an operand's end) and the carry of step k - 1."""
    steps, answer = text.split("#")
    carry, units = 0, []
    da, db = str(a)[::-1], str(b)[::-1]
    for k, step in enumerate(steps.split(",")):
        lhs, total = step.split("=")
        x, y, c = (int(v) for v in lhs.split("+"))
        assert x == (int(da[k]) if k < len(da) else 0) and y == (int(db[k]) if k < len(db) else 0)
        assert c == carry and int(total) == x + y + c and len(total) == 2
        carry, units = int(total[0]), units + [total[1]]
    assert len(units) == max(len(da), len(db))
    stated = int(answer)
    assert stated == int(("1" if carry else "") + "".join(reversed(units)))  # the answer is read off the steps
    return stated


def _decode(ids) -> str:
    return "".join(CHARS.vocab[i] for i in ids)


# ----- generator -----------------------------------------------------------------------------------------------
def test_rationales_are_correct_step_by_step():
    rng = random.Random(1)
    pairs = [(rng.randrange(10 ** rng.randint(1, 6)), rng.randrange(10 ** rng.randint(1, 6))) for _ in range(500)]
    for a, b in pairs + [(0, 0), (9, 1), (999, 1), (5, 99995)]:  # unequal lengths and carries off the end too
        assert check_rationale(a, b, rationale(a, b) + "#" + str(a + b)) == a + b
    assert response(Problem(472, 358)) == "2+8+0=10,7+5+1=13,4+3+1=08#830"
    assert response(Problem(972, 358), with_rationale=False) == "#1330"


def test_the_generator_is_deterministic_and_the_test_problems_are_held_out():
    train, test = make_problems(3, 4, 3000, 50, seed=7)
    assert (train, test) == make_problems(3, 4, 3000, 50, seed=7)
    assert train != make_problems(3, 4, 3000, 50, seed=8)[0]
    assert {p.digits for p in train} == {1, 2, 3} and not set(test) & set(train)
    per = {n: [p for p in test if p.digits == n] for n in range(1, 5)}
    assert len(per[1]) == 0  # all 100 one-digit problems are training problems
    assert all(len(per[n]) == 50 == len(set(per[n])) for n in (2, 3, 4))
    for p in train[:200] + test:
        assert len(str(p.a)) == len(str(p.b)) == p.digits
        assert check_rationale(p.a, p.b, response(p)) == p.a + p.b


# ----- bundles -------------------------------------------------------------------------------------------------
def _scored(split, i):
    """(input text, scored target text) of row i."""
    n = int(split.mask[i].sum())
    y = split.y[i]
    return _decode(split.x[i, :n].tolist()), y[:n]


@pytest.mark.parametrize("mode", ["teacher", "none", "multitask"])
def test_only_the_response_and_the_end_token_are_scored(mode):
    b = load_dataset("arithmetic", rationale=mode, n_train=300, n_test=5, digits=2, test_digits=3,
                     val_fraction=0.1, test_fraction=0.1)
    assert b.tokenizer == CHARS and b.spec.task == "causal_lm" and b.spec.shape == (64,)
    for split in (b.train, b.test):
        for i in range(len(split)):
            text, y = _scored(split, i)
            prompt = text[:text.index("=") + 1]
            scored = y[y >= 0].tolist()
            assert bool((y[:len(prompt) - 1] == -1).all()) and bool((y[len(prompt) - 1:] >= 0).all())
            assert scored[-1] == CLS and bool((split.y[i, len(text):] == -1).all())  # the end token; padding unscored
            target = _decode(scored[:-1])
            prefix = next((t for t in (ANSWER_TASK, RATIONALE_TASK) if prompt.startswith(t)), "")
            allowed = {"teacher": {""}, "none": {ANSWER_TASK}, "multitask": {ANSWER_TASK, RATIONALE_TASK}}[mode]
            assert prefix in (allowed if split is b.train or mode == "teacher" else {ANSWER_TASK})
            a, c = (int(v) for v in prompt[len(prefix):-1].split("+"))
            if prefix == ANSWER_TASK:
                assert target == f"#{a + c}"
            else:
                assert check_rationale(a, c, target) == a + c
    if mode == "multitask":
        assert len(b.train) + len(b.val) == 600  # every problem in both tasks
        assert all(_decode(b.test.x[i, :8].tolist()) == ANSWER_TASK for i in range(len(b.test)))


def test_multitask_reads_the_teachers_rationales_and_every_mode_shares_the_tokenizer(tmp_path):
    train, _ = make_problems(2, 3, 50, 5, seed=0)
    path = tmp_path / "rationales.jsonl"
    path.write_text("".join(json.dumps({"prompt": p.prompt, "response": "1+1+0=02#99"}) + "\n" for p in train))
    b = load_dataset("arithmetic", rationale="multitask", rationales_path=str(path), n_train=50, n_test=5, digits=2,
                     test_digits=3, val_fraction=0.0, test_fraction=0.1)
    reasons = [_decode(r[r >= 0].tolist()[:-1]) for r in b.train.y if _decode(r[r >= 0].tolist()).startswith("1+1")]
    assert len(reasons) == 50 and set(reasons) == {"1+1+0=02#99"}  # the file's responses, wrong ones kept
    saved = CHARS.save(tmp_path / "tokenizer.json")
    t = load_dataset("arithmetic", rationale="teacher", n_train=50, n_test=5, digits=2, test_digits=3,
                     tokenizer_path=str(saved))
    assert t.tokenizer.fingerprint() == b.tokenizer.fingerprint() == CHARS.fingerprint()
    path.write_text(json.dumps({"prompt": train[0].prompt, "response": "#1"}) + "\n")
    with pytest.raises(DataError, match="no response for"):
        load_dataset("arithmetic", rationale="multitask", rationales_path=str(path), n_train=50, digits=2,
                     test_digits=3)


@pytest.mark.parametrize("options, match", [
    ({"digits": 0}, "digits must be an integer from 1"),
    ({"digits": 3, "test_digits": 2}, "test_digits .2. is below digits"),
    ({"n_train": 0}, "n_train must be"),
    ({"n_test": 1.5}, "n_test must be"),
    ({"rationale": "cot"}, "rationale must be one of teacher, none, multitask"),
    ({"rationale": "none", "rationales_path": "x.jsonl"}, "rationales_path is read by rationale: multitask only"),
    ({"test_digits": 6}, "context 64 is too short for problems of 6 digits: .* take 75 input tokens"),
    ({"context": 1}, "context must be an integer"),
    ({"shuffle": True}, "unknown option 'shuffle'"),
])
def test_bad_options_name_the_fix(options, match, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x.jsonl").write_text("")
    with pytest.raises(DataError, match=match):
        load_dataset("arithmetic", **options)
    assert longest_sequence(4, "teacher") == 51 and longest_sequence(4, "none") == 24
    assert longest_sequence(4, "multitask") == 59


def test_a_damaged_rationales_file_is_named(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"prompt": "1+1="}\n')
    with pytest.raises(DataError, match="needs string fields") as err:
        load_dataset("arithmetic", rationale="multitask", rationales_path=str(path), digits=1, test_digits=1)
    assert str(path) in str(err.value)


# ----- exact match ---------------------------------------------------------------------------------------------
class Scripted(nn.Module):
    """A fake language model that writes a fixed text after each prompt, then the end token."""

    def __init__(self, script: dict[str, str]):
        super().__init__()
        self.script = script
        self.weight = nn.Parameter(torch.zeros(()))

    def forward(self, input_ids):
        logits = torch.full((*input_ids.shape, CHARS.vocab_size), -1e4)
        for i, row in enumerate(input_ids.tolist()):
            text = _decode(row)
            prompt = next(p for p in self.script if text.startswith(p))
            full = CHARS._pieces([prompt + self.script[prompt]])[0] + [CLS]
            nxt = full[len(row)] if len(row) < len(full) else CLS
            logits[i, -1, nxt] = 0.0
        return logits + self.weight


def test_exact_match_reads_the_answer_after_the_marker_per_group():
    script = {"12+34=": "2+4+0=06,1+3+0=04#46", "5+5=": "#11", "7+1=": "8", "99+1=": "#100", "10+10=": "#20#21"}
    prompts = list(script)
    truth = ["46", "10", "8", "100", "21"]
    got = exact_match(Scripted(script), CHARS, prompts, truth, groups=[2, 1, 1, 2, 2], max_new_tokens=40)
    assert got.outputs == list(script.values())  # every text up to its end token
    assert got.answers == ["46", "11", None, "100", "21"]  # after the last marker; none without one
    assert (got.correct, got.total, got.accuracy) == (3, 5, 0.6)
    assert got.by_group == {2: (1.0, 3), 1: (0.0, 2)}
    cut = greedy_complete(Scripted(script), CHARS, ["12+34="], max_new_tokens=5)
    assert cut == ["2+4+0"]  # at most max_new_tokens
    assert final_answer("a#b# 7 ") == "7" and final_answer("7") is None
    with pytest.raises(ValueError, match="one of each"):
        exact_match(Scripted(script), CHARS, prompts, truth[:2])


def test_cached_greedy_decoding_is_the_argmax_continuation():
    from tinykd.models import create_model
    from tinykd.tasks import CausalLM

    torch.manual_seed(0)
    model = create_model("gpt", num_classes=CHARS.vocab_size, in_shape=(16,), vocab_size=CHARS.vocab_size,
                         layers=1, heads=2, hidden=16)
    prompt = torch.tensor([CHARS._pieces(["12+34="])[0]] * 2)
    ref = CausalLM().generate(model, prompt, 8, context=16, temperature=0.0)[:, 6:]
    got = greedy_tokens(model, prompt, 8, end=-1)  # an end that never comes: all 8 tokens
    assert torch.equal(got, ref) and model.training
    stop = int(ref[0, 2])  # an end token the model writes: decoding stops at its first
    assert greedy_tokens(model, prompt, 8, end=stop).shape == (2, ref[0].tolist().index(stop) + 1)


# ----- loss ----------------------------------------------------------------------------------------------------
def test_sequence_ce_weighs_every_sequence_alike():
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 7)
    y = torch.tensor([[-1, 2, 3, 4, 5], [-1, -1, -1, 6, -1], [-1, -1, -1, -1, -1]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0], [1, 1, 0, 0, 0]])
    term = build_loss("sequence_ce", {})
    got = term(Outputs(logits), None, Batch({"x": logits}, y, torch.arange(3), mask))
    per_seq = []
    for b in range(3):
        rows = [F.cross_entropy(logits[b, t][None], y[b, t][None]) for t in range(5) if y[b, t] >= 0 and mask[b, t]]
        if rows:
            per_seq.append(sum(rows) / len(rows))
    assert float(got) == pytest.approx(float(sum(per_seq) / len(per_seq)), rel=1e-6)
    assert float(got) != pytest.approx(float(build_loss("ce", {})(Outputs(logits), None,
                                                                   Batch({"x": logits}, y, torch.arange(3), mask))))
    flat = torch.randn(4, 3)
    labels = torch.tensor([0, 2, 1, 1])
    assert float(term(Outputs(flat), None, Batch({"x": flat}, labels, torch.arange(4)))) == pytest.approx(
        float(F.cross_entropy(flat, labels)))


# ----- flow ----------------------------------------------------------------------------------------------------
def test_the_flow_trains_the_teacher_writes_rationales_and_scores_both_students(tmp_path):
    from tinykd.recipe import load_recipe
    from tinykd.stages.rationale import rationale_distillation

    train = {"epochs": 1, "batch_size": 32, "lr": 3e-3, "threads": 1}
    gpt = {"layers": 1, "heads": 2, "hidden": 16, "dropout": 0.0}
    recipe = load_recipe({"data": {"name": "arithmetic", "val_fraction": 0.05,
                                   "options": {"n_train": 200, "n_test": 10, "digits": 2, "test_digits": 3}},
                          "teacher": {"model": "gpt", "kwargs": gpt, "train": train},
                          "student": {"model": "gpt", "kwargs": gpt, "train": train}})
    res = rationale_distillation(recipe, tmp_path, progress=False)
    rows = [json.loads(line) for line in res.rationales.read_text().splitlines()]
    train_problems, test_problems = make_problems(2, 3, 200, 10, seed=0)
    assert [r["prompt"] for r in rows] == [p.prompt for p in dict.fromkeys(train_problems)]
    assert set(res.scores) == {"teacher", "answer_only", "multitask", "multitask_reason"}
    assert all(s.total == len(test_problems) and set(s.by_group) == {p.digits for p in test_problems}
               for s in res.scores.values())
    assert set(res.seconds) == {"teacher", "rationales", "answer_only", "multitask", "evaluation"}
    assert (tmp_path / "answer_only" / "best.safetensors").is_file() and (tmp_path / "tokenizer.json").is_file()
    assert res.histories["multitask"][0]["epoch"] == 1
    with pytest.raises(RecipeError, match="arithmetic"):
        rationale_distillation(load_recipe({"data": {"name": "digits"}}), tmp_path, progress=False)
