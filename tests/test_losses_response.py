"""Response-based and adversarial loss terms against independent computations written from the papers' formulas."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from tinykd.data.spec import Split
from tinykd.distill.capture import Outputs, forward_with_features
from tinykd.distill.losses import Batch, SetupContext, build_loss
from tinykd.distill.trainer import Trainer
from tinykd.errors import RecipeError, TinyKDError
from tinykd.models import create_model
from tinykd.recipe import TrainConfig


# ----- independent numpy references -------------------------------------------------------------
def _softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _kl(p, q):
    """KL(p ‖ q) per row."""
    return (p * (np.log(p) - np.log(q))).sum(axis=1)


def _zscore(z):
    return (z - z.mean(axis=1, keepdims=True)) / z.std(axis=1, keepdims=True)  # numpy std is the 1/K one


def _ce(z, y):
    return -np.log(_softmax(z)[np.arange(len(y)), y]).mean()


def _batch(y):
    return Batch(torch.zeros(len(y), 1), torch.as_tensor(y), torch.arange(len(y)))


def _logits(seed=0, n=6, k=5, scale=3.0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, k)) * scale, rng.normal(size=(n, k)) * scale


def _call(name, params, s, t, y=None):
    term = build_loss(name, params)
    y = np.arange(len(s)) % s.shape[1] if y is None else y
    return term, term(Outputs(torch.tensor(s)), Outputs(torch.tensor(t)), _batch(y))


# ----- reverse KL (MiniLLM) ---------------------------------------------------------------------
@pytest.mark.parametrize("T,alpha", [(1.0, 1.0), (4.0, 0.7)])
def test_reverse_kd_matches_formula(T, alpha):
    s, t = _logits(0)
    y = np.array([0, 1, 2, 3, 4, 0])
    rev = T**2 * _kl(_softmax(s / T), _softmax(t / T)).mean()
    term, got = _call("reverse_kd", {"temperature": T, "alpha": alpha}, s, t, y)
    assert got.item() == pytest.approx(alpha * rev + (1 - alpha) * _ce(s, y), rel=1e-6)
    assert term.parts["soft"].item() == pytest.approx(rev, rel=1e-6)
    # Reverse KL is not forward KL: the direction matters.
    assert rev != pytest.approx(T**2 * _kl(_softmax(t / T), _softmax(s / T)).mean(), rel=1e-3)


# ----- generalised JSD (GKD) --------------------------------------------------------------------
@pytest.mark.parametrize("T", [1.0, 2.0])
def test_jsd_endpoints_are_forward_and_reverse_kl(T):
    s, t = _logits(1)
    p_s, p_t = _softmax(s / T), _softmax(t / T)
    _, fwd = _call("jsd", {"beta": 0.0, "temperature": T}, s, t)
    _, rev = _call("jsd", {"beta": 1.0, "temperature": T}, s, t)
    assert fwd.item() == pytest.approx(T**2 * _kl(p_t, p_s).mean(), rel=1e-6)
    assert rev.item() == pytest.approx(T**2 * _kl(p_s, p_t).mean(), rel=1e-6)
    # β=0 is exactly Hinton's soft term.
    _, kd = _call("kd", {"temperature": T, "alpha": 1.0}, s, t)
    assert fwd.item() == pytest.approx(kd.item(), rel=1e-9)


@pytest.mark.parametrize("beta", [0.1, 0.3, 0.5, 0.9])
def test_jsd_interior_matches_gkd_definition(beta):
    s, t = _logits(2)
    T = 1.5
    p_s, p_t = _softmax(s / T), _softmax(t / T)
    m = beta * p_t + (1 - beta) * p_s
    expected = T**2 * (beta * _kl(p_t, m) + (1 - beta) * _kl(p_s, m)).mean()
    _, got = _call("jsd", {"beta": beta, "temperature": T}, s, t)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # Swapping the roles of teacher and student is the same as β -> 1 − β.
    _, swapped = _call("jsd", {"beta": 1 - beta, "temperature": T}, t, s)
    assert swapped.item() == pytest.approx(got.item(), rel=1e-6)


def test_jsd_properties():
    s, t = _logits(3)
    # JSD(0.5) is the classic Jensen-Shannon divergence: bounded by ln 2.
    _, half = _call("jsd", {"beta": 0.5}, s * 10, t * 10)
    assert 0 < half.item() <= math.log(2)
    # Near the endpoints it is forward/reverse KL only up to the factor β (resp. 1 − β), as the docstring warns.
    _, fwd = _call("jsd", {"beta": 0.0}, s, t)
    _, small = _call("jsd", {"beta": 1e-6}, s, t)
    assert small.item() / 1e-6 == pytest.approx(fwd.item(), rel=1e-2)
    _, same = _call("jsd", {"beta": 0.4}, s, s)
    assert same.item() == pytest.approx(0.0, abs=1e-9)


# ----- logit regression (Ba & Caruana) ----------------------------------------------------------
def test_logit_mse_matches_formula_and_gradient():
    s, t = _logits(4)
    _, got = _call("logit_mse", {}, s, t)
    assert got.item() == pytest.approx(0.5 * ((s - t) ** 2).sum(axis=1).mean(), rel=1e-9)
    s_t = torch.tensor(s, requires_grad=True)
    build_loss("logit_mse", {})(Outputs(s_t), Outputs(torch.tensor(t)), _batch([0] * 6)).backward()
    np.testing.assert_allclose(s_t.grad.numpy(), (s - t) / 6, rtol=1e-9)
    with pytest.raises(RecipeError, match="unknown hyper-parameter of 'logit_mse'"):
        build_loss("logit_mse", {"temperature": 2})


# ----- decoupled KD -----------------------------------------------------------------------------
def _dkd_reference(s, t, y, T):
    """TCKD and NCKD per sample, from the paper's definitions of b and p̂."""
    p_s, p_t = _softmax(s / T), _softmax(t / T)
    tckd, nckd = [], []
    for i, c in enumerate(y):
        b_s = np.array([[p_s[i, c], 1 - p_s[i, c]]])
        b_t = np.array([[p_t[i, c], 1 - p_t[i, c]]])
        tckd.append(_kl(b_t, b_s)[0])
        others = [k for k in range(s.shape[1]) if k != c]
        q_s = p_s[i, others] / p_s[i, others].sum()
        q_t = p_t[i, others] / p_t[i, others].sum()
        nckd.append(_kl(q_t[None], q_s[None])[0])
    return T**2 * np.array(tckd), T**2 * np.array(nckd)


@pytest.mark.parametrize("alpha,beta,T", [(1.0, 8.0, 4.0), (0.5, 2.0, 1.0)])
def test_dkd_matches_paper_definitions(alpha, beta, T):
    s, t = _logits(5)
    y = np.array([4, 1, 2, 0, 3, 1])
    tckd, nckd = _dkd_reference(s, t, y, T)
    term, got = _call("dkd", {"alpha": alpha, "beta": beta, "temperature": T}, s, t, y)
    assert got.item() == pytest.approx(alpha * tckd.mean() + beta * nckd.mean(), rel=1e-6)
    assert term.parts["tckd"].item() == pytest.approx(tckd.mean(), rel=1e-6)
    assert term.parts["nckd"].item() == pytest.approx(nckd.mean(), rel=1e-6)


def test_dkd_reformulates_kd():
    # The paper's identity: per sample, KD = TCKD + (1 − p_target^T) · NCKD.
    s, t = _logits(6)
    y = np.array([0, 4, 2, 3, 1, 1])
    T = 3.0
    tckd, nckd = _dkd_reference(s, t, y, T)
    kd = T**2 * _kl(_softmax(t / T), _softmax(s / T))
    p_target = _softmax(t / T)[np.arange(6), y]
    np.testing.assert_allclose(kd, tckd + (1 - p_target) * nckd, rtol=1e-9)


def test_dkd_excludes_unlabelled_samples_and_warms_up():
    s, t = _logits(7)
    y = np.array([1, -1, 2, -1, 0, 3])
    labelled = y >= 0
    _, got = _call("dkd", {}, s, t, y)
    _, ref = _call("dkd", {}, s[labelled], t[labelled], y[labelled])
    assert got.item() == pytest.approx(ref.item(), rel=1e-9)
    # A batch without labels contributes zero but stays in the graph.
    s_t = torch.tensor(s, requires_grad=True)
    zero = build_loss("dkd", {})(Outputs(s_t), Outputs(torch.tensor(t)), _batch([-1] * 6))
    assert zero.item() == 0.0 and zero.requires_grad
    # Warm-up: min(epoch / warmup_epochs, 1) times the loss.
    term = build_loss("dkd", {"warmup_epochs": 4})
    full = build_loss("dkd", {})(Outputs(torch.tensor(s)), Outputs(torch.tensor(t)), _batch(y)).item()
    for epoch, factor in [(1, 0.25), (3, 0.75), (4, 1.0), (9, 1.0)]:
        term.start_epoch(epoch, 10)
        got = term(Outputs(torch.tensor(s)), Outputs(torch.tensor(t)), _batch(y)).item()
        assert got == pytest.approx(factor * full, rel=1e-9)
    with pytest.raises(TinyKDError, match=r"label 7 is out of range for logits of shape \(6, 5\)"):
        _call("dkd", {}, s, t, np.array([7, 0, 0, 0, 0, 0]))


# ----- logit standardisation --------------------------------------------------------------------
def test_logit_standardize_is_zscore_before_base_temperature():
    s, t = _logits(8)
    T = 2.0
    zs, zt = _zscore(s), _zscore(t)
    y = np.array([0, 1, 2, 3, 4, 0])
    cases = {
        "kd": T**2 * _kl(_softmax(zt / T), _softmax(zs / T)).mean(),
        "reverse_kd": T**2 * _kl(_softmax(zs / T), _softmax(zt / T)).mean(),
        "jsd": T**2 * _kl(_softmax(zt / T), _softmax(zs / T)).mean(),  # with β = 0
        "dkd": sum(x.mean() for x in _dkd_reference(zs, zt, y, T)),  # with α = β = 1
    }
    extra = {"kd": {"alpha": 1.0}, "reverse_kd": {}, "jsd": {"beta": 0.0}, "dkd": {"alpha": 1.0, "beta": 1.0}}
    for name, expected in cases.items():
        _, got = _call(name, {"temperature": T, "logit_standardize": True, **extra[name]}, s, t, y)
        assert got.item() == pytest.approx(expected, rel=1e-5), name


@pytest.mark.parametrize("name", ["kd", "reverse_kd", "jsd", "dkd"])
def test_logit_standardize_is_invariant_to_logit_shift_and_scale(name):
    # The point of the pre-process (Sun et al. 2024): only the logit relations matter, not range or offset.
    s, t = _logits(9)
    y = np.array([0, 1, 2, 3, 4, 0])
    params = {"logit_standardize": True, **({"alpha": 1.0} if name in ("kd", "reverse_kd") else {})}
    _, a = _call(name, params, s, t, y)
    _, b = _call(name, params, 7.0 * s - 3.0, t, y)
    assert b.item() == pytest.approx(a.item(), rel=1e-5)
    _, plain = _call(name, {k: v for k, v in params.items() if k != "logit_standardize"}, 7.0 * s - 3.0, t, y)
    assert plain.item() != pytest.approx(a.item(), rel=1e-2)


# ----- kd temperature schedule ------------------------------------------------------------------
def test_kd_temperature_schedule_is_linear_over_epochs():
    term = build_loss("kd", {"temperature_schedule": {"start": 8.0, "end": 2.0}})
    assert term.temperature == 8.0
    seen = []
    for epoch in range(1, 5):
        term.start_epoch(epoch, 4)
        seen.append(term.temperature)
    assert seen == pytest.approx([8.0, 6.0, 4.0, 2.0])
    s, t = _logits(10)
    got = term(Outputs(torch.tensor(s)), Outputs(torch.tensor(t)), _batch([0] * 6))
    _, fixed = _call("kd", {"temperature": 2.0}, s, t, np.zeros(6, dtype=int))
    assert got.item() == pytest.approx(fixed.item(), rel=1e-9)
    with pytest.raises(RecipeError, match="both 'temperature' and 'temperature_schedule'"):
        build_loss("kd", {"temperature": 3.0, "temperature_schedule": {"start": 8.0, "end": 2.0}})


# ----- CTKD -------------------------------------------------------------------------------------
def test_ctkd_curriculum_and_temperature_range():
    term = build_loss("ctkd", {"lambda_max": 2.0, "curriculum_epochs": 10})
    lams = [term.curriculum(n) for n in range(0, 13)]
    assert lams[0] == 0.0 and lams[10] == pytest.approx(2.0) and lams[12] == pytest.approx(2.0)
    assert all(a < b for a, b in zip(lams[:10], lams[1:11]))  # rises monotonically over the curriculum
    assert lams[5] == pytest.approx(1.0)  # cosine: half-way at half the epochs
    assert term.temperature.item() == pytest.approx(4.0)
    assert any(p is term.theta for p in term.parameters())  # a helper the trainer optimises
    with torch.no_grad():
        term.theta.fill_(50.0)
    assert term.temperature.item() <= 21.0
    with torch.no_grad():
        term.theta.fill_(-50.0)
    assert term.temperature.item() >= 1.0
    with pytest.raises(RecipeError, match="temperature_init 30.0 must lie strictly between"):
        build_loss("ctkd", {"temperature_init": 30.0})


def test_ctkd_temperature_receives_reversed_gradient_and_student_the_kd_gradient():
    s, t = _logits(11)
    y = np.array([0, 1, 2, 3, 4, 0])
    term = build_loss("ctkd", {"temperature_init": 3.0, "alpha": 0.8, "curriculum_epochs": 4})
    term.start_epoch(2, 10)
    lam = term.curriculum(2)
    assert 0 < lam < 1
    s_t = torch.tensor(s, requires_grad=True)
    loss = term(Outputs(s_t), Outputs(torch.tensor(t)), _batch(y))
    loss.backward()
    # Independent: the same loss with a plain temperature tensor.
    T = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    s_ref = torch.tensor(s, requires_grad=True)
    p_t = torch.softmax(torch.tensor(t) / T, 1)
    kl = (p_t * (p_t.log() - torch.log_softmax(s_ref / T, 1))).sum(1).mean()
    ce = -torch.log_softmax(s_ref, 1)[torch.arange(6), torch.tensor(y)].mean()
    ref = 0.8 * T**2 * kl + 0.2 * ce
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
    ref.backward()
    np.testing.assert_allclose(s_t.grad.numpy(), s_ref.grad.numpy(), rtol=1e-5)
    # dT/dθ = (T_max − T_min) · σ(θ)(1 − σ(θ)); the reversal makes the temperature ascend the loss.
    sig = (3.0 - 1.0) / 20.0
    expected = -lam * T.grad.item() * 20.0 * sig * (1 - sig)
    assert term.theta.grad.item() == pytest.approx(expected, rel=1e-4)
    assert term.parts["temperature"].item() == pytest.approx(3.0)


# ----- DIST -------------------------------------------------------------------------------------
def _pearson(a, b):
    """Pearson correlation of two 1-D arrays from its definition; 0 where either has no variance."""
    da, db = a - a.mean(), b - b.mean()
    denom = np.sqrt((da**2).sum() * (db**2).sum())
    return 0.0 if denom == 0 else (da * db).sum() / denom


def _dist_reference(s, t, T, beta, gamma):
    p_s, p_t = _softmax(s / T), _softmax(t / T)
    inter = 1 - np.mean([_pearson(p_s[i], p_t[i]) for i in range(len(s))])
    intra = 1 - np.mean([_pearson(p_s[:, j], p_t[:, j]) for j in range(s.shape[1])])
    return T**2 * inter, T**2 * intra, T**2 * (beta * inter + gamma * intra)


@pytest.mark.parametrize("T,beta,gamma", [(1.0, 1.0, 1.0), (4.0, 2.0, 0.5)])
def test_dist_matches_pearson_relations(T, beta, gamma):
    s, t = _logits(8)
    inter, intra, total = _dist_reference(s, t, T, beta, gamma)
    term, got = _call("dist", {"temperature": T, "beta": beta, "gamma": gamma}, s, t)
    assert got.item() == pytest.approx(total, rel=1e-6)
    assert term.parts["inter"].item() == pytest.approx(inter, rel=1e-6)
    assert term.parts["intra"].item() == pytest.approx(intra, rel=1e-6)
    assert np.isclose(inter, np.mean([1 - np.corrcoef(a, b)[0, 1] for a, b in
                                      zip(_softmax(s / T), _softmax(t / T))]) * T**2)


def test_dist_known_values():
    # Two classes: a row's Pearson correlation is ±1 by which class it favours, a column's by which sample ranks higher.
    t = np.array([[1.0, 0.0], [0.0, 1.0]])
    _, opposite = _call("dist", {}, np.array([[0.0, 2.0], [2.0, 0.0]]), t)  # every row and column ρ = −1
    assert opposite.item() == pytest.approx(2.0 + 2.0, rel=1e-6)
    _, half = _call("dist", {"gamma": 0.5}, np.array([[0.0, 2.0], [2.0, 0.0]]), t)
    assert half.item() == pytest.approx(2.0 + 1.0, rel=1e-6)
    # Both rows favour class 1: rows ρ = −1 and +1 (inter 1); constant columns have no variance, ρ = 0 (intra 1).
    _, flat = _call("dist", {}, np.array([[0.0, 2.0], [0.0, 2.0]]), t)
    assert flat.item() == pytest.approx(1.0 + 1.0, rel=1e-6)
    s, _ = _logits(9)
    _, same = _call("dist", {"temperature": 4.0}, s, s.copy())
    assert same.item() == pytest.approx(0.0, abs=1e-6)
    # Softmax ignores a constant logit shift, so a shifted copy of the teacher has the same relations.
    _, shifted = _call("dist", {}, s + 5.0, s)
    assert shifted.item() == pytest.approx(0.0, abs=1e-6)


# ----- multi-level logit distillation ------------------------------------------------------------
def _mlkd_reference(s, t, temperatures):
    """(instance, batch, class) sums over the temperatures, each level written with explicit loops."""
    ins = bat = cls = 0.0
    for T in temperatures:
        p_s, p_t = _softmax(s / T), _softmax(t / T)
        n, k = p_s.shape
        ins += T**2 * _kl(p_t, p_s).mean()
        bat += sum((p_t[i] @ p_t[j] - p_s[i] @ p_s[j]) ** 2 for i in range(n) for j in range(n)) / n
        cls += sum((p_t[:, a] @ p_t[:, b] - p_s[:, a] @ p_s[:, b]) ** 2 for a in range(k) for b in range(k)) / k
    return ins, bat, cls


@pytest.mark.parametrize("params", [{}, {"temperatures": [1.0, 3.0], "instance_weight": 0.5, "batch_weight": 2.0,
                                         "class_weight": 3.0}])
def test_mlkd_matches_three_levels(params):
    s, t = _logits(10)
    ins, bat, cls = _mlkd_reference(s, t, params.get("temperatures", [2, 3, 4, 5, 6]))
    term, got = _call("mlkd", params, s, t)
    expected = params.get("instance_weight", 1) * ins + params.get("batch_weight", 1) * bat + params.get("class_weight", 1) * cls
    assert got.item() == pytest.approx(expected, rel=1e-6)
    assert [term.parts[k].item() for k in ("instance", "batch", "class")] == pytest.approx([ins, bat, cls], rel=1e-6)


def test_mlkd_known_values_and_params():
    # One sample, two classes, T = 1: p_t = [1/2, 1/2], p_s = [3/4, 1/4].
    # instance KL(p_t ‖ p_s) = ½ ln(4/3); batch (1 × 1): (½ − 10/16)² = 1/64; class (2 × 2): (25 + 1 + 1 + 9)/256 / 2.
    term, got = _call("mlkd", {"temperatures": [1.0]}, np.array([[math.log(3.0), 0.0]]), np.zeros((1, 2)))
    assert term.parts["instance"].item() == pytest.approx(0.5 * math.log(4 / 3), rel=1e-9)
    assert term.parts["batch"].item() == pytest.approx(1 / 64, rel=1e-9)
    assert term.parts["class"].item() == pytest.approx(9 / 128, rel=1e-9)
    assert got.item() == pytest.approx(0.5 * math.log(4 / 3) + 1 / 64 + 9 / 128, rel=1e-9)
    s, _ = _logits(11)
    _, same = _call("mlkd", {}, s, s.copy())
    assert same.item() == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(RecipeError, match=r"distill.losses.temperatures: .*got -1"):
        build_loss("mlkd", {"temperatures": [2.0, -1.0]})
    with pytest.raises(RecipeError, match=r"distill.losses.temperatures"):
        build_loss("mlkd", {"temperatures": []})
    with pytest.raises(RecipeError, match=r"distill.losses.gamma"):
        build_loss("dist", {"gamma": -1.0})


# ----- errors and teacher isolation -------------------------------------------------------------
@pytest.mark.parametrize("name", ["kd", "reverse_kd", "jsd", "logit_mse", "dkd", "ctkd", "dist", "mlkd"])
def test_response_terms_reject_mismatched_logits_and_never_touch_the_teacher(name):
    term = build_loss(name, {})
    with pytest.raises(TinyKDError, match=r"student logits \(4, 5\) and teacher logits \(4, 6\)"):
        term(Outputs(torch.randn(4, 5)), Outputs(torch.randn(4, 6)), _batch([0, 1, 2, 3]))
    z = torch.randn(4, 5)
    s, t = z.clone().requires_grad_(True), z.clone().requires_grad_(True)
    loss = term(Outputs(s), Outputs(t), _batch([0, 1, 2, 3]))
    loss.backward()
    assert t.grad is None and s.grad is not None
    if name in ("reverse_kd", "jsd", "logit_mse", "dkd", "dist", "mlkd"):  # pure divergences: zero when student equals teacher
        assert loss.item() == pytest.approx(0.0, abs=1e-6)


def test_bad_response_params_are_recipe_errors():
    with pytest.raises(RecipeError, match=r"distill.losses.beta"):
        build_loss("jsd", {"beta": 1.5})
    with pytest.raises(RecipeError, match=r"did you mean 'warmup_epochs'"):
        build_loss("dkd", {"warmup_epoch": 3})


# ----- adversarial ------------------------------------------------------------------------------
def _leaky(x):
    return np.where(x > 0, x, 0.2 * x)


def _discriminate(term, x):
    """The discriminator's logit, recomputed in numpy from its weights."""
    w = [(m.weight.detach().double().numpy(), m.bias.detach().double().numpy())
         for m in term.discriminator if isinstance(m, nn.Linear)]
    h = _leaky(x @ w[0][0].T + w[0][1])
    h = _leaky(h @ w[1][0].T + w[1][1])
    return (h @ w[2][0].T + w[2][1])[:, 0]


def _ctx(s_out, t_out, n=6):
    return SetupContext(nn.Identity(), nn.Identity(), s_out, t_out, _batch([0] * n), n, 5)


def _bce(logit, label):
    p = 1 / (1 + np.exp(-logit))
    return -(label * np.log(p) + (1 - label) * np.log(1 - p)).mean()


def test_adversarial_logits_loss_and_one_pass_minimax():
    torch.manual_seed(0)
    s, t = _logits(12)
    term = build_loss("adversarial", {"hidden": 16, "grl_lambda": 0.5})
    term.setup(_ctx(Outputs(torch.tensor(s).float()), Outputs(torch.tensor(t).float())))
    term.double()
    s_t = torch.tensor(s, requires_grad=True)
    t_t = torch.tensor(t, requires_grad=True)
    loss = term(Outputs(s_t), Outputs(t_t), _batch([0] * 6))
    expected = _bce(_discriminate(term, t), 1.0) + _bce(_discriminate(term, s), 0.0)
    assert loss.item() == pytest.approx(expected, rel=1e-9)
    loss.backward()
    assert t_t.grad is None  # the teacher is detached
    # The student receives −λ · ∂L_D/∂s: the reversed (and scaled) gradient of the discriminator's loss.
    s_free = torch.tensor(s, requires_grad=True)
    d_s = term.discriminator(s_free).squeeze(1)
    torch.nn.functional.binary_cross_entropy_with_logits(d_s, torch.zeros_like(d_s)).backward()
    np.testing.assert_allclose(s_t.grad.numpy(), -0.5 * s_free.grad.numpy(), rtol=1e-9)
    # The discriminator's own gradients reduce its classification loss; the student's step increases it.
    with torch.no_grad():
        for p in term.discriminator.parameters():
            p -= 0.05 * p.grad
    after_d = _bce(_discriminate(term, t), 1.0) + _bce(_discriminate(term, s), 0.0)
    assert after_d < expected
    s_next = s - 0.5 * s_t.grad.numpy()
    assert _bce(_discriminate(term, s_next), 0.0) > _bce(_discriminate(term, s), 0.0)


def test_adversarial_on_features_pools_and_projects_the_student():
    torch.manual_seed(0)
    student = create_model("cnn", num_classes=5, in_shape=(1, 8, 8), widths=[4, 6], hidden=8)
    teacher = create_model("cnn", num_classes=5, in_shape=(1, 8, 8), widths=[8, 12], hidden=16)
    term = build_loss("adversarial", {"on": "feature", "student": "features.1", "teacher": "features.1"})
    assert term.student_paths == ("features.1",) and term.teacher_paths == ("features.1",)
    x = torch.randn(6, 1, 8, 8)
    with torch.no_grad():
        t_out = forward_with_features(teacher, x, term.teacher_paths)
    s_out = forward_with_features(student, x, term.student_paths)
    term.setup(SetupContext(student, teacher, s_out, t_out, _batch([0] * 6), 6, 5))
    assert isinstance(term.projection, nn.Linear) and term.projection.weight.shape == (12, 6)
    assert term.discriminator[0].in_features == 12
    loss = term(s_out, t_out, _batch([0] * 6))
    pooled_s = term.projection(s_out.features["features.1"].mean(dim=(2, 3)))
    pooled_t = t_out.features["features.1"].mean(dim=(2, 3))
    d_t, d_s = term.discriminator(pooled_t), term.discriminator(pooled_s)
    expected = (torch.nn.functional.softplus(-d_t).mean() + torch.nn.functional.softplus(d_s).mean())
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    loss.backward()
    assert student.features[1].conv.weight.grad is not None and term.projection.weight.grad is not None
    assert all(p.grad is None for p in teacher.parameters())


def test_adversarial_errors(tmp_path):
    with pytest.raises(RecipeError, match="needs both 'student' and 'teacher'"):
        build_loss("adversarial", {"on": "feature", "student": "features.1"})
    with pytest.raises(RecipeError, match="takes no 'student'/'teacher' paths"):
        build_loss("adversarial", {"student": "features.1", "teacher": "features.1"})
    with pytest.raises(RecipeError, match="distill.losses.on"):
        build_loss("adversarial", {"on": "features"})
    term = build_loss("adversarial", {})
    with pytest.raises(TinyKDError, match=r"student logits \(6, 5\) and teacher logits \(6, 7\)"):
        term.setup(_ctx(Outputs(torch.randn(6, 5)), Outputs(torch.randn(6, 7))))
    student = create_model("cnn", num_classes=5, in_shape=(1, 8, 8), widths=[4, 6], hidden=8)
    train, val = _data()
    bad = build_loss("adversarial", {"on": "feature", "student": "features.7", "teacher": "features.1"})
    with pytest.raises(TinyKDError, match="no module at path 'features.7'"):
        Trainer(student, [(1.0, bad)], TrainConfig(epochs=1), out_dir=tmp_path, label="s",
                teacher=_mlp(), progress=False).fit(train, val)


# ----- smoke: a few training steps through the Trainer ------------------------------------------
def _data(n=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 4, 4, generator=g)
    y = (x.flatten(1).sum(1) > 0).long() + 2 * (x[:, 0, 0, 0] > 0).long()
    cut = n * 4 // 5
    return Split(x[:cut], y[:cut]), Split(x[cut:], y[cut:])


def _mlp(hidden=32, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, hidden), nn.ReLU(), nn.Linear(hidden, 4))


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    train, val = _data()
    model = _mlp(64, seed=1)
    Trainer(model, [(1.0, build_loss("ce", {}))], TrainConfig(epochs=4, batch_size=32, lr=0.01),
            out_dir=tmp_path_factory.mktemp("teacher"), label="t", progress=False).fit(train, val)
    return model.eval()


@pytest.mark.parametrize("name,params", [
    ("reverse_kd", {"temperature": 2.0}), ("jsd", {"beta": 0.5, "temperature": 2.0}), ("logit_mse", {}),
    ("dkd", {"warmup_epochs": 0}), ("ctkd", {"curriculum_epochs": 2}),
    ("kd", {"logit_standardize": True, "temperature_schedule": {"start": 4.0, "end": 2.0}}),
    ("dist", {}), ("mlkd", {}),
])
def test_response_terms_train_a_student(tmp_path, teacher, name, params):
    train, val = _data()
    res = Trainer(_mlp(), [(1.0, build_loss(name, params))], TrainConfig(epochs=3, batch_size=32, lr=0.01),
                  out_dir=tmp_path, label="s", teacher=teacher, progress=False).fit(train, val)
    losses = [row[f"loss/{name}"] for row in res.history]
    assert losses[-1] < losses[0]


def test_adversarial_trains_a_student(tmp_path, teacher):
    train, val = _data()
    term = build_loss("adversarial", {"hidden": 16})
    model = _mlp()
    res = Trainer(model, [(1.0, build_loss("ce", {})), (0.1, term)], TrainConfig(epochs=3, batch_size=32, lr=0.01),
                  out_dir=tmp_path, label="s", teacher=teacher, progress=False).fit(train, val)
    assert [row["loss/ce"] for row in res.history][-1] < res.history[0]["loss/ce"]
    assert all(math.isfinite(row["loss/adversarial"]) for row in res.history)
    assert res.history[0]["loss/adversarial.d_accuracy"] > 0.5  # the discriminator learns to tell them apart
    # The discriminator (hidden 16) is a helper of the term: built in setup() from the 4 logits.
    assert sum(p.numel() for p in term.discriminator.parameters()) == 4 * 16 + 16 + 16 * 16 + 16 + 16 + 1
