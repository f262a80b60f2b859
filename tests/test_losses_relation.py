"""Relation-based loss terms against independent computations written from the papers' formulas."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from tinykd.data.spec import Split
from tinykd.distill.capture import Outputs
from tinykd.distill.losses import Batch, SetupContext, build_loss
from tinykd.distill.trainer import Trainer
from tinykd.errors import RecipeError, TinyKDError
from tinykd.models import create_model
from tinykd.recipe import TrainConfig

from interrupt import Stop, stop_after

RNG = np.random.default_rng(0)


def _t(a, grad=False):
    return torch.tensor(a, dtype=torch.float64, requires_grad=grad)


def _batch(b, index=None):
    return Batch(torch.zeros(b, 1), torch.full((b,), -1), torch.arange(b) if index is None else torch.as_tensor(index))


def _ctx(s, t, num_train=100):
    """Setup context with example outputs: tensors are taken as logits, Outputs as they are."""
    s, t = (x if isinstance(x, Outputs) else Outputs(x.detach()) for x in (s, t))
    return SetupContext(nn.Identity(), nn.Identity(), s, t, _batch(len(s.logits)), num_train, 4)


def _huber(a, b):
    x = np.abs(a - b)
    return np.where(x <= 1.0, 0.5 * x**2, x - 0.5).mean()


def _rkd_np(s, t):
    """(L_RKD-D, L_RKD-A) from explicit differences, vertex-in-the-middle angles as written in the paper."""
    def potentials(e):
        b = len(e)
        diff = e[:, None, :] - e[None, :, :]                     # [i, j] = e_i − e_j
        d = np.linalg.norm(diff, axis=2)
        mu = d[~np.eye(b, dtype=bool)].mean()                    # eq. 3
        n = np.linalg.norm(diff, axis=2, keepdims=True)
        u = np.divide(diff, n, out=np.zeros_like(diff), where=n > 0)
        angles = np.einsum("jid,jkd->ijk", u, u)                 # <e_i − e_j, e_k − e_j> / norms, eq. 5
        return d / mu, angles
    ds, as_ = potentials(s)
    dt, at = potentials(t)
    return _huber(ds, dt), _huber(as_, at)


def _normalize_rows(a):
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def _sp_np(s, t):
    gs, gt = _normalize_rows(s @ s.T), _normalize_rows(t @ t.T)
    return ((gt - gs) ** 2).sum() / len(s) ** 2


def _pkt_np(s, t, eps=1e-7):
    def cond(e):
        e = e / (np.linalg.norm(e, axis=1, keepdims=True) + eps)
        k = (e @ e.T + 1) / 2
        return k / k.sum(1, keepdims=True)
    ps, pt = cond(s), cond(t)
    return (pt * np.log((pt + eps) / (ps + eps))).mean()


def _cc_np(s, t, gamma, order):
    def corr(f):
        f = _normalize_rows(f)
        x = f @ f.T
        return sum(math.exp(-2 * gamma) * (2 * gamma) ** p / math.factorial(p) * x**p for p in range(order + 1))
    return ((corr(t) - corr(s)) ** 2).sum() / len(s) ** 2


# ----- RKD ---------------------------------------------------------------------------------------------------

def test_rkd_matches_paper_formulas_and_logs_both_parts():
    s, t = RNG.normal(size=(7, 5)), RNG.normal(size=(7, 9)) * 3
    t[0] += 8.0  # an outlier: some pairs fall in the linear part of the Huber loss
    dist, angle = _rkd_np(s, t)
    term = build_loss("rkd", {"distance_weight": 2.0, "angle_weight": 3.0})
    got = term(Outputs(_t(s)), Outputs(_t(t)), _batch(7))
    assert term.parts["distance"].item() == pytest.approx(dist, rel=1e-6)
    assert term.parts["angle"].item() == pytest.approx(angle, rel=1e-6)
    assert got.item() == pytest.approx(2 * dist + 3 * angle, rel=1e-6)


def test_rkd_is_zero_for_scaled_rotated_shifted_copy_of_teacher():
    t = RNG.normal(size=(9, 6))
    q, _ = np.linalg.qr(RNG.normal(size=(6, 6)))
    term = build_loss("rkd", {})
    for s in (0.01 * t, 7.0 * t + 3.0, t @ q):
        term(Outputs(_t(s)), Outputs(_t(t)), _batch(9))
        assert term.parts["distance"].item() == pytest.approx(0.0, abs=1e-12)
        assert term.parts["angle"].item() == pytest.approx(0.0, abs=1e-12)
    # float32 through the Gram expansion stays accurate on centred embeddings far from the origin
    t32 = torch.randn(16, 64) + 100.0
    term(Outputs(2 * t32), Outputs(t32), _batch(16))
    assert term.parts["distance"].item() < 1e-8 and term.parts["angle"].item() < 1e-8


def test_rkd_of_a_single_sample_is_zero_with_a_graph():
    s = torch.randn(1, 4, requires_grad=True)
    loss = build_loss("rkd", {})(Outputs(s), Outputs(torch.randn(1, 4)), _batch(1))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(s.grad, torch.zeros_like(s))


# ----- SP ----------------------------------------------------------------------------------------------------

def test_sp_matches_paper_on_flattened_maps_and_sums_pairs():
    a_s, a_t = RNG.normal(size=(5, 3, 4, 4)), RNG.normal(size=(5, 8, 2, 2))
    b_s, b_t = RNG.normal(size=(5, 6)), RNG.normal(size=(5, 10))
    term = build_loss("sp", {"pairs": [["s1", "t1"], ["s2", "t2"]]})
    assert term.student_paths == ("s1", "s2") and term.teacher_paths == ("t1", "t2")
    s = Outputs(torch.zeros(5, 2), {"s1": _t(a_s), "s2": _t(b_s)})
    t = Outputs(torch.zeros(5, 2), {"t1": _t(a_t), "t2": _t(b_t)})
    expected = _sp_np(a_s.reshape(5, -1), a_t.reshape(5, -1)) + _sp_np(b_s, b_t)
    assert term(s, t, _batch(5)).item() == pytest.approx(expected, rel=1e-10)


def test_sp_invariances():
    # Invariant to a global scale and to any orthonormal map of the feature space (widths may differ); a
    # per-sample scaling is NOT an invariance: row normalisation removes a_i but leaves a_j in G_ij.
    t = RNG.normal(size=(6, 4))
    q, _ = np.linalg.qr(RNG.normal(size=(9, 9)))
    term = build_loss("sp", {})
    for s in (5.0 * t, t @ q[:4]):
        assert term(Outputs(_t(s)), Outputs(_t(t)), _batch(6)).item() == pytest.approx(0.0, abs=1e-12)
    per_sample = t * RNG.uniform(0.2, 5.0, size=(6, 1))
    assert term(Outputs(_t(per_sample)), Outputs(_t(t)), _batch(6)).item() > 1e-3


# ----- PKT ---------------------------------------------------------------------------------------------------

def test_pkt_matches_reference_formula():
    s, t = RNG.normal(size=(8, 3)), RNG.normal(size=(8, 11))
    got = build_loss("pkt", {})(Outputs(_t(s)), Outputs(_t(t)), _batch(8))
    assert got.item() == pytest.approx(_pkt_np(s, t), rel=1e-8)
    assert got.item() > 0


def test_pkt_zero_when_equal_and_invariant_to_per_sample_scale():
    t = RNG.normal(size=(6, 5))
    term = build_loss("pkt", {})
    for s in (t, t * RNG.uniform(0.1, 10.0, size=(6, 1))):
        assert term(Outputs(_t(s)), Outputs(_t(t)), _batch(6)).item() == pytest.approx(0.0, abs=1e-10)


# ----- CC ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("gamma,order", [(0.4, 2), (1.0, 0), (0.7, 5)])
def test_cc_matches_taylor_formula(gamma, order):
    s, t = RNG.normal(size=(6, 4)), RNG.normal(size=(6, 4))
    term = build_loss("cc", {"gamma": gamma, "order": order})
    got = term(Outputs(_t(s)), Outputs(_t(t)), _batch(6))  # equal widths: no setup, no helper needed
    assert got.item() == pytest.approx(_cc_np(s, t, gamma, order), rel=1e-10)


def test_cc_high_order_converges_to_gaussian_rbf():
    s, t = _normalize_rows(RNG.normal(size=(5, 3))), _normalize_rows(RNG.normal(size=(5, 3)))
    rbf = lambda f: np.exp(-0.4 * ((f[:, None] - f[None]) ** 2).sum(-1))  # noqa: E731
    expected = ((rbf(t) - rbf(s)) ** 2).sum() / 25
    got = build_loss("cc", {"order": 20})(Outputs(_t(s)), Outputs(_t(t)), _batch(5))
    assert got.item() == pytest.approx(expected, rel=1e-9)


def test_cc_builds_student_embedding_only_when_widths_differ():
    s, t = torch.randn(6, 4, requires_grad=True), torch.randn(6, 10, requires_grad=True)
    term = build_loss("cc", {})
    with pytest.raises(TinyKDError, match=r"(?s)\(6, 4\) and the teacher embedding \(6, 10\).*setup"):
        term(Outputs(s), Outputs(t), _batch(6))
    term.setup(_ctx(s, t))
    assert isinstance(term.embed[0], nn.Linear) and term.embed[0].weight.shape == (10, 4)
    loss = term(Outputs(s), Outputs(t), _batch(6))
    expected = _cc_np(term.embed[0](s).detach().double().numpy(), t.detach().double().numpy(), 0.4, 2)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert s.grad.abs().sum() > 0 and term.embed[0].weight.grad.abs().sum() > 0 and t.grad is None
    same = build_loss("cc", {})
    same.setup(_ctx(s, torch.randn(6, 4)))
    assert isinstance(same.embed[0], nn.Identity) and sum(p.numel() for p in same.parameters()) == 0
    equal = torch.randn(6, 4)
    assert same(Outputs(equal), Outputs(equal), _batch(6)).item() == pytest.approx(0.0, abs=1e-12)



def test_pool_averages_maps_before_the_embedding_and_huge_embeddings_are_refused():
    s_map, t_map = torch.randn(6, 4, 5, 3), torch.randn(6, 10, 5, 3)
    s_out = Outputs(torch.randn(6, 3), {"s": s_map})
    t_out = Outputs(torch.randn(6, 3), {"t": t_map})
    term = build_loss("cc", {"student": "s", "teacher": "t", "pool": True})
    term.setup(_ctx(s_out, t_out))
    assert term.embed[0].weight.shape == (10, 4)  # channels, not channels × positions
    expected = _cc_np(term.embed[0](s_map.mean((2, 3))).detach().double().numpy(),
                      t_map.mean((2, 3)).double().numpy(), 0.4, 2)
    assert term(s_out, t_out, _batch(6)).item() == pytest.approx(expected, rel=1e-5)
    flat = build_loss("cc", {"student": "s", "teacher": "t"})
    flat.setup(_ctx(s_out, t_out))
    assert flat.embed[0].weight.shape == (150, 60)
    big_s, big_t = Outputs(torch.randn(2, 3), {"s": torch.randn(2, 16, 40, 40)}), Outputs(torch.randn(2, 3), {"t": torch.randn(2, 64, 40, 40)})
    with pytest.raises(TinyKDError, match=r"(?s)cc: its linear embeddings .*25600→102400.*pool: true"):
        build_loss("cc", {"student": "s", "teacher": "t"}).setup(_ctx(big_s, big_t))
    build_loss("cc", {"student": "s", "teacher": "t", "pool": True}).setup(_ctx(big_s, big_t))

# ----- all batch-relation terms ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["rkd", "sp", "pkt", "cc"])
def test_gradients_reach_student_never_teacher(name):
    s = torch.randn(8, 2, 3, 3, requires_grad=True)
    t = torch.randn(8, 18, requires_grad=True)  # not detached by the caller: the term must not backprop into it
    term = build_loss(name, {"student": "block", "teacher": "fc"})
    s_out, t_out = Outputs(torch.zeros(8, 3), {"block": s}), Outputs(torch.zeros(8, 3), {"fc": t})
    term.setup(_ctx(s_out, t_out))
    loss = term(s_out, t_out, _batch(8))
    loss.backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None


@pytest.mark.parametrize("name", ["rkd", "sp", "pkt", "cc", "crd"])
def test_mismatched_batch_sizes_and_missing_features_are_clear_errors(name):
    term = build_loss(name, {"nce_k": 2} if name == "crd" else {})
    if name == "crd":
        term.setup(_ctx(torch.randn(4, 3), torch.randn(4, 3)))
    with pytest.raises(TinyKDError, match=r"logits, \(4, 3\)\).*logits, \(5, 3\)\) hold different numbers"):
        term(Outputs(torch.randn(4, 3)), Outputs(torch.randn(5, 3)), _batch(4))
    term = build_loss(name, {"student": "features.1"})
    assert term.student_paths == ("features.1",) and term.teacher_paths == ()
    if name == "crd":
        term.setup(_ctx(Outputs(torch.randn(4, 3), {"features.1": torch.randn(4, 2)}), torch.randn(4, 3)))
    with pytest.raises(TinyKDError, match=r"student output at 'features.1' was not captured"):
        term(Outputs(torch.randn(4, 3)), Outputs(torch.randn(4, 3)), _batch(4))


def test_pairs_auto_resolves_stages_in_setup():
    student, teacher = _mlp([16, 8]), _mlp([64, 32, 24])
    x = torch.randn(6, 1, 4, 4)
    batch = Batch(x, torch.full((6,), -1), torch.arange(6))
    ctx = SetupContext(student, teacher, Outputs(student(x)), Outputs(teacher(x)), batch, 50, 4)
    rkd = build_loss("rkd", {"pairs": "auto"})
    with pytest.raises(TinyKDError, match="pairs: auto is resolved by setup"):
        rkd(ctx.student_example, ctx.teacher_example, _batch(6))
    rkd.setup(ctx)
    assert rkd.pairs == [("layers.1", "layers.2")]  # the deepest stages: the papers' embedding
    sp = build_loss("sp", {"pairs": "auto"})
    sp.setup(ctx)
    assert sp.pairs == [("layers.0", "layers.1"), ("layers.1", "layers.2")]
    assert sp.teacher_paths == ("layers.1", "layers.2")
    crd = build_loss("crd", {"pairs": "auto", "num_pairs": 2, "feat_dim": 4})
    crd.setup(ctx)  # the examples lack the chosen paths: they are recomputed
    assert [(e.in_features, f.in_features) for e, f in zip(crd.embed_s, crd.embed_t)] == [(16, 32), (8, 24)]
    assert crd.memory_s.shape == (2, 50, 4)


def test_param_errors():
    with pytest.raises(RecipeError, match=r"distill.losses\[0\].pairs: .*either `pairs` or `student`/`teacher`"):
        build_loss("sp", {"student": "a", "pairs": [["a", "b"]]}, where="distill.losses[0]")
    with pytest.raises(RecipeError, match="at least one"):
        build_loss("rkd", {"pairs": []})
    with pytest.raises(RecipeError, match=r"did you mean 'angle_weight'"):
        build_loss("rkd", {"angle_weigth": 1})
    with pytest.raises(RecipeError, match=r"\.gamma"):
        build_loss("cc", {"gamma": 0})
    with pytest.raises(RecipeError, match="must be 'auto' or a list"):
        build_loss("pkt", {"pairs": "all"})
    with pytest.raises(RecipeError, match="num_pairs only applies with pairs: auto"):
        build_loss("pkt", {"num_pairs": 2})
    with pytest.raises(RecipeError, match=r"\.nce_momentum"):
        build_loss("crd", {"nce_momentum": 1.0})


# ----- CRD ---------------------------------------------------------------------------------------------------

def _crd_np_direction(v, memory, contrast, z, num_data, tau, eps=1e-7):
    """Eq. 18–19 by hand: P = exp(v·m/τ)/Z; -(Σ log P⁺/(P⁺ + K/N) + Σ log (K/N)/(P⁻ + K/N)) / b."""
    k = contrast.shape[1] - 1
    e = np.exp(np.einsum("bd,bcd->bc", v, memory[contrast]) / tau)
    if z is None:
        z = e.mean() * num_data
    p = e / z
    noise = k / num_data
    loss = -(np.log(p[:, 0] / (p[:, 0] + noise + eps)).sum() + np.log(noise / (p[:, 1:] + noise + eps)).sum())
    return loss / len(v), z


def test_crd_nce_value_by_hand_with_fixed_memory_and_negatives():
    n, b, feat_dim, tau, m = 6, 3, 4, 0.5, 0.5
    s, t = RNG.normal(size=(b, 5)), RNG.normal(size=(b, 7))
    term = build_loss("crd", {"feat_dim": feat_dim, "nce_k": 2, "nce_t": tau, "nce_momentum": m})
    term.setup(_ctx(torch.randn(b, 5), torch.randn(b, 7), num_train=n))
    term.double()
    mem_s, mem_t = _normalize_rows(RNG.normal(size=(n, feat_dim))), _normalize_rows(RNG.normal(size=(n, feat_dim)))
    term.memory_s[0] = _t(mem_s)
    term.memory_t[0] = _t(mem_t)
    negatives = [torch.tensor([[1, 5], [0, 0], [3, 2]]), torch.tensor([[4, 1], [2, 3], [5, 0]])]
    term.draw_negatives = lambda size, device: negatives.pop(0)
    w_s, b_s = term.embed_s[0].weight.detach().numpy(), term.embed_s[0].bias.detach().numpy()
    w_t, b_t = term.embed_t[0].weight.detach().numpy(), term.embed_t[0].bias.detach().numpy()
    v_s, v_t = _normalize_rows(s @ w_s.T + b_s), _normalize_rows(t @ w_t.T + b_t)

    index = np.array([4, 0, 2])
    contrast = np.concatenate([index[:, None], [[1, 5], [0, 0], [3, 2]]], axis=1)
    ls, z_s = _crd_np_direction(v_s, mem_t, contrast, None, n, tau)   # student anchor, teacher memory
    lt, z_t = _crd_np_direction(v_t, mem_s, contrast, None, n, tau)   # teacher anchor, student memory
    got = term(Outputs(_t(s)), Outputs(_t(t)), _batch(b, index))
    assert got.item() == pytest.approx(ls + lt, rel=1e-9)
    assert term.parts["student_anchor"].item() == pytest.approx(ls, rel=1e-9)
    np.testing.assert_allclose(term.z[0].numpy(), [z_s, z_t], rtol=1e-12)
    # Momentum update of the positives' rows only, renormalised.
    new_s, new_t = mem_s.copy(), mem_t.copy()
    new_s[index] = _normalize_rows(m * mem_s[index] + (1 - m) * v_s)
    new_t[index] = _normalize_rows(m * mem_t[index] + (1 - m) * v_t)
    np.testing.assert_allclose(term.memory_s[0].numpy(), new_s, rtol=1e-12)
    np.testing.assert_allclose(term.memory_t[0].numpy(), new_t, rtol=1e-12)

    # The second batch reuses Z from the first and reads the updated memory.
    index2 = np.array([1, 5, 3])
    contrast2 = np.concatenate([index2[:, None], [[4, 1], [2, 3], [5, 0]]], axis=1)
    ls2, _ = _crd_np_direction(v_s, new_t, contrast2, z_s, n, tau)
    lt2, _ = _crd_np_direction(v_t, new_s, contrast2, z_t, n, tau)
    got2 = term(Outputs(_t(s)), Outputs(_t(t)), _batch(b, index2))
    assert got2.item() == pytest.approx(ls2 + lt2, rel=1e-9)


def test_crd_gradients_helpers_negatives_and_index_errors():
    s, t = torch.randn(5, 6, requires_grad=True), torch.randn(5, 9, requires_grad=True)
    term = build_loss("crd", {"feat_dim": 8})
    term.setup(_ctx(s, t, num_train=20))
    assert term.nce_k == 19 and term.memory_s.shape == (1, 20, 8)
    assert {k for k in term.state_dict() if "memory" in k or k == "z"} == {"memory_s", "memory_t", "z"}
    assert all(not b.requires_grad for b in term.buffers())
    neg = term.draw_negatives(5, torch.device("cpu"))
    assert neg.shape == (5, 19) and neg.min() >= 0 and neg.max() < 20
    loss = term(Outputs(s), Outputs(t), _batch(5, [3, 19, 0, 7, 8]))
    loss.backward()
    assert s.grad.abs().sum() > 0 and t.grad is None
    for helper in (term.embed_s[0], term.embed_t[0]):
        assert helper.weight.grad.abs().sum() > 0
    for bad in ([0, 1, 2, 3, 20], [-2, 1, 2, 3, 4]):
        with pytest.raises(TinyKDError, match=r"outside \[0, 20\): the memory banks have one row per training sample"):
            term(Outputs(s), Outputs(t), _batch(5, bad))
    with pytest.raises(TinyKDError, match=r"batch.index has shape \(3,\) for a batch of 5"):
        term(Outputs(s), Outputs(t), _batch(5, [0, 1, 2]))
    with pytest.raises(TinyKDError, match="crd was not set up"):
        build_loss("crd", {})(Outputs(s), Outputs(t), _batch(5))


# ----- through the Trainer ------------------------------------------------------------------------------------

def _data(n=320, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 4, 4, generator=g)
    y = (x.flatten(1).sum(1) > 0).long() + 2 * (x[:, 0, 0, 0] > 0).long()
    cut = n * 3 // 4
    return Split(x[:cut], y[:cut]), Split(x[cut:], y[cut:])


def _mlp(hidden, seed=0):
    torch.manual_seed(seed)
    return create_model("mlp", num_classes=4, in_shape=(1, 4, 4), hidden=hidden)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    train, val = _data()
    model = _mlp([64, 32])
    Trainer(model, [(1.0, build_loss("ce", {}))], TrainConfig(epochs=3, batch_size=32),
            out_dir=tmp_path_factory.mktemp("teacher"), label="t", progress=False).fit(train, val)
    return model.eval()


def test_trainer_smoke_rkd(tmp_path, teacher):
    train, val = _data()
    terms = [(1.0, build_loss("rkd", {"student": "layers.0", "teacher": "layers.1"}))]
    res = Trainer(_mlp([16]), terms, TrainConfig(epochs=4, batch_size=32), out_dir=tmp_path, label="s",
                  teacher=teacher, progress=False).fit(train, val)
    losses = [r["loss/rkd"] for r in res.history]
    assert len(losses) == 4 and losses[-1] < losses[0]
    assert {"loss/rkd.distance", "loss/rkd.angle"} <= set(res.history[0])


def test_trainer_smoke_crd_with_exact_resume(tmp_path, teacher):
    train, val = _data()
    cfg = TrainConfig(epochs=4, batch_size=32, lr=5e-3)

    def run(out, stop=None):
        terms = [(1.0, build_loss("crd", {"student": "layers.0", "teacher": "layers.1", "feat_dim": 16,
                                          "nce_k": 64}))]
        tr = Trainer(_mlp([16]), terms, cfg, out_dir=tmp_path / out, label="s", teacher=teacher, progress=False)
        if stop:
            stop_after(tr, stop)
        return tr, tr.fit(train, val)

    full, res = run("full")
    losses = [r["loss/crd"] for r in res.history]
    assert losses[-1] < losses[0]
    assert (full.terms[0][1].z > 0).all()
    with pytest.raises(Stop):
        run("part", stop=2)
    resumed, res2 = run("part")
    assert [r["train_loss"] for r in res2.history] == [r["train_loss"] for r in res.history]
    assert torch.equal(resumed.terms[0][1].memory_s, full.terms[0][1].memory_s)


def test_trainer_reports_unknown_path(tmp_path, teacher):
    train, val = _data()
    with pytest.raises(TinyKDError, match=r"student has no module at path 'layers.9'"):
        Trainer(_mlp([16]), [(1.0, build_loss("sp", {"student": "layers.9"}))], TrainConfig(epochs=1),
                out_dir=tmp_path, label="s", teacher=teacher, progress=False).fit(train, val)
