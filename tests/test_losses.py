"""Response-based loss terms against independent computations written from the papers' formulas."""
import numpy as np
import pytest
import torch

from tinykd.distill.capture import Outputs
from tinykd.distill.losses import Batch, build_loss
from tinykd.errors import RecipeError


def _softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _batch(y):
    return Batch(torch.zeros(len(y), 1), torch.as_tensor(y), torch.arange(len(y)))


@pytest.mark.parametrize("T,alpha", [(1.0, 0.5), (4.0, 0.9), (20.0, 1.0)])
def test_kd_matches_hinton_formula(T, alpha):
    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(6, 5)) * 3, rng.normal(size=(6, 5)) * 3
    y = np.array([0, 1, 2, 3, 4, 0])
    p_t, p_s = _softmax(t / T), _softmax(s / T)
    kl = (p_t * (np.log(p_t) - np.log(p_s))).sum(axis=1).mean()
    ce = -np.log(_softmax(s)[np.arange(6), y]).mean()
    expected = alpha * T**2 * kl + (1 - alpha) * ce
    term = build_loss("kd", {"temperature": T, "alpha": alpha})
    got = term(Outputs(torch.tensor(s)), Outputs(torch.tensor(t)), _batch(y))
    assert got.item() == pytest.approx(expected, rel=1e-6)
    assert term.parts["soft"].item() == pytest.approx(T**2 * kl, rel=1e-6)
    assert term.parts["hard"].item() == pytest.approx(ce, rel=1e-6)


@pytest.mark.parametrize("T", [1.0, 5.0, 20.0])
def test_kd_soft_gradient_is_T_times_probability_gap(T):
    # d/ds [T² · KL(p_t^T || p_s^T)] = T · (p_s^T − p_t^T) / N : the T² factor keeps the gradient O(1/T), not O(1/T²).
    rng = np.random.default_rng(1)
    s = torch.tensor(rng.normal(size=(4, 7)), requires_grad=True)
    t = torch.tensor(rng.normal(size=(4, 7)))
    term = build_loss("kd", {"temperature": T, "alpha": 1.0})
    term(Outputs(s), Outputs(t), _batch([0, 1, 2, 3])).backward()
    expected = T * (_softmax(s.detach().numpy() / T) - _softmax(t.numpy() / T)) / 4
    np.testing.assert_allclose(s.grad.numpy(), expected, rtol=1e-6, atol=1e-9)


def test_kd_zero_when_student_equals_teacher_and_teacher_gets_no_gradient():
    z = torch.randn(5, 3)
    s = z.clone().requires_grad_(True)
    t = z.clone().requires_grad_(True)
    term = build_loss("kd", {"temperature": 3.0, "alpha": 1.0})
    loss = term(Outputs(s), Outputs(t.detach()), _batch([0, 1, 2, 0, 1]))
    assert loss.item() == pytest.approx(0.0, abs=1e-7)
    loss.backward()
    assert t.grad is None


def test_ce_ignores_unlabelled_samples():
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [5.0, -5.0]])
    term = build_loss("ce", {})
    got = term(Outputs(logits), None, _batch([0, 1, -1]))
    expected = -np.log(_softmax(logits.numpy()[:2])[[0, 1], [0, 1]]).mean()
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_loss_errors_name_the_field_and_suggest():
    with pytest.raises(RecipeError, match=r"unknown hyper-parameter of 'kd' \(did you mean 'temperature'\?"):
        build_loss("kd", {"temprature": 2}, where="distill.losses[0]")
    with pytest.raises(RecipeError, match=r"distill.losses\[0\].temperature"):
        build_loss("kd", {"temperature": -1}, where="distill.losses[0]")
    with pytest.raises(Exception, match="did you mean 'kd'"):
        build_loss("kdd", {})
