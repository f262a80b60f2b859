"""MiniLLM (the ``minillm`` term and teacher-mixed on-policy sampling), each checked against an independent answer:
the exact gradient of the sequence-level reverse KL by enumeration, sampled frequencies against the mixture, the
importance weights and the loss by hand, cross-entropy on corpus batches, and a small run end to end."""
from __future__ import annotations

import itertools
import math
import random

import pytest
import torch
import torch.nn.functional as F

from tinykd.distill.losses import build_loss
from tinykd.distill.losses.minillm import mix_weights
from tinykd.distill.lm_policy import OnPolicy, continue_prompts
from tinykd.errors import RecipeError, TinyKDError
from tinykd.models import create_model
from tinykd.tasks import CausalLM
from tinykd.types import Batch, Outputs

V, T = 3, 3  # vocabulary and generated tokens of the enumerated case


def _generated(y: torch.Tensor, prompt: int = 0) -> Batch:
    """A batch the student generated: prompt token ``prompt`` then ``y`` (B, T); every position scored."""
    x = torch.cat([torch.full((len(y), 1), prompt), y[:, :-1]], 1)
    return Batch({"input_ids": x}, y.clone(), torch.full((len(y),), -1), torch.ones_like(x))


def _table_logits(table: dict, seqs: torch.Tensor) -> torch.Tensor:
    """(B, T, V) logits of a model that is a free logit vector per prefix of generated tokens."""
    return torch.stack([torch.stack([table[tuple(s[:t].tolist())] for t in range(seqs.shape[1])]) for s in seqs])


def _tables(seed: int, requires_grad: bool) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {pre: (torch.randn(V, generator=g, dtype=torch.float64) * 1.5).requires_grad_(requires_grad)
            for n in range(T) for pre in itertools.product(range(V), repeat=n)}


# ----- (a) the expected gradient is the gradient of KL(q_θ(y) ‖ p(y)) -------------------------------------------
def test_expected_gradient_is_the_sequence_level_reverse_kl_gradient():
    theta, teacher = _tables(0, True), _tables(1, False)
    params = list(theta.values())
    seqs = torch.tensor(list(itertools.product(range(V), repeat=T)))  # all V^T continuations
    term = build_loss("minillm", {"length_norm": False})

    def log_prob(table, s):  # log of the sequence's probability, token by token
        logits = _table_logits(table, s[None])[0]
        return F.log_softmax(logits, -1).gather(-1, s[:, None]).sum()

    # The exact answer: KL(q_θ(y) ‖ p(y)) = Σ_y q(y) (log q(y) − log p(y)) over every sequence, by autograd.
    log_q = torch.stack([log_prob(theta, s) for s in seqs])
    log_p = torch.stack([log_prob(teacher, s) for s in seqs])
    assert float(log_q.detach().exp().sum()) == pytest.approx(1.0, abs=1e-12)
    exact = torch.autograd.grad((log_q.exp() * (log_q - log_p)).sum(), params)

    # The term's gradient on each sequence, weighted by q(y); the term is a mean over its T tokens.
    expected = [torch.zeros_like(p) for p in params]
    for s, lq in zip(seqs, log_q.detach()):
        b = s[None]
        loss = term(Outputs(_table_logits(theta, b)), Outputs(_table_logits(teacher, b)), _generated(b))
        for e, g in zip(expected, torch.autograd.grad(loss * T, params, allow_unused=True)):
            if g is not None:
                e += lq.exp() * g
    for e, x in zip(expected, exact):
        torch.testing.assert_close(e, x, atol=1e-9, rtol=1e-6)
    assert max(float(x.abs().max()) for x in exact) > 1e-2  # a gradient worth matching


def test_one_batch_of_many_sequences_is_the_mean_of_their_losses():
    theta, teacher = _tables(2, False), _tables(3, False)
    seqs = torch.tensor(list(itertools.product(range(V), repeat=T)))
    term = build_loss("minillm", {})
    one = term(Outputs(_table_logits(theta, seqs)), Outputs(_table_logits(teacher, seqs)), _generated(seqs))
    each = [term(Outputs(_table_logits(theta, s[None])), Outputs(_table_logits(teacher, s[None])), _generated(s[None]))
            for s in seqs]
    assert float(one) == pytest.approx(float(torch.stack(each).mean()), abs=1e-12)


# ----- (b) teacher-mixed sampling and the importance weights -----------------------------------------------------
def _gpt(vocab: int, seed: int, sharpen: float = 1.0):
    torch.manual_seed(seed)
    model = create_model("gpt", num_classes=vocab, in_shape=(8,), vocab_size=vocab, layers=1, heads=1, hidden=8)
    with torch.no_grad():
        model.model.transformer.ln_f.weight.mul_(sharpen)  # a peaked distribution, far from the other model's
    return model.eval()


class _Bigram(torch.nn.Module):
    """A causal LM without a key/value cache (the windowed path): the logits of the next token from the last one."""

    def __init__(self, vocab: int, seed: int):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.table = torch.nn.Parameter(torch.randn(vocab, vocab, generator=g) * 2)

    def forward(self, input_ids):
        return self.table[input_ids]


def _probs(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return CausalLM().logits(model, Batch({"input_ids": ids}, ids, ids[:, 0])).double().softmax(-1)[:, -1]


@pytest.mark.parametrize("teacher_kind", ["gpt", "bigram"])
def test_mixed_sampling_draws_from_the_mixture_of_teacher_and_student(teacher_kind):
    vocab, n, alpha = 5, 6000, 0.3
    student = _gpt(vocab, 0)
    teacher = _gpt(vocab, 1, sharpen=25.0) if teacher_kind == "gpt" else _Bigram(vocab, 1)
    prompt = torch.tensor([[1, 2, 3]]).repeat(n, 1)
    teacher.train()  # the training flags come back as they were
    ids = continue_prompts(student, prompt, 2, temperature=1.0, top_k=None, teacher=teacher, teacher_mix=alpha,
                           generator=torch.Generator().manual_seed(0))
    assert ids.shape == (n, 5) and torch.equal(ids[:, :3], prompt)
    assert student.training is False and teacher.training is True
    teacher.eval()

    def check(tokens, context):  # frequencies within 4.5 binomial standard deviations of the mixture
        mix = alpha * _probs(teacher, context) + (1 - alpha) * _probs(student, context)
        freq = torch.bincount(tokens, minlength=vocab).double() / len(tokens)
        sd = (mix * (1 - mix) / len(tokens)).sqrt()
        assert bool(((freq - mix[0]).abs() <= 4.5 * sd[0] + 1e-9).all()), (freq, mix[0])
        return mix[0]

    first = check(ids[:, 3], prompt[:1])
    student_only = _probs(student, prompt[:1])[0]
    assert float((first - student_only).abs().max()) > 0.05  # the mixture is far from the student alone
    # The second token, given the most frequent first one: the caches of both models carried the context.
    v = int(torch.bincount(ids[:, 3]).argmax())
    rows = ids[:, 3] == v
    check(ids[rows, 4], ids[rows][:1, :4])


def test_no_mixing_keeps_the_students_own_samples():
    student, teacher = _gpt(5, 0), _gpt(5, 1, sharpen=25.0)
    prompt = torch.tensor([[1, 2, 3]]).repeat(4, 1)
    a = continue_prompts(student, prompt, 4, temperature=1.0, top_k=None, generator=torch.Generator().manual_seed(3))
    b = continue_prompts(student, prompt, 4, temperature=1.0, top_k=None, teacher=teacher, teacher_mix=0.0,
                         generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_importance_weights_are_q_over_the_mixture_by_hand():
    g = torch.Generator().manual_seed(0)
    q, p = torch.rand(50, generator=g, dtype=torch.float64), torch.rand(50, generator=g, dtype=torch.float64)
    for alpha in (0.0, 0.2, 0.7, 1.0):
        w = mix_weights(q.log(), p.log(), alpha, None)
        torch.testing.assert_close(w, q / (alpha * p + (1 - alpha) * q))
        if alpha < 1:
            assert float(w.max()) <= 1 / (1 - alpha) + 1e-12
    clipped = mix_weights(q.log(), p.log(), 1.0, 2.0)
    torch.testing.assert_close(clipped, (q / p).clamp(max=2.0))


@pytest.mark.parametrize("length_norm", [True, False])
def test_loss_is_the_papers_formula_by_hand(length_norm):
    """w·KL − w·R_{t+1}·log q, token by token in loops, with an unscored prompt position and a padded one."""
    g = torch.Generator().manual_seed(5)
    B, L, vocab, alpha = 2, 5, 4, 0.2
    s = torch.randn(B, L, vocab, generator=g, dtype=torch.float64)
    t = torch.randn(B, L, vocab, generator=g, dtype=torch.float64)
    y = torch.randint(0, vocab, (B, L), generator=g)
    y[:, 0] = -1
    mask = torch.ones(B, L, dtype=torch.long)
    mask[1, -1] = 0
    s[1, -1] = float("nan")  # a padded position never reaches the loss
    batch = Batch({"input_ids": torch.zeros(B, L, dtype=torch.long)}, y, torch.full((B,), -1), mask)
    term = build_loss("minillm", {"teacher_mix": alpha, "length_norm": length_norm})
    got = term(Outputs(s), Outputs(t), batch)
    total, count = 0.0, 0
    for b in range(B):
        pos = [i for i in range(L) if y[b, i] >= 0 and mask[b, i] > 0]
        q = {i: s[b, i].softmax(-1) for i in pos}
        p = {i: t[b, i].softmax(-1) for i in pos}
        r = {i: math.log(p[i][y[b, i]]) - math.log(q[i][y[b, i]]) for i in pos}
        for i in pos:
            later = [r[j] for j in pos if j > i]
            big_r = (sum(later) / len(later) if later else 0.0) if length_norm else sum(later)
            qy, py = float(q[i][y[b, i]]), float(p[i][y[b, i]])
            w = qy / (alpha * py + (1 - alpha) * qy)
            kl = float((q[i] * (q[i].log() - p[i].log())).sum())
            total += w * kl - w * big_r * math.log(qy)
            count += 1
    assert float(got) == pytest.approx(total / count, abs=1e-12)
    assert set(term.parts) == {"single", "long", "reward", "weight"}
    assert float(term.parts["single"] + term.parts["long"]) == pytest.approx(float(got), abs=1e-12)


# ----- (c) corpus batches: the next-token cross-entropy (L_PT) ---------------------------------------------------
def test_corpus_batches_are_the_weighted_cross_entropy():
    g = torch.Generator().manual_seed(1)
    s = torch.randn(3, 6, 7, generator=g, requires_grad=True)
    y = torch.randint(0, 7, (3, 6), generator=g)
    y[0, :2] = -1
    batch = Batch({"input_ids": torch.zeros(3, 6, dtype=torch.long)}, y, torch.arange(3), torch.ones(3, 6))
    for weight in (1.0, 0.25):
        term = build_loss("minillm", {"pt_weight": weight})
        got = term(Outputs(s), None, batch)  # no teacher needed on the corpus
        keep = y >= 0
        want = weight * F.cross_entropy(s[keep], y[keep])
        assert float(got) == pytest.approx(float(want), abs=1e-6)
        assert float(term.parts["pt"]) == pytest.approx(float(want) / weight, abs=1e-6)
    # a mixed batch (some rows from the corpus) is a corpus batch too
    mixed = Batch(batch.inputs, y, torch.tensor([-1, 4, -1]), batch.mask)
    assert float(build_loss("minillm", {})(Outputs(s), None, mixed)) == pytest.approx(
        float(F.cross_entropy(s[y >= 0], y[y >= 0])), abs=1e-6)


def test_term_errors():
    s = torch.randn(2, 4, 5)
    y = torch.randint(0, 5, (2, 4))
    gen = Batch({"input_ids": y}, y, torch.full((2,), -1), torch.ones(2, 4))
    with pytest.raises(TinyKDError, match="without the teacher's logits"):
        build_loss("minillm", {})(Outputs(s), None, gen)
    with pytest.raises(RecipeError, match="teacher_mix"):
        build_loss("minillm", {"teacher_mix": 1.5})
    with pytest.raises(TinyKDError, match="not a mixing weight"):
        OnPolicy(1.0, 2, teacher_mix=-0.1)


def test_on_policy_takes_the_teacher_from_the_trainer_and_alpha_from_the_term():
    student, teacher = _gpt(5, 0), _gpt(5, 1, sharpen=25.0)
    x = torch.randint(0, 5, (3, 8))
    batch = Batch({"input_ids": x}, x, torch.arange(3), torch.ones_like(x))

    class Trainer:
        model = student
        teacher_source = type("S", (), {"module": teacher})()
        terms = [(1.0, build_loss("minillm", {"teacher_mix": 0.4}))]

    cb = OnPolicy(1.0, 3)
    assert cb.mix(Trainer) == 0.4 and OnPolicy(1.0, 3, teacher_mix=0.1).mix(Trainer) == 0.1
    out = cb.on_batch(Trainer, batch)
    assert bool((out.index == -1).all()) and out.x.shape == x.shape and torch.equal(out.x[:, :3], x[:, :3])
    Trainer.teacher_source = None
    with pytest.raises(TinyKDError, match="samples tokens from the teacher"):
        cb.on_batch(Trainer, batch)


def test_methods_shows_minillm(capsys):
    from tinykd.cli import main

    assert main(["methods", "minillm"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("minillm — MiniLLM") and "ICLR 2024" in out
    assert "  teacher_mix = 0.0" in out and "  length_norm = True" in out and "  pt_weight = 1.0" in out


# ----- (d) end to end ---------------------------------------------------------------------------------------------
WORDS = "the king and queen of a small land went to sea with ships of gold and came home again".split()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    rng = random.Random(0)
    path.write_text("\n".join(" ".join(rng.choice(WORDS) for _ in range(10)) for _ in range(200)), encoding="utf-8")
    return path


def _recipe(corpus, tmp_path, losses, **on_policy):
    from tinykd.recipe import load_recipe

    return load_recipe({
        "name": "minillm", "output_dir": str(tmp_path / "runs"),
        "data": {"name": "text_corpus", "path": str(corpus), "val_fraction": 0.1, "test_fraction": 0.1,
                 "options": {"context": 16}},
        "teacher": {"model": "gpt", "kwargs": {"layers": 1, "heads": 2, "hidden": 16},
                    "train": {"epochs": 1, "batch_size": 16, "lr": 0.005, "threads": 1}},
        "student": {"model": "gpt", "kwargs": {"layers": 1, "heads": 1, "hidden": 8},
                    "train": {"epochs": 2, "batch_size": 16, "lr": 0.005, "threads": 1}},
        "distill": {"losses": losses, "scratch_baseline": False,
                    **({"on_policy": on_policy} if on_policy else {})},
    })


def test_minillm_with_teacher_mixed_on_policy_batches_trains(corpus, tmp_path, monkeypatch):
    from rich.console import Console

    import tinykd.distill.lm_policy as lm_policy
    from tinykd.stages import distill, load_data, preflight, train_teacher
    from tinykd.stages.rundir import open_run_dir

    calls = []
    real = lm_policy.continue_prompts

    def spy(*args, **kw):
        calls.append((kw.get("teacher") is not None, kw.get("teacher_mix")))
        return real(*args, **kw)

    monkeypatch.setattr(lm_policy, "continue_prompts", spy)
    recipe = _recipe(corpus, tmp_path, [{"name": "minillm", "teacher_mix": 0.2}], fraction=0.5, prompt_tokens=6,
                     teacher_mix=0.2)
    bundle = load_data(recipe)
    preflight(recipe, bundle)
    run_dir = open_run_dir(recipe, None, resume=False, changes=[], console=Console(quiet=True))
    t = train_teacher(recipe, bundle, run_dir, progress=False)
    d = distill(recipe, bundle, run_dir, t.teaching, progress=False)
    rows = [r for r in d.history if r["model"] == "student"]
    assert len(rows) == 2 and all(math.isfinite(r["loss/minillm"]) for r in rows)
    assert all(math.isfinite(r["train_loss"]) and math.isfinite(r["val_loss"]) for r in rows)
    assert calls and all(c == (True, 0.2) for c in calls)  # every on-policy batch was teacher-mixed at α = 0.2


@pytest.mark.parametrize("losses, on_policy, scheme, match", [
    ([{"name": "minillm"}], {}, "offline", "distill.on_policy is not set"),
    ([{"name": "minillm"}], {"prompt_tokens": 6, "temperature": 0.7}, "offline", "samples at temperature 0.7"),
    ([{"name": "minillm"}], {"prompt_tokens": 6, "top_k": 3}, "offline", "with top_k 3"),
    ([{"name": "minillm", "teacher_mix": 0.2}], {"prompt_tokens": 6}, "offline", "need the sampler's α"),
    ([{"name": "dml"}], {"prompt_tokens": 6, "teacher_mix": 0.2}, "online", "no teacher in the loop"),
])
def test_preflight_errors_name_the_fix(corpus, tmp_path, losses, on_policy, scheme, match):
    import tinykd

    recipe = _recipe(corpus, tmp_path, losses, **on_policy)
    recipe = recipe.model_copy(update={"distill": recipe.distill.model_copy(update={"scheme": scheme})})
    with pytest.raises(RecipeError, match=match) as err:
        tinykd.run(recipe, progress=False)
    assert err.value.fix
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
