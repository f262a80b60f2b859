"""Transformer-encoder terms (tinybert, minilm, minilm_v2, distilbert_cosine) against independent numpy computations
written from the papers' formulas, padding, layer maps and head counts, the two-step schedule, DistilBERT's
initialisation, and short text runs."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from tinykd.distill.capture import forward_with_features  # noqa: E402
from tinykd.distill.losses import SetupContext, build_loss  # noqa: E402
from tinykd.distill.losses.transformer import uniform_layer_map  # noqa: E402
from tinykd.errors import RecipeError, TinyKDError  # noqa: E402
from tinykd.models import create_model  # noqa: E402
from tinykd.models.transformer import student_from_teacher  # noqa: E402
from tinykd.recipe import Recipe, load_recipe  # noqa: E402
from tinykd.stages.distill import init_student  # noqa: E402
from tinykd.types import Batch, Outputs  # noqa: E402

B, L, VOCAB = 3, 6, 40
LENGTHS = [6, 4, 2]  # real tokens of each sample; the rest is padding


def _model(layers=2, heads=2, hidden=8, seed=0, num_classes=2):
    torch.manual_seed(seed)
    return create_model("transformer", num_classes=num_classes, in_shape=(16,), vocab_size=VOCAB, layers=layers,
                        heads=heads, hidden=hidden, intermediate=2 * hidden, dropout=0.0).eval()


def _mask(lengths=LENGTHS, length=L):
    return torch.tensor([[1] * n + [0] * (length - n) for n in lengths])


def _batch(mask):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, VOCAB, (len(mask), 16), generator=g)[:, :mask.shape[1]] * mask  # the same ids, padded
    return Batch({"input_ids": ids, "attention_mask": mask}, torch.tensor([0, 1, 0]), torch.arange(len(mask)), mask)


def _setup(name, params, student, teacher):
    """A term set up on the models (its paths come from their encoders), in float64 like the test's features."""
    torch.manual_seed(0)
    term = build_loss(name, params)
    batch = _batch(_mask())
    term.setup(SetupContext(student, teacher, Outputs(torch.zeros(B, 2)), Outputs(torch.zeros(B, 2)), batch, 10, 2))
    return term.double()


def _features(paths, widths, seed, mask):
    """Random float64 features (B, L, width) at each path; padded positions hold large values of their own."""
    rng = np.random.default_rng(seed)
    out = {}
    for p in paths:
        x = rng.normal(size=(*mask.shape, widths[p]))
        x[mask.numpy() == 0] = rng.normal(size=x[mask.numpy() == 0].shape) * 50
        out[p] = torch.tensor(x, requires_grad=True)
    return out


def _width(model, path):
    with torch.no_grad():
        return forward_with_features(model, _batch(_mask()), [path]).features[path].shape[-1]


def _call(term, s_feats, t_feats, mask):
    return term(Outputs(torch.zeros(len(mask), 2, dtype=torch.float64), s_feats, mask),
                Outputs(torch.zeros(len(mask), 2, dtype=torch.float64), t_feats, mask), _batch(mask))


def _both(term, student, teacher, mask, seed=0):
    """(student features, teacher features) at the term's paths, random."""
    s = _features(term.student_paths, {p: _width(student, p) for p in term.student_paths}, seed, mask)
    t = _features(term.teacher_paths, {p: _width(teacher, p) for p in term.teacher_paths}, seed + 1, mask)
    return s, t


def _np(t):
    return t.detach().double().numpy()


# ----- independent references --------------------------------------------------------------------------------------
def _ref_scores(a, b, heads):
    """a_i · b_j / sqrt(d) per head, numpy (B, L, heads·d) -> (B, heads, L, L), written as a loop over heads."""
    d = a.shape[-1] // heads
    return np.stack([np.einsum("bid,bjd->bij", a[..., h * d:(h + 1) * d], b[..., h * d:(h + 1) * d]) / math.sqrt(d)
                     for h in range(heads)], axis=1)


def _ref_kl(r_s, r_t, lengths):
    """KL(softmax r_t ‖ softmax r_s) over each query's real keys, mean over real queries, heads and batch."""
    total, count = 0.0, 0
    for b, n in enumerate(lengths):
        for h in range(r_s.shape[1]):
            for i in range(n):
                t = np.exp(r_t[b, h, i, :n] - r_t[b, h, i, :n].max())
                t /= t.sum()
                s = np.exp(r_s[b, h, i, :n] - r_s[b, h, i, :n].max())
                s /= s.sum()
                total += (t * np.log(t / s)).sum()
                count += 1
    return total / count


def _ref_token_mean(values, lengths):
    """The mean of per-token values (B, L) over the real tokens."""
    return sum(values[b, :n].sum() for b, n in enumerate(lengths)) / sum(lengths)


def _linear(module, x):
    if isinstance(module, torch.nn.Identity):
        return x
    return x @ _np(module.weight).T + _np(module.bias)


# ----- tinybert ----------------------------------------------------------------------------------------------------
def test_tinybert_matches_attention_hidden_and_embedding_mse_over_real_tokens():
    student, teacher = _model(2, 2, 4), _model(4, 2, 8, seed=1)
    term = _setup("tinybert", {"attention": 0.5, "hidden": 2.0, "embedding": 3.0}, student, teacher)
    assert term.layer_map == [1, 3]  # student block i <- teacher block i·k + k − 1, k = 2
    mask = _mask()
    fs, ft = _both(term, student, teacher, mask)
    got = _call(term, fs, ft, mask)
    s, t = (_np(v) for v in (fs["model.bert.embeddings"], ft["model.bert.embeddings"]))

    att = hid = 0.0
    for i, j in enumerate([1, 3]):
        q = lambda f, k, w: _np(f[f"model.bert.encoder.layer.{k}.attention.self.{w}"])  # noqa: E731
        a_s = _ref_scores(q(fs, i, "query"), q(fs, i, "key"), 2)
        a_t = _ref_scores(q(ft, j, "query"), q(ft, j, "key"), 2)
        sq = [((a_s[b, :, :n, :n] - a_t[b, :, :n, :n]) ** 2).sum() for b, n in enumerate(LENGTHS)]
        att += sum(sq) / (2 * sum(n * n for n in LENGTHS))  # mean over heads and real (query, key) pairs
        h_s = _linear(term.hidden_projection, _np(fs[f"model.bert.encoder.layer.{i}"]))
        hid += _ref_token_mean(((h_s - _np(ft[f"model.bert.encoder.layer.{j}"])) ** 2).mean(-1), LENGTHS)
    emb = _ref_token_mean(((_linear(term.embedding_projection, s) - t) ** 2).mean(-1), LENGTHS)
    assert term.hidden_projection is not term.embedding_projection  # W_h and W_e are separate maps 4 -> 8
    assert (term.hidden_projection.in_features, term.hidden_projection.out_features) == (4, 8)
    assert got.item() == pytest.approx(0.5 * att + 2.0 * hid + 3.0 * emb, rel=1e-9)
    for name, value in (("attention", att), ("hidden", hid), ("embedding", emb)):
        assert term.parts[name].item() == pytest.approx(value, rel=1e-9)


def test_tinybert_same_width_has_no_projection_and_zero_weights_capture_nothing():
    student, teacher = _model(2, 2, 8), _model(2, 2, 8, seed=1)
    term = _setup("tinybert", {"attention": 0.0, "embedding": 0.0}, student, teacher)
    assert isinstance(term.hidden_projection, torch.nn.Identity) and not list(term.parameters())
    assert term.student_paths == ("model.bert.encoder.layer.0", "model.bert.encoder.layer.1")
    assert term.layer_map == [0, 1]


@pytest.mark.parametrize("student_layers,teacher_layers,expected", [
    (2, 4, [1, 3]), (3, 6, [1, 3, 5]), (1, 3, [2]), (2, 2, [0, 1]), (4, 12, [2, 5, 8, 11]), (2, 3, [0, 2])])
def test_uniform_layer_map(student_layers, teacher_layers, expected):
    assert uniform_layer_map(student_layers, teacher_layers) == expected


def test_tinybert_takes_a_given_layer_map_and_rejects_one_that_does_not_fit():
    student, teacher = _model(2, 2, 8), _model(4, 2, 8, seed=1)
    term = _setup("tinybert", {"layer_map": [0, 2]}, student, teacher)
    assert "model.bert.encoder.layer.2.attention.self.key" in term.teacher_paths
    assert "model.bert.encoder.layer.3" not in term.teacher_paths
    for bad in ([0, 4], [1]):
        with pytest.raises(TinyKDError, match=r"layer_map .* student has 2 layers and the teacher 4") as err:
            _setup("tinybert", {"layer_map": bad}, student, teacher)
        assert "0 to 3" in err.value.fix
    with pytest.raises(TinyKDError, match="needs a teacher at least as deep"):
        _setup("tinybert", {}, _model(3, 2, 8), _model(2, 2, 8, seed=1))
    with pytest.raises(RecipeError, match="layer_map"):
        build_loss("tinybert", {"layer_map": [-1]})
    with pytest.raises(RecipeError, match="all 0"):
        build_loss("tinybert", {"attention": 0, "hidden": 0, "embedding": 0})


def test_tinybert_head_mismatch_names_both_and_the_fix():
    student, teacher = _model(2, 2, 8), _model(2, 4, 8, seed=1)
    with pytest.raises(TinyKDError, match="student has 2 attention heads and the teacher 4") as err:
        _setup("tinybert", {}, student, teacher)
    assert "minilm" in err.value.fix and "attention: 0" in err.value.fix
    _setup("tinybert", {"attention": 0}, student, teacher)  # hidden and embedding losses need no equal heads


def test_the_terms_need_token_models():
    cnn = create_model("mlp", num_classes=2, in_shape=(L,), hidden=[4])
    for name in ("tinybert", "minilm", "minilm_v2", "distilbert_cosine"):
        with pytest.raises(TinyKDError, match="no BERT-style encoder") as err:
            _setup(name, {}, cnn, _model())
        assert "transformer" in err.value.fix


def test_tinybert_two_step_schedule_switches_off_after_until_epoch():
    student, teacher = _model(2, 2, 8), _model(2, 2, 8, seed=1)
    term = _setup("tinybert", {"until_epoch": 2}, student, teacher)
    mask = _mask()
    fs, ft = _both(term, student, teacher, mask)
    assert term.exclusive  # before the first epoch: step 1, it trains alone
    for epoch in (1, 2):
        term.start_epoch(epoch, 4)
        assert term.exclusive and _call(term, fs, ft, mask).item() > 0
    for epoch in (3, 4):
        term.start_epoch(epoch, 4)
        value = _call(term, fs, ft, mask)
        assert not term.exclusive and value.item() == 0.0
        assert {k: v.item() for k, v in term.parts.items()} == {"attention": 0.0, "hidden": 0.0, "embedding": 0.0}
    plain = _setup("tinybert", {}, student, teacher)
    plain.start_epoch(5, 5)
    assert not getattr(plain, "exclusive") and _call(plain, fs, ft, mask).item() > 0  # one step: always on


# ----- minilm ------------------------------------------------------------------------------------------------------
def test_minilm_matches_attention_and_value_relation_kl_of_the_last_layer():
    student, teacher = _model(1, 2, 4), _model(3, 2, 8, seed=1)
    term = _setup("minilm", {"attention": 1.0, "value": 0.5}, student, teacher)
    assert all(".layer.0." in p for p in term.student_paths) and all(".layer.2." in p for p in term.teacher_paths)
    mask = _mask()
    fs, ft = _both(term, student, teacher, mask)
    got = _call(term, fs, ft, mask)
    f = lambda feats, k, w: _np(feats[f"model.bert.encoder.layer.{k}.attention.self.{w}"])  # noqa: E731
    at = _ref_kl(_ref_scores(f(fs, 0, "query"), f(fs, 0, "key"), 2), _ref_scores(f(ft, 2, "query"), f(ft, 2, "key"), 2),
                 LENGTHS)
    vr = _ref_kl(_ref_scores(f(fs, 0, "value"), f(fs, 0, "value"), 2),
                 _ref_scores(f(ft, 2, "value"), f(ft, 2, "value"), 2), LENGTHS)
    assert got.item() == pytest.approx(at + 0.5 * vr, rel=1e-9)
    assert term.parts["attention"].item() == pytest.approx(at, rel=1e-9)
    assert term.parts["value"].item() == pytest.approx(vr, rel=1e-9)


def test_minilm_needs_equal_heads_and_names_minilm_v2():
    with pytest.raises(TinyKDError, match="student has 2 attention heads and the teacher 4") as err:
        _setup("minilm", {}, _model(1, 2, 8), _model(2, 4, 8, seed=1))
    assert "minilm_v2" in err.value.fix


def test_minilm_v2_relations_split_concatenated_heads_of_different_head_counts():
    student, teacher = _model(1, 2, 4), _model(3, 4, 8, seed=1)
    term = _setup("minilm_v2", {"teacher_layer": 1}, student, teacher)  # relation heads: the teacher's 4
    assert all(".layer.1." in p for p in term.teacher_paths)
    mask = _mask()
    fs, ft = _both(term, student, teacher, mask)
    got = _call(term, fs, ft, mask)
    expected = {}
    for w in ("query", "key", "value"):
        x_s, x_t = (_np(fs[f"model.bert.encoder.layer.0.attention.self.{w}"]),
                    _np(ft[f"model.bert.encoder.layer.1.attention.self.{w}"]))
        expected[w] = _ref_kl(_ref_scores(x_s, x_s, 4), _ref_scores(x_t, x_t, 4), LENGTHS)
    assert got.item() == pytest.approx(sum(expected.values()), rel=1e-9)
    assert {k: pytest.approx(v.item(), rel=1e-9) for k, v in term.parts.items()} == expected
    two = _setup("minilm_v2", {"relation_heads": 2, "relations": ["value"]}, student, teacher)  # last teacher layer
    assert two.student_paths == ("model.bert.encoder.layer.0.attention.self.value",)
    assert two.teacher_paths == ("model.bert.encoder.layer.2.attention.self.value",)
    fs2, ft2 = _both(two, student, teacher, mask)
    x_s, x_t = _np(fs2[two.student_paths[0]]), _np(ft2[two.teacher_paths[0]])
    assert _call(two, fs2, ft2, mask).item() == pytest.approx(
        _ref_kl(_ref_scores(x_s, x_s, 2), _ref_scores(x_t, x_t, 2), LENGTHS), rel=1e-9)


def test_minilm_v2_rejects_relation_heads_that_do_not_divide_and_a_missing_layer():
    student, teacher = _model(1, 2, 4), _model(2, 4, 8, seed=1)
    with pytest.raises(TinyKDError, match="3 relation heads do not divide the student's width 4") as err:
        _setup("minilm_v2", {"relation_heads": 3}, student, teacher)
    assert "[1, 2, 4]" in err.value.fix
    with pytest.raises(TinyKDError, match="teacher_layer 2 is out of range: the teacher has 2 layers"):
        _setup("minilm_v2", {"teacher_layer": 2}, student, teacher)
    with pytest.raises(RecipeError, match="relations"):
        build_loss("minilm_v2", {"relations": ["query", "queries"]})


# ----- distilbert_cosine -------------------------------------------------------------------------------------------
def test_distilbert_cosine_is_one_minus_cosine_of_last_hidden_states_over_real_tokens():
    student, teacher = _model(1, 2, 8), _model(2, 2, 8, seed=1)
    term = _setup("distilbert_cosine", {}, student, teacher)
    assert term.student_paths == ("model.bert.encoder.layer.0",)
    assert term.teacher_paths == ("model.bert.encoder.layer.1",)
    mask = _mask()
    fs, ft = _both(term, student, teacher, mask)
    h_s, h_t = _np(fs["model.bert.encoder.layer.0"]), _np(ft["model.bert.encoder.layer.1"])
    cos = (h_s * h_t).sum(-1) / (np.linalg.norm(h_s, axis=-1) * np.linalg.norm(h_t, axis=-1))
    assert _call(term, fs, ft, mask).item() == pytest.approx(_ref_token_mean(1 - cos, LENGTHS), rel=1e-9)
    with pytest.raises(TinyKDError, match="student's hidden states are 4 wide, the teacher's 8") as err:
        _setup("distilbert_cosine", {}, _model(1, 2, 4), teacher)
    assert "hidden_cosine" in err.value.fix


# ----- padding -----------------------------------------------------------------------------------------------------
TERMS = [("tinybert", {}), ("minilm", {}), ("minilm_v2", {}), ("distilbert_cosine", {})]


@pytest.mark.parametrize("name,params", TERMS)
def test_padded_values_and_more_padding_change_nothing(name, params):
    student, teacher = _model(1, 2, 8), _model(2, 2, 8, seed=1)
    term = _setup(name, params, student, teacher)
    mask = _mask()
    fs, ft = _both(term, student, teacher, mask)
    value = _call(term, fs, ft, mask)
    value.backward()
    assert all(torch.all(f.grad[mask == 0] == 0) for f in fs.values())  # padding gets no gradient

    changed = [{k: torch.where(mask[..., None] > 0, v, v * 7 - 3).detach() for k, v in f.items()} for f in (fs, ft)]
    assert _call(term, *changed, mask).item() == pytest.approx(value.item(), rel=1e-12)
    longer = _mask(length=L + 3)
    padded = [{k: torch.cat([v.detach(), torch.randn(B, 3, v.shape[-1], dtype=v.dtype) * 100], 1)
               for k, v in f.items()} for f in (fs, ft)]
    assert _call(term, *padded, longer).item() == pytest.approx(value.item(), rel=1e-12)


@pytest.mark.parametrize("name,params", TERMS)
def test_on_the_models_a_longer_padded_batch_gives_the_same_value(name, params):
    student, teacher = _model(1, 2, 8), _model(2, 2, 8, seed=1)
    term = _setup(name, params, student, teacher).float()
    values = []
    for length in (L, L + 4):
        batch = _batch(_mask(length=length))
        with torch.no_grad():
            s = forward_with_features(student, batch, term.student_paths)
            t = forward_with_features(teacher, batch, term.teacher_paths)
        values.append(term(s, t, batch).item())
    # abs: MiniLM's KL of near-equal attention distributions is ~1e-5, so float32 summation order (it changes with
    # the sequence length and the thread count) moves it by ~1e-8; leaked padding would move it by far more
    assert values[0] > 0 and values[1] == pytest.approx(values[0], rel=1e-4, abs=1e-7)


# ----- DistilBERT's initialisation ---------------------------------------------------------------------------------
def test_student_from_teacher_copies_every_other_layer_bit_for_bit_and_forwards_like_them():
    teacher = _model(4, 2, 8, seed=3, num_classes=3)
    student = student_from_teacher(teacher).eval()
    assert student.training is False and student.config.num_hidden_layers == 2
    s, t = student.state_dict(), teacher.state_dict()
    for key, value in s.items():
        name = key.replace("encoder.layer.1.", "encoder.layer.2.")
        assert torch.equal(value, t[name]), key
    assert any("pooler" in k for k in s) and any("classifier" in k for k in s)

    batch = _batch(_mask())
    ids, mask = batch.args()
    bert = teacher.model.bert
    with torch.no_grad():
        h = bert.embeddings(input_ids=ids)
        additive = (1.0 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
        for i in (0, 2):  # the kept teacher blocks, by hand
            out = bert.encoder.layer[i](h, attention_mask=additive)
            h = out[0] if isinstance(out, tuple) else out
        manual = teacher.model.classifier(bert.pooler(h))
        assert torch.equal(student(ids, mask), manual)
    picked = student_from_teacher(teacher, [3]).state_dict()
    assert torch.equal(picked["model.bert.encoder.layer.0.output.dense.weight"],
                       t["model.bert.encoder.layer.3.output.dense.weight"])


def _recipe(init_layers, teacher_layers=4, student_layers=2, hidden=8, teacher="transformer"):
    kwargs = {"layers": teacher_layers, "heads": 2, "hidden": 8, "intermediate": 16}
    return Recipe.model_validate({
        "teacher": {"model": teacher, "kwargs": kwargs if teacher == "transformer" else {}},
        "student": {"model": "transformer", "init_layers": init_layers,
                    "kwargs": {**kwargs, "layers": student_layers, "hidden": hidden, "intermediate": 2 * hidden}}})


def test_init_student_applies_init_layers_and_errors_name_the_teacher_layers():
    teacher = _model(4, 2, 8, seed=3)
    student = _model(2, 2, 8, seed=4)
    init_student(_recipe([1, 3]), student, teacher)
    assert torch.equal(student.state_dict()["model.bert.encoder.layer.1.attention.self.query.weight"],
                       teacher.state_dict()["model.bert.encoder.layer.3.attention.self.query.weight"])
    untouched = _model(2, 2, 8, seed=4)
    assert init_student(_recipe(None), untouched, teacher) is untouched
    with pytest.raises(RecipeError, match=r"student.init_layers: layers \[0, 5\] do not fit the teacher: it has 4 "
                                          r"layers") as err:
        init_student(_recipe([0, 5]), _model(2, 2, 8), teacher)
    assert "every_other = [0, 2]" in err.value.fix
    with pytest.raises(RecipeError, match="student has 3 layers but keeps 2 layers .* of the teacher's 4"):
        init_student(_recipe("every_other", student_layers=3), _model(3, 2, 8), teacher)
    with pytest.raises(RecipeError, match="model.bert.embeddings.word_embeddings.weight' is") as err:
        init_student(_recipe("every_other", hidden=4), _model(2, 2, 4), teacher)
    assert "hidden: 8" in err.value.fix
    with pytest.raises(RecipeError, match=r"teacher \(MLP\) is not a token model"):
        init_student(_recipe("every_other"), _model(2, 2, 8),
                     create_model("mlp", num_classes=2, in_shape=(L,), hidden=[4]))
    with pytest.raises(RecipeError, match="scheme has no teacher"):
        init_student(_recipe("every_other"), _model(2, 2, 8), None)


def test_recipe_init_layers_values():
    assert _recipe("every_other").student.init_layers == "every_other"
    assert load_recipe(None, ["student.init_layers=[0, 2]"]).student.init_layers == [0, 2]
    for bad in ("[]", "[-1]", "every_third", "[1.5]"):
        with pytest.raises(RecipeError, match=r"student.init_layers: must be 'every_other' or a non-empty list of "
                                              r"teacher layer indices"):
            load_recipe(None, [f"student.init_layers={bad}"])


# ----- short text runs ---------------------------------------------------------------------------------------------
POSITIVE, NEGATIVE = ["good", "great", "fine"], ["bad", "awful", "dull"]
FILLER = ["the", "film", "was", "a", "story", "and", "very", "plot"]

RECIPE = """
name: {name}
seed: 0
data:
  name: glue_tsv
  path: {data}
  val_fraction: 0.2
  options: {{tokenizer: wordpiece, vocab_size: 80, max_length: 12}}
teacher:
  model: transformer
  kwargs: {{layers: 2, heads: 2, hidden: 16, intermediate: 32, dropout: 0.0}}
  train: {{epochs: 3, batch_size: 32, optimizer: adamw, lr: 0.003}}
student:
  model: transformer
  kwargs: {student}
  train: {{epochs: 3, batch_size: 32, optimizer: adamw, lr: 0.003}}
  {init}
distill:
  scratch_baseline: false
  losses: {losses}
quantize: {{enabled: false}}
export: {{onnx: false}}
report: {{enabled: false}}
measure: {{repeats: 5, rounds: 1, warmup: 0, batch_sizes: [1]}}
output_dir: {out}
"""


def _write_tsv(path, n, seed):
    rng = np.random.default_rng(seed)
    lines = ["sentence\tlabel"]
    for _ in range(n):
        label = int(rng.integers(2))
        words = list(rng.choice(FILLER, size=int(rng.integers(1, 8)))) + [rng.choice(POSITIVE if label else NEGATIVE)]
        rng.shuffle(words)
        lines.append(" ".join(words) + f"\t{label}")
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def text_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("encoder_kd")
    (root / "data").mkdir()
    _write_tsv(root / "data" / "train.tsv", 160, 0)
    _write_tsv(root / "data" / "test.tsv", 40, 1)
    return root


def _run(root, name, losses, student, init=""):
    from tinykd.pipeline import run

    (root / f"{name}.yaml").write_text(RECIPE.format(name=name, data=root / "data", out=root / "runs", losses=losses,
                                                     student=student, init=init))
    return run(load_recipe(root / f"{name}.yaml"), progress=False)


def _student_rows(result):
    return [r for r in result.history if r["model"] == "student"]


def test_a_text_run_with_tinybert_two_steps_and_kd(text_data):
    result = _run(text_data, "tinybert", "[{name: tinybert, until_epoch: 2}, {name: kd, temperature: 1.0, alpha: 1.0}]",
                  "{layers: 1, heads: 2, hidden: 8, intermediate: 16, dropout: 0.0}")
    rows = _student_rows(result)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert all(np.isfinite(r["train_loss"]) for r in rows)
    assert rows[0]["loss/tinybert"] > 0 and rows[0]["loss/kd"] == 0.0  # step 1: intermediate layers alone
    assert rows[2]["loss/tinybert"] == 0.0 and rows[2]["loss/kd"] > 0  # step 2: the prediction layer alone
    assert result.metrics["run"]["helper_params"] == 8 * 16 + 16 + 8 * 16 + 16  # W_h and W_e, 8 -> 16


def test_a_text_run_with_minilm_and_a_distilbert_initialised_student(text_data, monkeypatch):
    import importlib

    stage = importlib.import_module("tinykd.stages.distill")  # the module (tinykd.stages.distill is also a function)
    calls = []
    real = stage.init_from_teacher
    monkeypatch.setattr(stage, "init_from_teacher", lambda s, t, layers: calls.append(layers) or real(s, t, layers))
    result = _run(text_data, "minilm", "[{name: minilm}, {name: distilbert_cosine}, {name: kd, alpha: 0.5}]",
                  "{layers: 1, heads: 2, hidden: 16, intermediate: 32, dropout: 0.0}", "init_layers: every_other")
    rows = _student_rows(result)
    assert calls == ["every_other"] * 2  # preflight checks the list on its untrained models, then the stage copies
    assert len(rows) == 3 and all(np.isfinite(r[k]) for r in rows for k in ("train_loss", "loss/minilm",
                                                                             "loss/distilbert_cosine"))
    assert rows[0]["loss/minilm.attention"] >= 0 and "loss/minilm.value" in rows[0]
