"""Feature-based loss terms against independent numpy computations written from the papers' formulas."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tinykd.data.spec import Split
from tinykd.distill.capture import Outputs
from tinykd.distill.losses import Batch, SetupContext, build_loss
from tinykd.distill.losses.pairing import auto_pairs
from tinykd.distill.capture import forward_with_features
from tinykd.distill.losses.feature import class_activation_maps
from tinykd.distill.trainer import Trainer
from tinykd.errors import RecipeError, TinyKDError
from tinykd.models import create_model
from tinykd.recipe import TrainConfig

MNIST = (1, 28, 28)


def _batch(n):
    return Batch(torch.zeros(n, 1, 8, 8), torch.zeros(n, dtype=torch.long), torch.arange(n))


def _outputs(feats):
    n = len(next(iter(feats.values())))
    return Outputs(torch.zeros(n, 3), dict(feats))


def _setup(name, params, s_feats, t_feats, student=None, teacher=None):
    """A term set up on given example features (models without Conv1d: 3-D features are tokens)."""
    torch.manual_seed(0)
    term = build_loss(name, params)
    term.setup(SetupContext(student or nn.Module(), teacher or nn.Module(), _outputs(s_feats), _outputs(t_feats),
                            _batch(len(next(iter(s_feats.values())))), 100, 3))
    return term


def _call(term, s_feats, t_feats):
    return term(_outputs(s_feats), _outputs(t_feats), _batch(len(next(iter(s_feats.values())))))


def _rand(*shape, seed=0):
    return torch.tensor(np.random.default_rng(seed).normal(size=shape), dtype=torch.float64)


def _np(t):
    return t.detach().double().numpy()


def _block_mean(x, k):
    """Average-pool (B, C, H, W) by k×k blocks: what adaptive pooling does when H, W are multiples of the output."""
    b, c, h, w = x.shape
    return x.reshape(b, c, h // k, k, w // k, k).mean(axis=(3, 5))


def _bn_train(z, gamma, beta, eps=1e-5):
    mean = z.mean(axis=(0, 2, 3), keepdims=True)
    var = z.var(axis=(0, 2, 3), keepdims=True)
    return (z - mean) / np.sqrt(var + eps) * gamma[None, :, None, None] + beta[None, :, None, None]


# ----- fitnet -------------------------------------------------------------------------------------
def test_fitnet_matches_hint_loss_through_conv_bn_regressor():
    s, t = _rand(4, 3, 5, 5), _rand(4, 6, 5, 5, seed=1)
    term = _setup("fitnet", {"student": "a", "teacher": "b"}, {"a": s}, {"b": t}).double()
    conv, bn = term.regressors[0]
    assert isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1) and (conv.in_channels, conv.out_channels) == (3, 6)
    assert isinstance(bn, nn.BatchNorm2d) and bn.num_features == 6
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2.0)
        bn.bias.normal_()
    got = _call(term, {"a": s}, {"b": t})
    # Eq. 3, r(v) = BN(W v) with batch statistics; mean over elements instead of ½·sum.
    z = np.einsum("oc,bchw->bohw", _np(conv.weight)[:, :, 0, 0], _np(s))
    expected = ((_bn_train(z, _np(bn.weight), _np(bn.bias)) - _np(t)) ** 2).mean()
    assert got.item() == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("s_size,t_size", [(8, 4), (4, 8)])
def test_fitnet_pools_the_larger_map_to_the_smaller(s_size, t_size):
    s, t = _rand(2, 3, s_size, s_size), _rand(2, 5, t_size, t_size, seed=1)
    term = _setup("fitnet", {"student": "a", "teacher": "b"}, {"a": s}, {"b": t}).double().eval()
    got = _call(term, {"a": s}, {"b": t})
    s_np, t_np = _np(s), _np(t)
    s_np, t_np = (_block_mean(s_np, 2), t_np) if s_size > t_size else (s_np, _block_mean(t_np, 2))
    conv, bn = term.regressors[0]
    u = np.einsum("oc,bchw->bohw", _np(conv.weight)[:, :, 0, 0], s_np) / np.sqrt(1 + bn.eps)  # BN at init, eval
    assert got.item() == pytest.approx(((u - t_np) ** 2).mean(), rel=1e-9)


def test_fitnet_regressor_is_linear_for_vectors_and_tokens_and_conv1d_for_signals():
    vec = _setup("fitnet", {"student": "a", "teacher": "b"}, {"a": _rand(4, 5)}, {"b": _rand(4, 7)})
    assert isinstance(vec.regressors[0], nn.Linear) and vec.regressors[0].weight.shape == (7, 5)
    tok = _setup("fitnet", {"student": "a", "teacher": "b"}, {"a": _rand(4, 6, 5)}, {"b": _rand(4, 6, 9)})
    assert isinstance(tok.regressors[0], nn.Linear) and tok.regressors[0].weight.shape == (9, 5)
    # 1-D conv nets' 3-D features are (B, C, L) maps: a 1×1 Conv1d from the student's channels to the teacher's.
    student = create_model("cnn1d", num_classes=3, in_shape=(1, 40), widths=[4, 4])
    teacher = create_model("cnn1d", num_classes=3, in_shape=(1, 40), widths=[8, 8])
    x = torch.randn(6, 1, 40)
    term = build_loss("fitnet", {"student": "features.1", "teacher": "features.1"})
    term.setup(SetupContext(student, teacher, Outputs(student(x)), Outputs(teacher(x)), Batch(x, x[:, 0, 0].long(),
                            torch.arange(6)), 6, 3))
    conv, bn = term.regressors[0]
    assert isinstance(conv, nn.Conv1d) and (conv.in_channels, conv.out_channels) == (4, 8) and isinstance(bn, nn.BatchNorm1d)


def test_fitnet_is_zero_with_identity_regressor_when_features_are_equal():
    f = _rand(4, 3, 5, 5)
    term = _setup("fitnet", {"student": "a", "teacher": "b"}, {"a": f}, {"b": f}).double().eval()
    conv, bn = term.regressors[0]
    with torch.no_grad():
        conv.weight.copy_(torch.eye(3)[:, :, None, None])
    bn.eps = 0.0
    assert _call(term, {"a": f}, {"b": f.clone()}).item() == pytest.approx(0.0, abs=1e-12)


def test_fitnet_two_stage_schedule():
    s, t = _rand(4, 3, 5, 5), _rand(4, 6, 5, 5, seed=1)
    term = _setup("fitnet", {"student": "a", "teacher": "b", "stage1_epochs": 2}, {"a": s}, {"b": t}).double()
    assert term.exclusive
    term.start_epoch(2, 5)
    assert term.exclusive and _call(term, {"a": s}, {"b": t}).item() > 0
    term.start_epoch(3, 5)
    logits = torch.zeros(4, 3, requires_grad=True)
    off = term(Outputs(logits, {"a": s}), _outputs({"b": t}), _batch(4))
    assert not term.exclusive and off.item() == 0.0 and off.requires_grad  # stage 2: KD alone, still backward-able
    assert not _setup("fitnet", {"student": "a", "teacher": "b"}, {"a": s}, {"b": t}).exclusive


def test_fitnet_errors_name_both_shapes():
    with pytest.raises(TinyKDError, match=r"student 'a' \(B, 5\) and teacher 'b' \(B, 6, 4, 4\).*\n  fix: .*hidden_mse"):
        _setup("fitnet", {"student": "a", "teacher": "b"}, {"a": _rand(2, 5)}, {"b": _rand(2, 6, 4, 4)})
    with pytest.raises(TinyKDError, match=r"different token counts"):
        _setup("fitnet", {"student": "a", "teacher": "b"}, {"a": _rand(2, 5, 4)}, {"b": _rand(2, 6, 4)})


# ----- attention transfer -------------------------------------------------------------------------
def _np_at(a, p):
    q = (np.abs(a) ** p).sum(axis=1).reshape(len(a), -1)
    return q / np.linalg.norm(q, axis=1, keepdims=True)


@pytest.mark.parametrize("p", [1.0, 2.0, 4.0])
def test_at_matches_reference_formula_summed_over_pairs(p):
    s0, t0 = _rand(3, 4, 6, 6), _rand(3, 8, 6, 6, seed=1)
    s1, t1 = _rand(3, 5, 3, 3, seed=2), _rand(3, 2, 3, 3, seed=3)
    params = {"pairs": [["s0", "t0"], ["s1", "t1"]], "p": p}
    term = _setup("at", params, {"s0": s0, "s1": s1}, {"t0": t0, "t1": t1})
    got = _call(term, {"s0": s0, "s1": s1}, {"t0": t0, "t1": t1})
    per_pair = [((_np_at(_np(s), p) - _np_at(_np(t), p)) ** 2).mean() for s, t in ((s0, t0), (s1, t1))]
    assert got.item() == pytest.approx(0.5 * sum(per_pair), rel=1e-9)
    assert term.parts["s0"].item() == pytest.approx(per_pair[0], rel=1e-9)


def test_at_pools_attention_maps_zero_for_equal_features_and_is_scale_invariant():
    s, t = _rand(2, 3, 8, 8), _rand(2, 6, 4, 4, seed=1)
    term = _setup("at", {"student": "a", "teacher": "b"}, {"a": s}, {"b": t})
    got = _call(term, {"a": s}, {"b": t})
    q_s = _block_mean((_np(s) ** 2).sum(axis=1, keepdims=True), 2).reshape(2, -1)
    q_s /= np.linalg.norm(q_s, axis=1, keepdims=True)
    assert got.item() == pytest.approx(0.5 * ((q_s - _np_at(_np(t), 2)) ** 2).mean(), rel=1e-9)
    # Normalising Q makes the loss blind to the scale of the activations, and zero for equal features.
    assert _call(term, {"a": 7.0 * s}, {"b": t}).item() == pytest.approx(got.item(), rel=1e-9)
    same = _setup("at", {"student": "a", "teacher": "b"}, {"a": s}, {"b": s})
    assert _call(same, {"a": s}, {"b": s.clone()}).item() == pytest.approx(0.0, abs=1e-15)


def test_at_rejects_vectors():
    with pytest.raises(TinyKDError, match=r"at: student 'a' \(B, 5\) and teacher 'b' \(B, 3, 4, 4\) cannot be compared"):
        _setup("at", {"student": "a", "teacher": "b"}, {"a": _rand(2, 5)}, {"b": _rand(2, 3, 4, 4)})


# ----- neuron selectivity transfer ----------------------------------------------------------------
def _np_nst(s, t, d=2, c=0.0):
    total = 0.0
    for fs, ft in zip(s.reshape(len(s), s.shape[1], -1), t.reshape(len(t), t.shape[1], -1)):
        fs = fs / np.linalg.norm(fs, axis=1, keepdims=True)
        ft = ft / np.linalg.norm(ft, axis=1, keepdims=True)
        k = lambda x, y: (x @ y + c) ** d  # noqa: E731
        mmd = (np.mean([k(a, b) for a in ft for b in ft]) + np.mean([k(a, b) for a in fs for b in fs])
               - 2 * np.mean([k(a, b) for a in fs for b in ft]))
        total += mmd
    return total / len(s)


@pytest.mark.parametrize("degree,c", [(2, 0.0), (1, 0.0), (3, 0.5)])
def test_nst_matches_mmd_with_polynomial_kernel(degree, c):
    s, t = _rand(3, 4, 5, 5), _rand(3, 7, 5, 5, seed=1)  # channel counts may differ
    term = _setup("nst", {"student": "a", "teacher": "b", "degree": degree, "c": c}, {"a": s}, {"b": t})
    got = _call(term, {"a": s}, {"b": t})
    assert got.item() == pytest.approx(0.5 * _np_nst(_np(s), _np(t), degree, c), rel=1e-9)


def test_nst_pools_zero_for_equal_and_ignores_channel_order():
    s, t = _rand(2, 4, 8, 8), _rand(2, 6, 4, 4, seed=1)
    term = _setup("nst", {"student": "a", "teacher": "b"}, {"a": s}, {"b": t})
    got = _call(term, {"a": s}, {"b": t})
    assert got.item() == pytest.approx(0.5 * _np_nst(_block_mean(_np(s), 2), _np(t)), rel=1e-9)
    # MMD compares distributions of channels: permuting the student's channels changes nothing.
    assert _call(term, {"a": s[:, [3, 1, 0, 2]]}, {"b": t}).item() == pytest.approx(got.item(), rel=1e-9)
    same = _setup("nst", {"student": "a", "teacher": "b"}, {"a": s}, {"b": s})
    assert _call(same, {"a": s}, {"b": s.clone()}).item() == pytest.approx(0.0, abs=1e-12)


# ----- fsp and gram -------------------------------------------------------------------------------
def _np_fsp(a, b):
    bsz, c1, h, w = a.shape
    g = np.zeros((bsz, c1, b.shape[1]))
    for i in range(c1):
        for j in range(b.shape[1]):
            g[:, i, j] = (a[:, i] * b[:, j]).sum(axis=(1, 2)) / (h * w)  # Eq. 1
    return g


def test_fsp_matches_eq1_and_eq2_mean_over_pairs():
    s = {"s0": _rand(2, 3, 8, 8), "s1": _rand(2, 4, 4, 4, seed=1), "s2": _rand(2, 5, 4, 4, seed=2)}
    t = {"t0": _rand(2, 3, 8, 8, seed=3), "t1": _rand(2, 4, 4, 4, seed=4), "t2": _rand(2, 5, 4, 4, seed=5)}
    params = {"student_pairs": [["s0", "s1"], ["s1", "s2"]], "teacher_pairs": [["t0", "t1"], ["t1", "t2"]]}
    term = _setup("fsp", params, s, t)
    got = _call(term, s, t)
    n = {k: _np(v) for k, v in {**s, **t}.items()}
    # The pair's 8×8 layer is pooled to 4×4 before its FSP matrix with the 4×4 layer.
    g = [(_np_fsp(_block_mean(n["s0"], 2), n["s1"]), _np_fsp(_block_mean(n["t0"], 2), n["t1"])),
         (_np_fsp(n["s1"], n["s2"]), _np_fsp(n["t1"], n["t2"]))]
    assert got.item() == pytest.approx(np.mean([((gt - gs) ** 2).mean() for gs, gt in g]), rel=1e-9)
    assert _call(term, s, {"t0": s["s0"], "t1": s["s1"], "t2": s["s2"]}).item() == pytest.approx(0.0, abs=1e-15)


def test_fsp_channel_mismatch_and_param_errors():
    s = {"a": _rand(2, 3, 4, 4), "b": _rand(2, 4, 4, 4)}
    t = {"c": _rand(2, 3, 4, 4), "d": _rand(2, 8, 4, 4)}
    with pytest.raises(TinyKDError, match=r"student's FSP matrix \('a', 'b'\) is 3×4 but the teacher's \('c', 'd'\) "
                                          r"is 3×8.*\n  fix: .*fitnet"):
        _setup("fsp", {"student_pairs": [["a", "b"]], "teacher_pairs": [["c", "d"]]}, s, t)
    with pytest.raises(RecipeError, match=r"student_pairs has 1 pairs but teacher_pairs has 2"):
        build_loss("fsp", {"student_pairs": [["a", "b"]], "teacher_pairs": [["c", "d"], ["c", "d"]]})
    with pytest.raises(RecipeError, match=r"\.pairs: .*name the layers"):
        build_loss("fsp", {})


def test_gram_matches_channel_gram_with_projection_and_zero_for_equal():
    s, t = _rand(2, 3, 6, 6), _rand(2, 5, 3, 3, seed=1)  # Gram matrices are C×C whatever H, W
    term = _setup("gram", {"student": "a", "teacher": "b"}, {"a": s}, {"b": t}).double()
    proj = term.projections[0]
    assert isinstance(proj, nn.Conv2d) and proj.kernel_size == (1, 1) and (proj.in_channels, proj.out_channels) == (3, 5)
    got = _call(term, {"a": s}, {"b": t})

    def gram(f):
        f = f.reshape(len(f), f.shape[1], -1)
        return f @ f.transpose(0, 2, 1) / f.shape[2]
    z = np.einsum("oc,bchw->bohw", _np(proj.weight)[:, :, 0, 0], _np(s))
    assert got.item() == pytest.approx(((gram(z) - gram(_np(t))) ** 2).mean(), rel=1e-9)
    same = _setup("gram", {"student": "a", "teacher": "b"}, {"a": s}, {"b": s})
    assert isinstance(same.projections[0], nn.Identity)
    assert _call(same, {"a": s}, {"b": s.clone()}).item() == pytest.approx(0.0, abs=1e-15)


def _np_ickd(f_s, f_t):
    """Mean over samples and channel pairs (m, n) of (G_s[m, n] − G_t[m, n])², G[m, n] = v(f_m)·v(f_n) / (H·W)."""
    b, c = f_t.shape[:2]
    total = 0.0
    for i in range(b):
        v_s, v_t = f_s[i].reshape(c, -1), f_t[i].reshape(c, -1)
        for m in range(c):
            for n in range(c):
                total += (v_s[m] @ v_s[n] / v_s.shape[1] - v_t[m] @ v_t[n] / v_t.shape[1]) ** 2
    return total / (b * c * c)


def test_ickd_matches_inter_channel_correlation_through_embedding():
    s, t = _rand(2, 3, 6, 6), _rand(2, 4, 3, 3, seed=1)  # G is C×C whatever the spatial size
    term = _setup("ickd", {"student": "a", "teacher": "b"}, {"a": s}, {"b": t}).double()
    embed = term.embeddings[0]
    assert isinstance(embed, nn.Conv2d) and embed.kernel_size == (1, 1) and (embed.in_channels, embed.out_channels) == (3, 4)
    z = np.einsum("oc,bchw->bohw", _np(embed.weight)[:, :, 0, 0], _np(s))
    assert _call(term, {"a": s}, {"b": t}).item() == pytest.approx(_np_ickd(z, _np(t)), rel=1e-9)
    # Summed over pairs, like the other feature terms.
    pairs = _setup("ickd", {"pairs": [["a", "b"], ["c", "b"]]}, {"a": s, "c": 2 * s}, {"b": t}).double()
    z2 = [np.einsum("oc,bchw->bohw", _np(e.weight)[:, :, 0, 0], x) for e, x in zip(pairs.embeddings, (_np(s), 2 * _np(s)))]
    assert (_call(pairs, {"a": s, "c": 2 * s}, {"b": t}).item()
            == pytest.approx(sum(_np_ickd(z, _np(t)) for z in z2), rel=1e-9))


def test_ickd_known_values():
    # Equal channels through an identity embedding: G_s = G_t, loss 0; the embedding is built even when widths match.
    f = _rand(2, 3, 4, 4)
    same = _setup("ickd", {"student": "a", "teacher": "b"}, {"a": f}, {"b": f}).double()
    assert isinstance(same.embeddings[0], nn.Conv2d)
    with torch.no_grad():
        same.embeddings[0].weight.copy_(torch.eye(3, dtype=torch.float64)[:, :, None, None])
    assert _call(same, {"a": f}, {"b": f.clone()}).item() == pytest.approx(0.0, abs=1e-15)
    # One channel, two positions: student [1, 3] through weight 2 gives G_s = 4·(1 + 9)/2 = 20, teacher [2, 2] G_t = 4.
    s, t = torch.tensor([[[[1.0, 3.0]]]], dtype=torch.float64), torch.tensor([[[[2.0, 2.0]]]], dtype=torch.float64)
    tiny = _setup("ickd", {"student": "a", "teacher": "b"}, {"a": s}, {"b": t}).double()
    with torch.no_grad():
        tiny.embeddings[0].weight.fill_(2.0)
    assert _call(tiny, {"a": s}, {"b": t}).item() == pytest.approx((20.0 - 4.0) ** 2, rel=1e-12)
    with pytest.raises(TinyKDError, match=r"ickd: student 'a' \(B, 4\) and teacher 'b' \(B, 3, 2, 2\) cannot be compared"):
        _setup("ickd", {"student": "a", "teacher": "b"}, {"a": _rand(2, 4)}, {"b": _rand(2, 3, 2, 2)})


# ----- vid ----------------------------------------------------------------------------------------
def _np_conv1x1(x, conv):
    """A biased 1×1 conv on a (B, C, H, W) numpy map."""
    return np.einsum("oc,bchw->bohw", _np(conv.weight)[:, :, 0, 0], x) + _np(conv.bias)[None, :, None, None]


def _np_vid(s, t, regressor, variances):
    """Mean over samples, channels and positions of ½ log σ²_c + (t − μ(s))² / (2σ²_c), written as a loop."""
    c1, _, c2, _, c3 = regressor
    mu = _np_conv1x1(np.maximum(_np_conv1x1(np.maximum(_np_conv1x1(s, c1), 0), c2), 0), c3)
    b, c, h, w = t.shape
    total = 0.0
    for ch in range(c):
        v = variances[ch]
        for i in range(b):
            for y in range(h):
                for x in range(w):
                    total += 0.5 * np.log(v) + (t[i, ch, y, x] - mu[i, ch, y, x]) ** 2 / (2 * v)
    return total / (b * c * h * w)


def test_vid_matches_gaussian_negative_log_likelihood():
    s, t = _rand(2, 3, 4, 4), _rand(2, 5, 4, 4, seed=1)
    term = _setup("vid", {"student": "a", "teacher": "b"}, {"a": s}, {"b": t}).double()
    convs = [m for m in term.regressors[0] if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [(3, 5, (1, 1)), (5, 5, (1, 1)), (5, 5, (1, 1))]
    assert [type(m) for m in term.regressors[0]][1::2] == [nn.ReLU, nn.ReLU]
    # σ²_c = softplus(α_c) + ε starts at init_variance for every channel.
    np.testing.assert_allclose(_np(term.variances(0)), 5.0, rtol=1e-6)  # α_c was built in float32
    with torch.no_grad():
        term.alphas[0].normal_()
    variances = np.log1p(np.exp(_np(term.alphas[0]))) + 1e-5
    assert _call(term, {"a": s}, {"b": t}).item() == pytest.approx(_np_vid(_np(s), _np(t), term.regressors[0], variances), rel=1e-9)
    # Summed over pairs; the larger map of a pair is pooled to the smaller size.
    big = _rand(2, 3, 8, 8, seed=2)
    pairs = _setup("vid", {"pairs": [["a", "b"], ["c", "b"]]}, {"a": s, "c": big}, {"b": t}).double()
    expected = (_np_vid(_np(s), _np(t), pairs.regressors[0], _np(pairs.variances(0)))
                + _np_vid(_block_mean(_np(big), 2), _np(t), pairs.regressors[1], _np(pairs.variances(1))))
    assert _call(pairs, {"a": s, "c": big}, {"b": t}).item() == pytest.approx(expected, rel=1e-9)
    assert sum(p.numel() for p in term.parameters()) == (3 * 5 + 5) + 2 * (5 * 5 + 5) + 5


def _identity_regressor(term, scale=1.0):
    """μ(s) = scale·s for s ≥ 0, and σ² = 5 exactly in float64."""
    with torch.no_grad():
        term.alphas[0].fill_(float(np.log(np.expm1(5.0 - 1e-5))))
        for i, conv in enumerate(m for m in term.regressors[0] if not isinstance(m, nn.ReLU)):
            conv.weight.copy_(torch.eye(conv.out_channels, dtype=torch.float64)[:, :, None, None] * (scale if i == 0 else 1.0))
            conv.bias.zero_()


def test_vid_known_values_and_minimum():
    # One channel, two positions: μ(s) = 2s = [2, 6] against t = [2, 2], σ² = 5: ½ log 5 + (0 + 16) / 2 / (2·5).
    s, t = torch.tensor([[[[1.0, 3.0]]]], dtype=torch.float64), torch.tensor([[[[2.0, 2.0]]]], dtype=torch.float64)
    tiny = _setup("vid", {"student": "a", "teacher": "b"}, {"a": s}, {"b": t}).double()
    _identity_regressor(tiny, scale=2.0)
    assert _call(tiny, {"a": s}, {"b": t}).item() == pytest.approx(0.5 * np.log(5.0) + 0.8, rel=1e-12)
    # For a fixed residual the likelihood is best at σ² = mean r² (here 8), where the value is ½ log 8 + ½.
    with torch.no_grad():
        tiny.alphas[0].fill_(float(np.log(np.expm1(8.0 - 1e-5))))
    best = _call(tiny, {"a": s}, {"b": t}).item()
    assert best == pytest.approx(0.5 * np.log(8.0) + 0.5, rel=1e-12)
    for v in (4.0, 16.0):
        with torch.no_grad():
            tiny.alphas[0].fill_(float(np.log(np.expm1(v - 1e-5))))
        assert _call(tiny, {"a": s}, {"b": t}).item() > best
    # Identical (non-negative, so the ReLUs pass them) features through an identity μ: the residual is 0 and the
    # value falls to its floor ½ log ε as σ² → ε.
    f = _rand(2, 3, 4, 4).abs()
    same = _setup("vid", {"student": "a", "teacher": "b"}, {"a": f}, {"b": f}).double()
    _identity_regressor(same)
    assert _call(same, {"a": f}, {"b": f.clone()}).item() == pytest.approx(0.5 * np.log(5.0), rel=1e-12)
    with torch.no_grad():
        same.alphas[0].fill_(-100.0)
    assert _call(same, {"a": f}, {"b": f.clone()}).item() == pytest.approx(0.5 * np.log(1e-5), rel=1e-9)


def test_vid_vectors_init_variance_and_errors():
    vec = _setup("vid", {"student": "a", "teacher": "b", "init_variance": 0.5}, {"a": _rand(4, 5)}, {"b": _rand(4, 7)}).double()
    assert isinstance(vec.regressors[0][0], nn.Conv1d) and (vec.regressors[0][0].in_channels, vec.regressors[0][-1].out_channels) == (5, 7)
    assert vec.variances(0).detach().numpy() == pytest.approx(np.full(7, 0.5), rel=1e-6)
    assert _call(vec, {"a": _rand(4, 5)}, {"b": _rand(4, 7)}).dim() == 0
    with pytest.raises(TinyKDError, match=r"vid: student 'a' \(B, 5\) and teacher 'b' \(B, 3, 2, 2\) cannot be compared"):
        _setup("vid", {"student": "a", "teacher": "b"}, {"a": _rand(2, 5)}, {"b": _rand(2, 3, 2, 2)})
    with pytest.raises(RecipeError, match=r"init_variance: Input should be greater than 0.00001"):
        build_loss("vid", {"pairs": "auto", "init_variance": 0.0})


# ----- ab -----------------------------------------------------------------------------------------
def _np_ab(r, t, m):
    """Mean over elements of ρ·max(m − r, 0)² + (1 − ρ)·max(m + r, 0)², ρ = 1[t > 0], written as a loop."""
    total = 0.0
    for r_i, t_i in zip(r.ravel(), t.ravel()):
        total += max(m - r_i, 0.0) ** 2 if t_i > 0 else max(m + r_i, 0.0) ** 2
    return total / r.size


@pytest.mark.parametrize("margin", [1.0, 2.0, 0.3])
def test_ab_matches_alternative_loss_through_connector(margin):
    s, t = _rand(4, 3, 5, 5), _rand(4, 6, 5, 5, seed=1)
    term = _setup("ab", {"student": "a", "teacher": "b", "margin": margin}, {"a": s}, {"b": t}).double()
    conv, bn = term.connectors[0]
    assert isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1) and (conv.in_channels, conv.out_channels) == (3, 6)
    assert isinstance(bn, nn.BatchNorm2d) and bn.num_features == 6
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2.0)
        bn.bias.normal_()
    z = np.einsum("oc,bchw->bohw", _np(conv.weight)[:, :, 0, 0], _np(s))
    r = _bn_train(z, _np(bn.weight), _np(bn.bias))  # r(s) = BN(W s), batch statistics in training
    assert _call(term, {"a": s}, {"b": t}).item() == pytest.approx(_np_ab(r, _np(t), margin), rel=1e-9)
    # The teacher's pre- or post-ReLU feature gives the same ρ.
    assert _call(term, {"a": s}, {"b": t.clamp(min=0)}).item() == pytest.approx(_np_ab(r, _np(t), margin), rel=1e-9)


def _ab_identity(term, weight=1.0):
    term.eval()
    conv, bn = term.connectors[0]
    with torch.no_grad():
        conv.weight.copy_(torch.eye(conv.out_channels, dtype=torch.float64)[:, :, None, None] * weight)
    bn.eps = 0.0  # eval BN at init (mean 0, var 1, γ 1, β 0) is then the identity


def test_ab_known_values():
    # r = 0.5·s = [0.2, 0.5, 1.5, −2.0] against t = [0.5, 0, 2, −1] (0 counts as inactive):
    # (1 − 0.2)² + (1 + 0.5)² + 0 (1.5 ≥ m) + 0 (−2 ≤ −m), mean over the 4 elements.
    s = torch.tensor([0.4, 1.0, 3.0, -4.0], dtype=torch.float64).view(1, 1, 2, 2)
    t = torch.tensor([0.5, 0.0, 2.0, -1.0], dtype=torch.float64).view(1, 1, 2, 2)
    term = _setup("ab", {"student": "a", "teacher": "b"}, {"a": s}, {"b": t}).double()
    _ab_identity(term, 0.5)
    assert _call(term, {"a": s}, {"b": t}).item() == pytest.approx((0.8**2 + 1.5**2) / 4, rel=1e-12)
    two = _setup("ab", {"student": "a", "teacher": "b", "margin": 2.0}, {"a": s}, {"b": t}).double()
    _ab_identity(two, 0.5)  # m = 2: (2 − 0.2)² + (2 + 0.5)² + (2 − 1.5)² + 0
    assert _call(two, {"a": s}, {"b": t}).item() == pytest.approx((1.8**2 + 2.5**2 + 0.5**2) / 4, rel=1e-12)
    # Identical features at least the margin away from the boundary: every boundary is matched, the loss is 0.
    f = _rand(2, 3, 4, 4)
    f = f + torch.sign(f)  # |f| ≥ 1
    same = _setup("ab", {"student": "a", "teacher": "b"}, {"a": f}, {"b": f}).double()
    _ab_identity(same)
    assert _call(same, {"a": f}, {"b": f.clone()}).item() == 0.0
    vec = _setup("ab", {"student": "a", "teacher": "b"}, {"a": _rand(4, 5)}, {"b": _rand(4, 7)}).double()
    assert [type(m) for m in vec.connectors[0]] == [nn.Conv1d, nn.BatchNorm1d]
    conv, bn = vec.connectors[0]  # a (B, D) vector is a (B, D, 1) map: the connector is linear + BN over the batch
    r = _bn_train((_np(_rand(4, 5)) @ _np(conv.weight)[:, :, 0].T)[:, :, None, None], _np(bn.weight), _np(bn.bias))
    assert _call(vec, {"a": _rand(4, 5)}, {"b": _rand(4, 7)}).item() == pytest.approx(_np_ab(r, _np(_rand(4, 7)), 1.0), rel=1e-9)
    with pytest.raises(RecipeError, match=r"margin: .*greater than 0"):
        build_loss("ab", {"pairs": "auto", "margin": 0})


# ----- catkd --------------------------------------------------------------------------------------
class _Classifier(nn.Module):
    def __init__(self, d, k):
        super().__init__()
        self.fc = nn.Linear(d, k)


def _np_catkd(cam_s, cam_t, k):
    """Block-mean pool each (B, K, H, W) CAM to k×k, L2-normalise each map, mean squared difference."""
    def prep(cam):
        p = _block_mean(cam, cam.shape[2] // k).reshape(cam.shape[0], cam.shape[1], -1)
        return p / np.linalg.norm(p, axis=2, keepdims=True)
    return ((prep(cam_s) - prep(cam_t)) ** 2).mean()


def test_catkd_matches_pooled_normalised_cams_after_global_pooling():
    s, t = _rand(2, 3, 6, 6), _rand(2, 6, 4, 4, seed=1)
    student, teacher = _Classifier(3, 4).double(), _Classifier(6, 4).double()
    term = _setup("catkd", {"student": "a", "teacher": "b"}, {"a": s}, {"b": t}, student, teacher)
    assert term.classifier_paths == ("fc", "fc") and term.flat == (False, False)
    assert list(term.parameters()) == []  # the classifiers are the models' own, not helpers
    cam = lambda f, m: np.einsum("kc,bchw->bkhw", _np(m.fc.weight), _np(f))  # noqa: E731  CAM_k = Σ_c w_kc F_c
    assert _call(term, {"a": s}, {"b": t}).item() == pytest.approx(_np_catkd(cam(s, student), cam(t, teacher), 2), rel=1e-9)
    one = _setup("catkd", {"student": "a", "teacher": "b", "pool_size": 1}, {"a": s}, {"b": t}, student, teacher)
    assert _call(one, {"a": s}, {"b": t}).item() == pytest.approx(_np_catkd(cam(s, student), cam(t, teacher), 1), rel=1e-9)


def test_catkd_reads_a_flattening_classifier_per_position():
    f = _rand(2, 3, 4, 4)
    model = _Classifier(3 * 16, 5).double()
    term = _setup("catkd", {"student": "a", "teacher": "b"}, {"a": f}, {"b": f}, model, _Classifier(3 * 16, 5).double())
    assert term.flat == (True, True)
    w = _np(model.fc.weight).reshape(5, 3, 4, 4)
    cam = np.zeros((2, 5, 4, 4))
    for k in range(5):
        for c in range(3):
            cam[:, k] += w[k, c] * _np(f)[:, c]  # CAM_k(h, w) = Σ_c w_{k, c, h, w} F_c(h, w)
    pooled = _block_mean(cam, 2).reshape(2, 5, -1)
    np.testing.assert_allclose(_np(term.cams(f, 0)), pooled / np.linalg.norm(pooled, axis=2, keepdims=True), rtol=1e-9)
    # The CAM's positions sum to the logit without its bias.
    torch.testing.assert_close(class_activation_maps(f, model.fc.weight, True).sum((2, 3)),
                               model.fc(f.flatten(1)) - model.fc.bias)


def test_catkd_known_values():
    # pool_size 1: each normalised CAM is the sign of its sum. Student classes (+, −), teacher (+, +): (0² + 2²) / 2.
    f = torch.ones(1, 1, 2, 2, dtype=torch.float64)
    student, teacher = _Classifier(1, 2).double(), _Classifier(1, 2).double()
    with torch.no_grad():
        student.fc.weight.copy_(torch.tensor([[1.0], [-1.0]]))
        teacher.fc.weight.copy_(torch.tensor([[1.0], [1.0]]))
    one = _setup("catkd", {"student": "a", "teacher": "b", "pool_size": 1}, {"a": f}, {"b": f}, student, teacher)
    assert _call(one, {"a": f}, {"b": f}).item() == pytest.approx(2.0, rel=1e-12)
    # 2×2 maps, both classes weight 1: student attends the top-left position, teacher the bottom-right;
    # each map's squared distance is 1 + 1 over 4 positions.
    with torch.no_grad():
        student.fc.weight.fill_(1.0)
    s = torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=torch.float64).view(1, 1, 2, 2)
    t = torch.tensor([[0.0, 0.0], [0.0, 3.0]], dtype=torch.float64).view(1, 1, 2, 2)
    two = _setup("catkd", {"student": "a", "teacher": "b"}, {"a": s}, {"b": t}, student, teacher)
    assert _call(two, {"a": s}, {"b": t}).item() == pytest.approx(0.5, rel=1e-12)
    # Identical features and classifiers: identical CAMs, loss 0; a scaled feature map gives the same CAMs.
    g = _rand(2, 3, 4, 4)
    model = _Classifier(3, 4).double()
    same = _setup("catkd", {"student": "a", "teacher": "b"}, {"a": g}, {"b": g}, model, model)
    assert _call(same, {"a": g}, {"b": g.clone()}).item() == pytest.approx(0.0, abs=1e-15)
    assert _call(same, {"a": 3.0 * g}, {"b": g}).item() == pytest.approx(0.0, abs=1e-15)


def test_catkd_default_classifier_auto_pairs_and_errors():
    r8, r20 = (create_model(n, num_classes=10, in_shape=MNIST) for n in ("resnet8", "resnet20"))
    x = torch.randn(4, *MNIST)
    term = build_loss("catkd", {"pairs": "auto"})
    term.setup(SetupContext(r8, r20, Outputs(r8(x)), Outputs(r20(x)), Batch(x, torch.zeros(4).long(), torch.arange(4)), 4, 10))
    assert term.pairs == [("layer3", "layer3")] and term.classifier_paths == ("fc", "fc") and term.flat == (False, False)
    cnn_s, cnn_t = _cnn([8, 16]), _cnn([16, 32])  # hidden: 32 between the map and head.fc
    with pytest.raises(TinyKDError, match=r"catkd: the student's classifier 'head.fc' reads 32 features, but 'features.1' "
                                          r"\(B, 16, 7, 7\) gives 16 channels \(784 flattened\).*\n  fix: .*hidden: 0"):
        term = build_loss("catkd", {"student": "features.1", "teacher": "features.1"})
        term.setup(SetupContext(cnn_s, cnn_t, Outputs(cnn_s(x)), Outputs(cnn_t(x)), Batch(x, torch.zeros(4).long(),
                                torch.arange(4)), 4, 10))
    with pytest.raises(TinyKDError, match=r"the teacher's 'features.1' is a Sequential, not an nn.Linear"):
        term = build_loss("catkd", {"student": "features.1", "teacher": "features.1", "teacher_classifier": "features.1"})
        term.setup(SetupContext(cnn_s, cnn_t, Outputs(cnn_s(x)), Outputs(cnn_t(x)), Batch(x, torch.zeros(4).long(),
                                torch.arange(4)), 4, 10))
    with pytest.raises(TinyKDError, match=r"student's classifier has 4 classes, the teacher's 5"):
        _setup("catkd", {"student": "a", "teacher": "b"}, {"a": _rand(2, 3, 2, 2)}, {"b": _rand(2, 3, 2, 2)},
               _Classifier(3, 4), _Classifier(3, 5))
    with pytest.raises(TinyKDError, match=r"the student feature at 'a' is vector \(B, 3\)"):
        _setup("catkd", {"student": "a", "teacher": "b"}, {"a": _rand(2, 3)}, {"b": _rand(2, 3, 2, 2)},
               _Classifier(3, 4), _Classifier(3, 4))
    with pytest.raises(RecipeError, match=r"one layer per network .* got 2 pairs"):
        build_loss("catkd", {"pairs": [["a", "b"], ["c", "d"]]})
    with pytest.raises(RecipeError, match=r"num_pairs must be 1"):
        build_loss("catkd", {"pairs": "auto", "num_pairs": 2})


def test_catkd_gradients_reach_student_features_and_classifier_never_teacher():
    torch.manual_seed(0)
    student = create_model("cnn", num_classes=10, in_shape=MNIST, widths=[4, 8], hidden=0)
    teacher = create_model("cnn", num_classes=10, in_shape=MNIST, widths=[8, 16], hidden=0)
    x = torch.randn(4, *MNIST)
    term = build_loss("catkd", {"pairs": "auto"})
    term.setup(SetupContext(student, teacher, Outputs(student(x)), Outputs(teacher(x)),
                            Batch(x, torch.zeros(4).long(), torch.arange(4)), 4, 10))
    assert term.classifier_paths == ("head.fc", "head.fc") and term.flat == (True, True)
    s = forward_with_features(student, x, term.student_paths)
    t = forward_with_features(teacher, x, term.teacher_paths)
    term(s, t, Batch(x, torch.zeros(4).long(), torch.arange(4))).backward()
    assert student.head.fc.weight.grad.abs().sum() > 0 and student.features[0].conv.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())


# ----- hidden states ------------------------------------------------------------------------------
def _projected_tokens(term, h_s):
    proj = term.projections[0]
    return h_s @ _np(proj.weight).T + _np(proj.bias)


@pytest.mark.parametrize("s_shape,t_shape,tokens", [
    ((2, 5, 6), (2, 5, 9), lambda x: x),                                          # (B, T, D) hidden states
    ((2, 4, 3, 3), (2, 6, 3, 3), lambda x: x.reshape(2, x.shape[1], -1).transpose(0, 2, 1)),  # maps: H·W tokens
    ((2, 4), (2, 7), lambda x: x[:, None, :]),                                    # vectors: one token
])
def test_hidden_mse_and_cosine_match_formulas(s_shape, t_shape, tokens):
    s, t = _rand(*s_shape), _rand(*t_shape, seed=1)
    mse = _setup("hidden_mse", {"student": "a", "teacher": "b"}, {"a": s}, {"b": t}).double()
    h = _projected_tokens(mse, tokens(_np(s)))
    h_t = tokens(_np(t))
    assert _call(mse, {"a": s}, {"b": t}).item() == pytest.approx(((h - h_t) ** 2).mean(), rel=1e-9)  # TinyBERT Eq. 8
    cos = _setup("hidden_cosine", {"student": "a", "teacher": "b"}, {"a": s}, {"b": t}).double()
    h = _projected_tokens(cos, tokens(_np(s)))
    cosine = (h * h_t).sum(-1) / np.linalg.norm(h, axis=-1) / np.linalg.norm(h_t, axis=-1)
    assert _call(cos, {"a": s}, {"b": t}).item() == pytest.approx((1 - cosine).mean(), rel=1e-9)


def test_hidden_terms_identity_when_widths_match_and_token_count_errors():
    f = _rand(2, 5, 6)
    for name in ("hidden_mse", "hidden_cosine"):
        term = _setup(name, {"student": "a", "teacher": "b"}, {"a": f}, {"b": f})
        assert isinstance(term.projections[0], nn.Identity)
        assert _call(term, {"a": f}, {"b": f.clone()}).item() == pytest.approx(0.0, abs=1e-12)
    cos = _setup("hidden_cosine", {"student": "a", "teacher": "b"}, {"a": f}, {"b": _rand(2, 5, 6, seed=1)})
    assert (_call(cos, {"a": 3.0 * f}, {"b": _rand(2, 5, 6, seed=1)}).item()
            == pytest.approx(_call(cos, {"a": f}, {"b": _rand(2, 5, 6, seed=1)}).item(), rel=1e-9))
    with pytest.raises(TinyKDError, match=r"hidden_mse: student 'a' \(B, 4\) and teacher 'b' \(B, 6, 3, 3\) give 1 vs 9 tokens"):
        _setup("hidden_mse", {"student": "a", "teacher": "b"}, {"a": _rand(2, 4)}, {"b": _rand(2, 6, 3, 3)})


# ----- properties shared by every term ------------------------------------------------------------
@pytest.mark.parametrize("name", ["fitnet", "at", "nst", "gram", "hidden_mse", "hidden_cosine", "fsp", "ickd", "vid", "ab"])
def test_gradients_reach_student_and_helpers_never_teacher(name):
    s_feats = {"a": _rand(4, 3, 6, 6), "b": _rand(4, 3, 6, 6, seed=1)}
    t_feats = {"c": _rand(4, 3, 6, 6, seed=2), "d": _rand(4, 5, 6, 6, seed=3)}
    if name == "fsp":
        params = {"student_pairs": [["a", "b"]], "teacher_pairs": [["c", "c"]]}
    else:
        params = {"pairs": [["a", "c"], ["b", "d"]]}
    term = _setup(name, params, s_feats, t_feats).double()
    s = {k: v.clone().requires_grad_(True) for k, v in s_feats.items()}
    t = {k: v.clone().requires_grad_(True) for k, v in t_feats.items()}
    _call(term, s, t).backward()
    assert all(v.grad is not None and v.grad.abs().sum() > 0 for v in s.values())
    assert all(v.grad is None for v in t.values())
    assert all(p.grad is not None for p in term.parameters())
    assert name not in ("fitnet", "gram", "hidden_mse", "hidden_cosine", "ickd", "vid", "ab") or len(list(term.parameters())) > 0


def test_param_errors_are_recipe_errors():
    with pytest.raises(RecipeError, match=r"distill.losses\[0\].pairs: .*name the layers to compare"):
        build_loss("at", {}, where="distill.losses[0]")
    with pytest.raises(RecipeError, match=r"'teacher' is missing"):
        build_loss("nst", {"student": "a"})
    with pytest.raises(RecipeError, match=r"must be 'auto' or a list"):
        build_loss("fitnet", {"pairs": "aut"})
    with pytest.raises(RecipeError, match=r"not both"):
        build_loss("gram", {"pairs": "auto", "student": "a"})
    with pytest.raises(RecipeError, match=r"num_pairs only applies with pairs: auto"):
        build_loss("hidden_mse", {"student": "a", "teacher": "b", "num_pairs": 2})
    with pytest.raises(RecipeError, match=r"did you mean 'stage1_epochs'"):
        build_loss("fitnet", {"pairs": "auto", "stage_epochs": 2})


# ----- automatic pairs ----------------------------------------------------------------------------
def _cnn(widths):
    return create_model("cnn", num_classes=10, in_shape=MNIST, widths=widths, hidden=32)


def test_auto_pairs_by_relative_depth_and_spatial_size():
    assert auto_pairs(_cnn([8, 16]), _cnn([32, 64]), MNIST) == [("features.0", "features.0"), ("features.1", "features.1")]
    r8, r20 = (create_model(n, num_classes=10, in_shape=MNIST) for n in ("resnet8", "resnet20"))
    assert auto_pairs(r8, r20, MNIST) == [("layer1", "layer1"), ("layer2", "layer2"), ("layer3", "layer3")]
    # A 2-stage cnn (14×14, 7×7 maps) against a 3-stage resnet (28, 14, 7): equal sizes at the same relative depth.
    assert auto_pairs(_cnn([8, 16]), r8, MNIST) == [("features.0", "layer2"), ("features.1", "layer3")]
    assert auto_pairs(r8, r20, MNIST, n=1) == [("layer3", "layer3")]
    with pytest.raises(TinyKDError, match=r"asked for 4 pairs but the student has 2 stages \(features.0, features.1\)"):
        auto_pairs(_cnn([8, 16]), r20, MNIST, n=4)
    mlp = create_model("mlp", num_classes=10, in_shape=MNIST, hidden=[])
    with pytest.raises(TinyKDError, match=r"found no stages in the student \(MLP\)"):
        auto_pairs(mlp, r20, MNIST)


def test_pairs_auto_resolves_in_setup_and_sets_capture_paths():
    student, teacher = _cnn([8, 16]), create_model("resnet8", num_classes=10, in_shape=MNIST)
    x = torch.randn(4, *MNIST)
    term = build_loss("fitnet", {"pairs": "auto"})
    assert term.student_paths == () and term.teacher_paths == ()
    # As in the trainer: the example outputs hold no features yet, since the paths are unknown before setup.
    term.setup(SetupContext(student, teacher, Outputs(student(x)), Outputs(teacher(x)), Batch(x, torch.zeros(4).long(),
                            torch.arange(4)), 4, 10))
    assert term.pairs == [("features.0", "layer2"), ("features.1", "layer3")]
    assert term.student_paths == ("features.0", "features.1") and term.teacher_paths == ("layer2", "layer3")
    assert [(r[0].in_channels, r[0].out_channels) for r in term.regressors] == [(8, 32), (16, 64)]
    assert term.describe() == "fitnet: features.0→layer2, features.1→layer3"


# ----- training -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["fitnet", "at", "ickd", "vid", "ab", "catkd"])
def test_training_with_feature_term_decreases_it(tmp_path, name):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(160, 1, 8, 8, generator=g)
    y = (x.mean((1, 2, 3)) > 0).long()
    train, val = Split(x[:128], y[:128]), Split(x[128:], y[128:])
    torch.manual_seed(0)
    teacher = create_model("cnn", num_classes=2, in_shape=(1, 8, 8), widths=[16, 32], hidden=0).eval()
    student = create_model("cnn", num_classes=2, in_shape=(1, 8, 8), widths=[4, 8], hidden=0)
    terms = [(1.0, build_loss("ce", {})), (100.0 if name == "at" else 1.0, build_loss(name, {"pairs": "auto"}))]
    res = Trainer(student, terms, TrainConfig(epochs=4, batch_size=32, lr=0.01), out_dir=tmp_path, label="s",
                  teacher=teacher, progress=False).fit(train, val)
    losses = [row[f"loss/{name}"] for row in res.history]
    assert len(losses) == 4 and losses[-1] < losses[0]
    assert all(p.grad is None for p in teacher.parameters())


@pytest.mark.parametrize("name", ["hidden_mse", "hidden_cosine"])
def test_hidden_terms_average_over_real_tokens_of_a_padded_text_batch(name):
    from tinykd.types import Batch as TextBatch
    torch.manual_seed(0)
    s, t = torch.randn(2, 5, 4, dtype=torch.float64), torch.randn(2, 5, 4, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0]])
    term = build_loss(name, {"student": "h", "teacher": "h"})
    term.setup(SetupContext(nn.Module(), nn.Module(), _outputs({"h": s}), _outputs({"h": t}), _batch(2), 100, 3))
    batch = TextBatch({"input_ids": mask, "attention_mask": mask}, torch.zeros(2).long(), torch.arange(2), mask)
    value = term(_outputs({"h": s}), _outputs({"h": t}), batch)
    real = mask.bool()
    per_token = ((s - t) ** 2).mean(-1) if name == "hidden_mse" else 1 - F.cosine_similarity(s, t, dim=-1)
    assert torch.isclose(value, per_token[real].mean())
    junk = s.clone()
    junk[~real] = 1e3  # padded positions change nothing
    assert torch.isclose(term(_outputs({"h": junk}), _outputs({"h": t}), batch), value)
