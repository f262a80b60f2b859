"""Token-level response terms on causal-LM logits (B, T, V) against per-position references written as plain loops
in float64: forward and reverse KL, JSD(β) (plain and normalized), TVD, top-k KL (both modes) and cross-entropy."""
import math

import numpy as np
import pytest
import torch

from tinykd.distill.losses import Batch, build_loss, describe_losses
from tinykd.errors import TinyKDError
from tinykd.types import Outputs

B, T, V = 2, 5, 7
Y = np.array([[3, 0, 6, -1, -1],  # two padded positions at the end
              [-1, 2, 5, 1, 4]])  # a prompt token in front
MASK = np.array([[1, 1, 1, 0, 0],
                 [0, 1, 0, 1, 1]])  # position (1, 2) has a target but is masked out
SCORED = [(b, i) for b in range(B) for i in range(T) if Y[b, i] >= 0 and MASK[b, i] > 0]


# ----- independent float64 references, one position at a time -----------------------------------
def _softmax(z):
    m = max(z)
    e = [math.exp(v - m) for v in z]
    total = sum(e)
    return [v / total for v in e]


def _kl(p, q):
    return sum(pv * math.log(pv / qv) for pv, qv in zip(p, q) if pv > 0)


def _ref_forward_kl(zs, zt, y, temperature):
    return temperature**2 * _kl(_softmax([v / temperature for v in zt]), _softmax([v / temperature for v in zs]))


def _ref_reverse_kl(zs, zt, y, temperature):
    return temperature**2 * _kl(_softmax([v / temperature for v in zs]), _softmax([v / temperature for v in zt]))


def _ref_jsd(zs, zt, y, beta, temperature, normalized=False):
    p_s, p_t = _softmax([v / temperature for v in zs]), _softmax([v / temperature for v in zt])
    if beta == 0.0:
        return temperature**2 * _kl(p_t, p_s)
    if beta == 1.0:
        return temperature**2 * _kl(p_s, p_t)
    m = [beta * a + (1 - beta) * b for a, b in zip(p_t, p_s)]
    jsd = beta * _kl(p_t, m) + (1 - beta) * _kl(p_s, m)
    return temperature**2 * (jsd / (beta * (1 - beta)) if normalized else jsd)


def _ref_tvd(zs, zt, y, temperature):
    p_s, p_t = _softmax([v / temperature for v in zs]), _softmax([v / temperature for v in zt])
    return temperature * 0.5 * sum(abs(a - b) for a, b in zip(p_t, p_s))


def _ref_topk(zs, zt, y, k, missing_mass, temperature):
    p_s, p_t = _softmax([v / temperature for v in zs]), _softmax([v / temperature for v in zt])
    top = sorted(range(len(p_t)), key=lambda v: -p_t[v])[:k]
    if missing_mass == "zero":
        mass = sum(p_t[v] for v in top)
        loss = sum(p_t[v] / mass * math.log(p_t[v] / mass / p_s[v]) for v in top)
    else:
        rest = 1.0 - sum(p_t[v] for v in top)
        others = [v for v in range(len(p_t)) if v not in top]
        q = {v: p_t[v] for v in top} | {v: rest / len(others) for v in others}
        loss = sum(q[v] * math.log(q[v] / p_s[v]) for v in range(len(p_t)) if q[v] > 0)
    return temperature**2 * loss


def _ref_ce(zs, zt, y):
    return -math.log(_softmax(zs)[y])


def _ref_mean(fn, s, t, **kw):
    """The mean of a per-position reference over the scored positions."""
    return sum(fn(list(s[b, i]), list(t[b, i]), int(Y[b, i]), **kw) for b, i in SCORED) / len(SCORED)


# ----- helpers ----------------------------------------------------------------------------------
def _logits(seed=0, scale=2.0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(B, T, V)) * scale, rng.normal(size=(B, T, V)) * scale


def _batch(y=Y, mask=MASK):
    return Batch({"input_ids": torch.zeros(B, T, dtype=torch.long)}, torch.as_tensor(y),
                 torch.arange(B), None if mask is None else torch.as_tensor(mask))


def _call(name, params, s, t, dtype=torch.float64, batch=None):
    term = build_loss(name, params)
    s_t = torch.tensor(s, dtype=dtype)
    return term(Outputs(s_t), Outputs(torch.tensor(t, dtype=dtype)), _batch() if batch is None else batch)


CASES = [
    ("kd", {"alpha": 1.0, "temperature": 2.0}, _ref_forward_kl, {"temperature": 2.0}),
    ("reverse_kd", {"temperature": 1.5}, _ref_reverse_kl, {"temperature": 1.5}),
    *[("jsd", {"beta": b, "temperature": 1.5}, _ref_jsd, {"beta": b, "temperature": 1.5})
      for b in (0.0, 0.1, 0.5, 0.9, 1.0)],
    *[("jsd", {"beta": b, "normalized": True}, _ref_jsd, {"beta": b, "temperature": 1.0, "normalized": True})
      for b in (0.0, 0.1, 0.5, 0.9, 1.0)],
    ("tvd", {}, _ref_tvd, {"temperature": 1.0}),
    ("tvd", {"temperature": 3.0}, _ref_tvd, {"temperature": 3.0}),
    ("topk_kl", {"k": 3}, _ref_topk, {"k": 3, "missing_mass": "zero", "temperature": 1.0}),
    ("topk_kl", {"k": 3, "missing_mass": "uniform", "temperature": 2.0}, _ref_topk,
     {"k": 3, "missing_mass": "uniform", "temperature": 2.0}),
    ("topk_kl", {"k": 1, "missing_mass": "uniform"}, _ref_topk, {"k": 1, "missing_mass": "uniform", "temperature": 1.0}),
    ("ce", {}, _ref_ce, {}),
]
IDS = [f"{name}-{'-'.join(f'{k}={v}' for k, v in params.items())}" for name, params, _, _ in CASES]


# ----- values -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name,params,ref,kw", CASES, ids=IDS)
@pytest.mark.parametrize("dtype,rel", [(torch.float64, 1e-9), (torch.float32, 1e-6)])
def test_per_token_terms_match_references(name, params, ref, kw, dtype, rel):
    s, t = _logits(0)
    s = s.astype(np.float32).astype(np.float64) if dtype == torch.float32 else s  # the values float32 holds
    t = t.astype(np.float32).astype(np.float64) if dtype == torch.float32 else t
    got = _call(name, params, s, t, dtype)
    assert got.dtype == dtype
    assert got.item() == pytest.approx(_ref_mean(ref, s, t, **kw), rel=rel)


def test_hard_label_mix_is_per_token():
    s, t = _logits(1)
    for name, ref, kw in [("kd", _ref_forward_kl, {"temperature": 4.0}), ("reverse_kd", _ref_reverse_kl, {"temperature": 4.0}),
                          ("tvd", _ref_tvd, {"temperature": 4.0}),
                          ("topk_kl", _ref_topk, {"k": 2, "missing_mass": "zero", "temperature": 4.0})]:
        params = {"alpha": 0.7, "temperature": 4.0} | ({"k": 2} if name == "topk_kl" else {})
        expected = 0.7 * _ref_mean(ref, s, t, **kw) + 0.3 * _ref_mean(_ref_ce, s, t)
        assert _call(name, params, s, t).item() == pytest.approx(expected, rel=1e-9), name


def test_targets_alone_select_without_a_mask_and_the_outputs_mask_is_read():
    s, t = _logits(2)
    y_only = [(b, i) for b in range(B) for i in range(T) if Y[b, i] >= 0]
    expected = sum(_ref_ce(list(s[b, i]), None, int(Y[b, i])) for b, i in y_only) / len(y_only)
    assert _call("ce", {}, s, t, batch=_batch(mask=None)).item() == pytest.approx(expected, rel=1e-9)
    # No mask on the batch: the student's Outputs.mask takes its place.
    term = build_loss("ce", {})
    got = term(Outputs(torch.tensor(s), mask=torch.as_tensor(MASK)), None, _batch(mask=None))
    assert got.item() == pytest.approx(_ref_mean(_ref_ce, s, t), rel=1e-9)


def test_topk_with_k_equal_to_the_vocabulary_is_dense_forward_kl():
    s, t = _logits(3)
    dense = _ref_mean(_ref_forward_kl, s, t, temperature=2.0)
    for mode in ("zero", "uniform"):
        for k in (V, 100):
            got = _call("topk_kl", {"k": k, "missing_mass": mode, "temperature": 2.0}, s, t)
            assert got.item() == pytest.approx(dense, rel=1e-9), (mode, k)
    assert _call("kd", {"alpha": 1.0, "temperature": 2.0}, s, t).item() == pytest.approx(dense, rel=1e-9)


def test_topk_uniform_survives_a_vanishing_rest_mass():
    s, t = _logits(4)
    t[..., :2] += 200.0  # the two top tokens hold all the mass: the rest underflows to 0
    got = _call("topk_kl", {"k": 2, "missing_mass": "uniform"}, s, t)
    zero = _call("topk_kl", {"k": 2, "missing_mass": "zero"}, s, t)
    assert torch.isfinite(got) and got.item() == pytest.approx(zero.item(), rel=1e-9)


def test_normalized_jsd_is_continuous_from_forward_to_reverse_kl():
    s, t = _logits(5, scale=1.0)
    fwd = _ref_mean(_ref_forward_kl, s, t, temperature=1.0)
    rev = _ref_mean(_ref_reverse_kl, s, t, temperature=1.0)
    for dtype in (torch.float64, torch.float32):
        near_0 = _call("jsd", {"beta": 1e-4, "normalized": True}, s, t, dtype).item()
        near_1 = _call("jsd", {"beta": 1 - 1e-4, "normalized": True}, s, t, dtype).item()
        assert near_0 == pytest.approx(fwd, rel=1e-3) and near_0 != pytest.approx(fwd, rel=1e-9)
        assert near_1 == pytest.approx(rev, rel=1e-3) and near_1 != pytest.approx(rev, rel=1e-9)
        # Accurate near the ends even in float32, where JSD(β)/β is a ratio of two small numbers.
        held = (s, t) if dtype == torch.float64 else (s.astype(np.float32), t.astype(np.float32))
        exact = _ref_mean(_ref_jsd, *held, beta=1e-4, temperature=1.0, normalized=True)
        assert near_0 == pytest.approx(exact, rel=1e-9 if dtype == torch.float64 else 1e-5)
    # The endpoints are the KLs exactly, and equal to the plain term's.
    for beta, kl in ((0.0, fwd), (1.0, rev)):
        got = _call("jsd", {"beta": beta, "normalized": True}, s, t)
        assert got.item() == pytest.approx(kl, rel=1e-9)
        assert got.item() == _call("jsd", {"beta": beta}, s, t).item()
    # Between the ends, normalized is the plain JSD(β) divided by β(1 − β).
    plain = _call("jsd", {"beta": 0.3}, s, t).item()
    assert _call("jsd", {"beta": 0.3, "normalized": True}, s, t).item() == pytest.approx(plain / 0.21, rel=1e-9)


def test_tvd_bounds():
    s, t = _logits(6)
    assert 0.0 < _call("tvd", {}, 30 * s, -30 * s).item() <= 1.0
    assert _call("tvd", {}, s, s).item() == pytest.approx(0.0, abs=1e-12)
    assert _call("tvd", {}, s, t).item() == pytest.approx(_call("tvd", {}, t, s).item(), rel=1e-12)  # symmetric


# ----- padding never matters --------------------------------------------------------------------
ALL_TERMS = [("ce", {}), ("kd", {"alpha": 0.5}), ("kd", {"logit_standardize": True}), ("reverse_kd", {"alpha": 0.5}),
             ("jsd", {}), ("jsd", {"beta": 0.2, "normalized": True}), ("logit_mse", {}), ("dkd", {}), ("ctkd", {}),
             ("dist", {}), ("mlkd", {}), ("tvd", {"alpha": 0.5}), ("topk_kl", {"k": 3}),
             ("topk_kl", {"k": 3, "missing_mass": "uniform"})]
TERM_IDS = [f"{n}-{'-'.join(map(str, p.values()))}" for n, p in ALL_TERMS]


@pytest.mark.parametrize("name,params", ALL_TERMS, ids=TERM_IDS)
def test_garbage_in_unscored_positions_changes_nothing(name, params):
    s, t = _logits(7)
    unscored = torch.ones(B, T, dtype=torch.bool)
    for b, i in SCORED:
        unscored[b, i] = False
    clean = _call(name, params, s, t)
    for garbage in (math.nan, math.inf, -math.inf, 1e30):
        s_g, t_g = torch.tensor(s), torch.tensor(t)
        s_g[unscored], t_g[unscored] = garbage, -garbage
        s_g.requires_grad_(True)
        got = build_loss(name, params)(Outputs(s_g), Outputs(t_g), _batch())
        assert got.item() == clean.item(), garbage
        got.backward()
        assert torch.isfinite(s_g.grad).all()
        assert (s_g.grad[unscored] == 0).all() and (s_g.grad[~unscored] != 0).any()


@pytest.mark.parametrize("name,params", ALL_TERMS, ids=TERM_IDS)
def test_sequence_term_is_the_classification_term_of_its_scored_rows(name, params):
    s, t = _logits(8)
    rows = np.array([s[b, i] for b, i in SCORED]), np.array([t[b, i] for b, i in SCORED])
    y = torch.as_tensor([int(Y[b, i]) for b, i in SCORED])
    term = build_loss(name, params)
    classification = Batch(torch.zeros(len(y), 1), y, torch.arange(len(y)))
    dense = term(Outputs(torch.tensor(rows[0])), Outputs(torch.tensor(rows[1])), classification)
    assert _call(name, params, s, t).item() == pytest.approx(dense.item(), rel=1e-12)


def test_a_batch_without_scored_tokens_gives_zero_in_the_graph():
    s, t = _logits(9)
    for name, params in ALL_TERMS:
        s_g = torch.tensor(s, requires_grad=True)
        got = build_loss(name, params)(Outputs(s_g), Outputs(torch.tensor(t)), _batch(y=np.full((B, T), -1)))
        assert got.item() == 0.0 and got.requires_grad, name


@pytest.mark.parametrize("name,params", [("kd", {"alpha": 1.0}), ("jsd", {"beta": 0.3, "normalized": True}),
                                         ("tvd", {"temperature": 2.0}), ("topk_kl", {"k": 3, "missing_mass": "uniform"}),
                                         ("topk_kl", {"k": 3})])
def test_gradients_match_finite_differences(name, params):
    s, t = _logits(10)
    term = build_loss(name, params)
    t_t = torch.tensor(t)
    assert torch.autograd.gradcheck(lambda z: term(Outputs(z), Outputs(t_t), _batch()),
                                    torch.tensor(s, requires_grad=True))


# ----- half precision ---------------------------------------------------------------------------
@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name,params,ref,kw", CASES, ids=IDS)
def test_half_precision_logits_are_computed_in_float32(name, params, ref, kw, half):
    s, t = _logits(11)
    s_h, t_h = torch.tensor(s).to(half), torch.tensor(t).to(half)
    s_h.requires_grad_(True)
    got = build_loss(name, params)(Outputs(s_h), Outputs(t_h), _batch())
    assert got.dtype == torch.float32
    # Against the reference on the very values the half-precision tensors hold: float32 accuracy, not fp16's.
    expected = _ref_mean(ref, s_h.detach().double().numpy(), t_h.double().numpy(), **kw)
    assert got.item() == pytest.approx(expected, rel=2e-6)
    got.backward()
    assert s_h.grad.dtype == half and torch.isfinite(s_h.grad).all()


# ----- classification and errors ----------------------------------------------------------------
@pytest.mark.parametrize("name,params,ref,kw", CASES, ids=IDS)
def test_classification_logits_are_rows(name, params, ref, kw):
    rng = np.random.default_rng(12)
    s, t = rng.normal(size=(6, V)) * 2, rng.normal(size=(6, V)) * 2
    y = np.array([0, 1, 2, 3, 4, 5])
    got = build_loss(name, params)(Outputs(torch.tensor(s)), Outputs(torch.tensor(t)),
                                   Batch(torch.zeros(6, 1), torch.as_tensor(y), torch.arange(6)))
    expected = sum(ref(list(s[n]), list(t[n]), int(y[n]), **kw) for n in range(6)) / 6
    assert got.item() == pytest.approx(expected, rel=1e-9)


def test_shape_errors_are_named():
    s, t = _logits(13)
    with pytest.raises(TinyKDError, match=r"sequence logits \(2, 5, 7\) need targets of shape \(2, 5\); got \(2,\)"):
        _call("tvd", {}, s, t, batch=Batch(torch.zeros(B, 1), torch.zeros(B, dtype=torch.long), torch.arange(B)))
    with pytest.raises(TinyKDError, match=r"mask \(2, 4\) does not match the targets \(2, 5\)"):
        _call("topk_kl", {}, s, t, batch=_batch(mask=MASK[:, :4]))
    with pytest.raises(TinyKDError, match=r"topk_kl: student logits \(2, 5, 7\) and teacher logits \(2, 5, 6\) differ"):
        _call("topk_kl", {}, s, t[..., :6])


def test_terms_are_listed_with_their_params():
    rows = {row["name"]: row for row in describe_losses()}
    assert rows["tvd"]["params"] == {"temperature": 1.0, "alpha": 1.0}
    assert rows["topk_kl"]["params"] == {"k": 16, "missing_mass": "zero", "temperature": 1.0, "alpha": 1.0}
    assert rows["jsd"]["params"]["normalized"] is False
    with pytest.raises(Exception, match="missing_mass"):
        build_loss("topk_kl", {"missing_mass": "drop"})
