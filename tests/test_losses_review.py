"""Factor transfer (ft) and knowledge review (reviewkd) against numpy computations written from the papers, run on
the terms' own helper weights (convolutions, BatchNorm, interpolation and pooling written out by hand)."""
import numpy as np
import pytest
import torch
from torch import nn

from tinykd.cli import main
from tinykd.data.spec import Split
from tinykd.distill.capture import Outputs
from tinykd.distill.losses import Batch, SetupContext, build_loss
from tinykd.distill.trainer import Trainer
from tinykd.errors import RecipeError, TinyKDError
from tinykd.io import load_tensors
from tinykd.models import create_model
from tinykd.recipe import TrainConfig


from test_losses_feature import _batch, _call, _np, _outputs, _rand  # noqa: E402 (the feature terms' test helpers)


def _setup(name, params, s_feats, t_feats):
    """A term set up on given example features (models without Conv1d: 3-D features are tokens), in float64."""
    torch.manual_seed(0)
    term = build_loss(name, params)
    term.setup(SetupContext(nn.Module(), nn.Module(), _outputs(s_feats), _outputs(t_feats),
                            _batch(len(next(iter(s_feats.values())))), 100, 3))
    term.double()
    with torch.no_grad():  # BN affine parameters away from (1, 0), so the reference has to apply them
        for m in term.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.uniform_(0.5, 2.0)
                m.bias.normal_()
    return term



# ----- the layers, by hand ------------------------------------------------------------------------
def _conv(x, w, b=None):
    """Stride-1 'same' convolution (cross-correlation) of (B, C, H, W) with a (O, C, k, k) kernel."""
    k = w.shape[-1]
    h, wd = x.shape[2:]
    xp = np.pad(x, ((0, 0), (0, 0), (k // 2, k // 2), (k // 2, k // 2)))
    y = sum(np.einsum("oc,bchw->bohw", w[:, :, i, j], xp[:, :, i:i + h, j:j + wd]) for i in range(k) for j in range(k))
    return y if b is None else y + b[None, :, None, None]


def _conv_transpose(x, w):
    """Stride-1 'same' transposed convolution with a (C, O, k, k) kernel: every input position scatters its
    kernel onto the k×k output window around it."""
    b, _, h, wd = x.shape
    k = w.shape[-1]
    yp = np.zeros((b, w.shape[1], h + k - 1, wd + k - 1))
    for i in range(k):
        for j in range(k):
            yp[:, :, i:i + h, j:j + wd] += np.einsum("co,bchw->bohw", w[:, :, i, j], x)
    return yp[:, :, k // 2:k // 2 + h, k // 2:k // 2 + wd]


def _bn(z, bn, train=True):
    """BatchNorm2d over (B, H, W): batch statistics (biased variance) in training, running ones in eval."""
    if train:
        mean, var = z.mean(axis=(0, 2, 3)), z.var(axis=(0, 2, 3))
    else:
        mean, var = _np(bn.running_mean), _np(bn.running_var)
    shape = (1, -1, 1, 1)
    return ((z - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + bn.eps) * _np(bn.weight).reshape(shape)
            + _np(bn.bias).reshape(shape))


def _run(x, layers, train=True):
    """A Sequential of Conv2d / ConvTranspose2d / BatchNorm2d / LeakyReLU / Sigmoid layers, by hand."""
    for m in layers:
        if isinstance(m, nn.ConvTranspose2d):
            x = _conv_transpose(x, _np(m.weight))
        elif isinstance(m, nn.Conv2d):
            x = _conv(x, _np(m.weight), None if m.bias is None else _np(m.bias))
        elif isinstance(m, nn.BatchNorm2d):
            x = _bn(x, m, train)
        elif isinstance(m, nn.LeakyReLU):
            x = np.where(x > 0, x, 0.1 * x)
        elif isinstance(m, nn.Sigmoid):
            x = 1 / (1 + np.exp(-x))
        else:
            raise AssertionError(f"unexpected layer {m}")
    return x


def _block_mean(x, size):
    """Average-pool (B, C, H, W) to size×size (H, W multiples of size), what adaptive pooling does then."""
    b, c, h, w = x.shape
    return x.reshape(b, c, size, h // size, size, w // size).mean(axis=(3, 5))


def _nearest(x, size):
    """Nearest-neighbour resize of (B, C, H, W) to size×size: output i reads input floor(i · H / size)."""
    rows = (np.arange(size) * x.shape[2] / size).astype(int)
    cols = (np.arange(size) * x.shape[3] / size).astype(int)
    return x[:, :, rows][:, :, :, cols]


def _unit_rows(x):
    flat = x.reshape(len(x), -1)
    return flat / np.linalg.norm(flat, axis=1, keepdims=True)


def _n_params(module):
    return sum(p.numel() for p in module.parameters())


# ----- factor transfer ----------------------------------------------------------------------------
@pytest.mark.parametrize("p", [1.0, 2.0])
def test_ft_joint_value_is_factor_loss_plus_reconstruction(p):
    s, t = _rand(4, 3, 5, 5), _rand(4, 6, 5, 5, seed=1)
    term = _setup("ft", {"student": "a", "teacher": "b", "p": p, "paraphraser_epochs": 0}, {"a": s}, {"b": t})
    got = _call(term, {"a": s}, {"b": t})
    para, trans = term.paraphrasers[0], term.translators[0]
    f_t = _run(_np(t), para.encoder)
    f_s = _run(_np(s), trans)
    assert f_t.shape == f_s.shape == (4, 3, 5, 5)  # rate 0.5: 3 factor channels for the teacher's 6
    factor = (np.abs(_unit_rows(f_s) - _unit_rows(f_t)) ** p).mean()  # Eq. 3, mean over B·F·H·W elements
    reconstruction = ((_run(f_t, para.decoder) - _np(t)) ** 2).mean()
    assert got.item() == pytest.approx(factor + reconstruction, rel=1e-9)
    assert term.parts["factor"].item() == pytest.approx(factor, rel=1e-9)
    assert term.parts["reconstruction"].item() == pytest.approx(reconstruction, rel=1e-9)


def test_ft_pools_the_larger_factor_and_reads_vectors_as_1x1_maps():
    s, t = _rand(2, 3, 8, 8), _rand(2, 4, 4, 4, seed=1)
    term = _setup("ft", {"student": "a", "teacher": "b", "rate": 0.3, "paraphraser_epochs": 0}, {"a": s}, {"b": t})
    got = _call(term, {"a": s}, {"b": t})
    f_t = _run(_np(t), term.paraphrasers[0].encoder)
    f_s = _block_mean(_run(_np(s), term.translators[0]), 4)
    assert f_t.shape[1] == 1  # int(4 · 0.3) = 1 factor channel
    reconstruction = ((_run(f_t, term.paraphrasers[0].decoder) - _np(t)) ** 2).mean()
    assert got.item() == pytest.approx(np.abs(_unit_rows(f_s) - _unit_rows(f_t)).mean() + reconstruction, rel=1e-9)
    # Vectors: (B, C, 1, 1) maps, where the 3×3 kernels are 1×1 (a padded 3×3 kernel reads its centre alone).
    v_s, v_t = _rand(4, 5), _rand(4, 8, seed=1)
    vec = _setup("ft", {"student": "a", "teacher": "b", "paraphraser_epochs": 0}, {"a": v_s}, {"b": v_t})
    para, trans = vec.paraphrasers[0], vec.translators[0]
    assert [m.kernel_size for m in [*trans, *para.encoder, *para.decoder] if hasattr(m, "kernel_size")] == [(1, 1)] * 9
    f_t = _run(_np(v_t)[:, :, None, None], para.encoder)
    f_s = _run(_np(v_s)[:, :, None, None], trans)
    reconstruction = ((_run(f_t, para.decoder) - _np(v_t)[:, :, None, None]) ** 2).mean()
    expected = np.abs(_unit_rows(f_s) - _unit_rows(f_t)).mean() + reconstruction
    assert _call(vec, {"a": v_s}, {"b": v_t}).item() == pytest.approx(expected, rel=1e-9)


def test_ft_helpers_have_the_papers_layers_and_parameter_counts():
    term = _setup("ft", {"student": "a", "teacher": "b"}, {"a": _rand(2, 3, 4, 4)}, {"b": _rand(2, 6, 4, 4)})
    para, trans = term.paraphrasers[0], term.translators[0]
    layers = [(type(m).__name__, m.in_channels, m.out_channels, m.kernel_size)
              for m in [*para.encoder, *para.decoder] if hasattr(m, "kernel_size")]
    assert layers == [("Conv2d", 6, 6, (3, 3)), ("Conv2d", 6, 3, (3, 3)), ("Conv2d", 3, 3, (3, 3)),
                      ("ConvTranspose2d", 3, 3, (3, 3)), ("ConvTranspose2d", 3, 6, (3, 3)),
                      ("ConvTranspose2d", 6, 6, (3, 3))]
    # 3×3 kernels without bias, then BN (γ, β) of each layer's output channels.
    assert _n_params(para) == 9 * (6 * 6 + 6 * 3 + 3 * 3 + 3 * 3 + 3 * 6 + 6 * 6) + 2 * (6 + 3 + 3 + 3 + 6 + 6)
    assert _n_params(trans) == 9 * (3 * 3 + 3 * 3 + 3 * 3) + 2 * (3 + 3 + 3)
    assert _n_params(term) == _n_params(para) + _n_params(trans)
    # 1-D conv nets' (B, C, L) maps get 1-D modules.
    student = create_model("cnn1d", num_classes=3, in_shape=(1, 40), widths=[4, 4])
    teacher = create_model("cnn1d", num_classes=3, in_shape=(1, 40), widths=[8, 8])
    x = torch.randn(6, 1, 40)
    one_d = build_loss("ft", {"student": "features.1", "teacher": "features.1"})
    one_d.setup(SetupContext(student, teacher, Outputs(student(x)), Outputs(teacher(x)),
                             Batch(x, torch.zeros(6).long(), torch.arange(6)), 6, 3))
    assert isinstance(one_d.paraphrasers[0].decoder[0], nn.ConvTranspose1d)
    assert _n_params(one_d.translators[0]) == 3 * (4 * 4 + 4 * 4 + 4 * 4) + 2 * (4 + 4 + 4)


def test_ft_joint_gradients_factor_to_student_and_translator_reconstruction_to_paraphraser_never_teacher():
    s = _rand(4, 3, 5, 5).requires_grad_(True)
    t = _rand(4, 6, 5, 5, seed=1).requires_grad_(True)
    term = _setup("ft", {"student": "a", "teacher": "b", "paraphraser_epochs": 0}, {"a": s.detach()}, {"b": t.detach()})
    _call(term, {"a": s}, {"b": t}).backward()
    assert s.grad.abs().sum() > 0 and t.grad is None
    assert all(q.grad is not None and q.grad.abs().sum() > 0 for q in term.translators.parameters())
    # The paraphraser's gradient is the reconstruction's alone: the factor loss compares with a detached factor.
    got = [q.grad.clone() for q in term.paraphrasers.parameters()]
    term.zero_grad()
    para = term.paraphrasers[0]
    nn.functional.mse_loss(para.decoder(para.encoder(t.detach())), t.detach()).backward()
    for g, q in zip(got, term.paraphrasers.parameters()):
        torch.testing.assert_close(g, q.grad, rtol=1e-10, atol=1e-12)


def test_ft_two_stage_schedule_trains_the_paraphraser_alone_then_freezes_it():
    s, t = _rand(4, 3, 5, 5), _rand(4, 6, 5, 5, seed=1)
    term = _setup("ft", {"student": "a", "teacher": "b", "paraphraser_epochs": 2}, {"a": s}, {"b": t})
    para = term.paraphrasers[0]
    assert term.exclusive and not term.frozen  # before the first epoch: stage 1
    term.start_epoch(2, 5)
    s_req = s.clone().requires_grad_(True)
    stage1 = _call(term, {"a": s_req}, {"b": t})
    assert term.exclusive and set(term.parts) == {"reconstruction"}
    assert stage1.item() == pytest.approx(((_run(_run(_np(t), para.encoder), para.decoder) - _np(t)) ** 2).mean(),
                                          rel=1e-9)
    stage1.backward()
    assert s_req.grad is None and all(q.grad is None for q in term.translators.parameters())
    term.zero_grad()
    term.start_epoch(3, 5)
    term.train()  # the trainer sets its helpers to training mode every epoch: the frozen paraphraser stays in eval
    assert not term.exclusive and term.frozen and not para.training and term.translators[0].training
    s_req = s.clone().requires_grad_(True)
    stage2 = _call(term, {"a": s_req}, {"b": t})
    f_t = _run(_np(t), para.encoder, train=False)  # BN running statistics
    expected = np.abs(_unit_rows(_run(_np(s), term.translators[0])) - _unit_rows(f_t)).mean()
    assert stage2.item() == pytest.approx(expected, rel=1e-9) and set(term.parts) == {"factor"}
    stage2.backward()
    assert s_req.grad.abs().sum() > 0 and all(q.grad is None for q in para.parameters())
    with pytest.raises(TinyKDError, match=r"ft: paraphraser_epochs 2 leaves none of the 2 training epochs to the "
                                          r"student.*\n  fix: use paraphraser_epochs < 2, or 0"):
        term.start_epoch(1, 2)


def test_ft_errors():
    with pytest.raises(TinyKDError, match=r"ft: student 'a' \(B, 3, 4, 4\) and teacher 'b' \(B, 5, 6\) have different "
                                          r"spatial ranks"):
        _setup("ft", {"student": "a", "teacher": "b"}, {"a": _rand(2, 3, 4, 4)}, {"b": _rand(2, 5, 6)})
    with pytest.raises(RecipeError, match=r"distill.losses\[1\].rate: Input should be greater than 0"):
        build_loss("ft", {"rate": 0}, where="distill.losses[1]")
    with pytest.raises(RecipeError, match=r"\.p: Input should be greater than or equal to 1"):
        build_loss("ft", {"p": 0.5})
    with pytest.raises(RecipeError, match=r"paraphraser_epochs: Input should be greater than or equal to 0"):
        build_loss("ft", {"paraphraser_epochs": -1})
    with pytest.raises(RecipeError, match=r"'teacher' is missing"):
        build_loss("ft", {"student": "a"})
    with pytest.raises(RecipeError, match=r"not both"):
        build_loss("ft", {"student": "a", "teacher": "b", "pairs": "auto"})
    with pytest.raises(RecipeError, match=r"did you mean 'rate'"):
        build_loss("ft", {"rates": 0.5})
    default = build_loss("ft", {})
    assert default.params.pairs == "auto" and default.params.num_pairs == 1 and default.exclusive  # stage 1 first
    assert build_loss("ft", {"student": "a", "teacher": "b"}).pairs == [("a", "b")]


# ----- knowledge review ---------------------------------------------------------------------------
def _np_hcl(f_s, f_t):
    """HCL of one stage: MSE at full size + ½, ¼, ⅛ · MSE of 4×4, 2×2, 1×1 block means (levels < H), / Σ weights."""
    loss, weight, total = ((f_s - f_t) ** 2).mean(), 1.0, 1.0
    for level in (4, 2, 1):
        if level < f_s.shape[2]:
            weight /= 2
            loss += weight * ((_block_mean(f_s, level) - _block_mean(f_t, level)) ** 2).mean()
            total += weight
    return loss / total


def _np_abf(abf, x, residual, out_size):
    x = _run(x, abf.conv1)
    if residual is not None:
        residual = _nearest(residual, x.shape[2])
        a = _run(np.concatenate([x, residual], axis=1), abf.attention)
        x = x * a[:, :1] + residual * a[:, 1:]
    if x.shape[2] != out_size:
        x = _nearest(x, out_size)
    return _run(x, abf.conv2), x


@pytest.mark.parametrize("last", ["map", "vector"])
def test_reviewkd_matches_top_down_fusion_and_hierarchical_context_loss(last):
    # Stage 0: the student's 8×8 map against a 4×4 teacher map (the fused map is resized to it).
    s = {"s0": _rand(4, 3, 8, 8), "s1": _rand(4, 4, 4, 4, seed=1)}
    t = {"t0": _rand(4, 6, 4, 4, seed=3), "t1": _rand(4, 7, 4, 4, seed=4)}
    if last == "map":
        s["s2"], t["t2"] = _rand(4, 5, 2, 2, seed=2), _rand(4, 8, 2, 2, seed=5)
    else:  # pooled features, read as 1×1 maps
        s["s2"], t["t2"] = _rand(4, 5, seed=2), _rand(4, 8, seed=5)
    term = _setup("reviewkd", {"pairs": [["s0", "t0"], ["s1", "t1"], ["s2", "t2"]], "mid_channels": 6}, s, t)
    with torch.no_grad():
        for abf in term.abfs[:2]:
            abf.attention[0].bias.normal_()
    got = _call(term, s, t)
    maps = [(_np(s[f"s{i}"]), _np(t[f"t{i}"])) for i in range(3)]
    if last == "vector":
        maps[2] = tuple(x[:, :, None, None] for x in maps[2])
    per_stage, residual = [None] * 3, None
    for i in (2, 1, 0):  # the deepest stage first; its ABF has no attention (nothing deeper to fuse)
        out, residual = _np_abf(term.abfs[i], maps[i][0], residual, maps[i][1].shape[2])
        per_stage[i] = _np_hcl(out, maps[i][1])
    assert term.abfs[2].attention is None
    assert term.abfs[2].conv2[0].kernel_size == ((1, 1) if last == "vector" else (3, 3))
    assert got.item() == pytest.approx(sum(per_stage), rel=1e-9)
    assert [term.parts[k].item() for k in ("s0", "s1", "s2")] == pytest.approx(per_stage, rel=1e-9)


def test_reviewkd_warmup_scales_the_loss_by_epoch_over_warmup_epochs():
    s = {"s0": _rand(4, 3, 8, 8), "s1": _rand(4, 4, 4, 4, seed=1)}
    t = {"t0": _rand(4, 6, 4, 4, seed=3), "t1": _rand(4, 7, 4, 4, seed=4)}
    pairs = [["s0", "t0"], ["s1", "t1"]]
    plain = _setup("reviewkd", {"pairs": pairs, "mid_channels": 6}, s, t)
    full = _call(plain, s, t).item()
    warm = _setup("reviewkd", {"pairs": pairs, "mid_channels": 6, "warmup_epochs": 4}, s, t)
    warm.load_state_dict(plain.state_dict())  # the same ABFs
    for epoch, factor in [(1, 0.25), (2, 0.5), (4, 1.0), (9, 1.0)]:
        warm.start_epoch(epoch, 10)
        assert _call(warm, s, t).item() == pytest.approx(factor * full, rel=1e-12)
    plain.start_epoch(1, 10)
    assert _call(plain, s, t).item() == pytest.approx(full, rel=1e-12)  # no warm-up: the paper's constant weight


def test_reviewkd_hcl_weights_and_skipped_levels():
    from tinykd.distill.losses.review import hcl
    a, b = _rand(2, 3, 8, 8), _rand(2, 3, 8, 8, seed=1)
    mse = lambda x, y: ((x - y) ** 2).mean()  # noqa: E731
    full = mse(_np(a), _np(b))
    levels = [mse(_block_mean(_np(a), k), _block_mean(_np(b), k)) for k in (4, 2, 1)]
    assert hcl(a, b).item() == pytest.approx((full + levels[0] / 2 + levels[1] / 4 + levels[2] / 8) / 1.875, rel=1e-9)
    # A 2×2 map: levels 4 and 2 are not smaller than it; level 1 gets the first halved weight.
    c, d = a[:, :, :2, :2], b[:, :, :2, :2]
    pooled = mse(_np(c).mean(axis=(2, 3)), _np(d).mean(axis=(2, 3)))
    assert hcl(c, d).item() == pytest.approx((mse(_np(c), _np(d)) + pooled / 2) / 1.5, rel=1e-9)
    one_a, one_b = a[:, :, :1, :1], b[:, :, :1, :1]  # 1×1: the full-resolution MSE alone
    assert hcl(one_a, one_b).item() == pytest.approx(mse(_np(one_a), _np(one_b)), rel=1e-9)
    # 1-D maps pool to lengths 4, 2, 1.
    e, f = a.flatten(2), b.flatten(2)  # (2, 3, 64)
    lv = [mse(_np(e).reshape(2, 3, k, -1).mean(-1), _np(f).reshape(2, 3, k, -1).mean(-1)) for k in (4, 2, 1)]
    expected = (mse(_np(e), _np(f)) + lv[0] / 2 + lv[1] / 4 + lv[2] / 8) / 1.875
    assert hcl(e, f).item() == pytest.approx(expected, rel=1e-9)


def test_reviewkd_abf_parameter_counts():
    s = {"a": _rand(2, 3, 8, 8), "b": _rand(2, 5, 4, 4)}
    t = {"c": _rand(2, 6, 8, 8), "d": _rand(2, 10, 4, 4)}
    term = _setup("reviewkd", {"pairs": [["a", "c"], ["b", "d"]]}, s, t)
    mid = 64
    fused = 3 * mid + 2 * mid + (2 * mid * 2 + 2) + 9 * mid * 6 + 2 * 6  # conv1 + BN, attention (with bias), conv2 + BN
    deepest = 5 * mid + 2 * mid + 9 * mid * 10 + 2 * 10  # no attention
    assert [_n_params(abf) for abf in term.abfs] == [fused, deepest]
    assert _n_params(term) == fused + deepest


def test_reviewkd_gradients_reach_student_and_abfs_never_teacher():
    s = {k: v.requires_grad_(True) for k, v in {"a": _rand(4, 3, 8, 8), "b": _rand(4, 5, 4, 4)}.items()}
    t = {k: v.requires_grad_(True) for k, v in {"c": _rand(4, 6, 8, 8), "d": _rand(4, 10, 4, 4)}.items()}
    term = _setup("reviewkd", {"pairs": [["a", "c"], ["b", "d"]], "mid_channels": 4},
                  {k: v.detach() for k, v in s.items()}, {k: v.detach() for k, v in t.items()})
    _call(term, s, t).backward()
    assert all(v.grad.abs().sum() > 0 for v in s.values()) and all(v.grad is None for v in t.values())
    assert all(q.grad is not None for q in term.parameters())


def test_reviewkd_errors():
    with pytest.raises(TinyKDError, match=r"reviewkd: student 'b' \(B, 4, 6\) and teacher 'd' \(B, 4, 6\) are maps of "
                                          r"another spatial rank than student 'a' \(B, 3, 4, 4\) and teacher 'c' "
                                          r"\(B, 6, 4, 4\) \(reviewkd fuses every stage with the next deeper one\)"):
        _setup("reviewkd", {"pairs": [["a", "c"], ["b", "d"]]}, {"a": _rand(2, 3, 4, 4), "b": _rand(2, 4, 6)},
               {"c": _rand(2, 6, 4, 4), "d": _rand(2, 4, 6)})
    with pytest.raises(TinyKDError, match=r"feature terms compare"):
        _setup("reviewkd", {"student": "a", "teacher": "b"}, {"a": _rand(2, 3, 2, 2, 2)}, {"b": _rand(2, 3, 4, 4)})
    with pytest.raises(RecipeError, match=r"mid_channels: Input should be greater than or equal to 1"):
        build_loss("reviewkd", {"mid_channels": 0})
    with pytest.raises(RecipeError, match=r"num_pairs only applies with pairs: auto"):
        build_loss("reviewkd", {"pairs": [["a", "b"]], "num_pairs": 2})
    with pytest.raises(RecipeError, match=r"pairs is empty"):
        build_loss("reviewkd", {"pairs": []})
    assert build_loss("reviewkd", {}).params.pairs == "auto"


# ----- pairs: auto and training -------------------------------------------------------------------
def _cnns():
    torch.manual_seed(0)
    teacher = create_model("cnn", num_classes=2, in_shape=(1, 8, 8), widths=[16, 32], hidden=0).eval()
    student = create_model("cnn", num_classes=2, in_shape=(1, 8, 8), widths=[4, 8], hidden=0)
    return student, teacher


def test_pairs_auto_default_last_stage_for_ft_every_stage_for_reviewkd():
    student, teacher = _cnns()
    x = torch.randn(4, 1, 8, 8)
    ctx = SetupContext(student, teacher, Outputs(student(x)), Outputs(teacher(x)),
                       Batch(x, torch.zeros(4).long(), torch.arange(4)), 4, 2)
    ft, review = build_loss("ft", {}), build_loss("reviewkd", {})
    ft.setup(ctx)
    review.setup(ctx)
    assert ft.pairs == [("features.1", "features.1")]
    assert (ft.translators[0][0].in_channels, ft.paraphrasers[0].encoder[0].in_channels) == (8, 32)
    assert review.pairs == [("features.0", "features.0"), ("features.1", "features.1")]
    assert [(a.conv1[0].in_channels, a.conv2[0].out_channels) for a in review.abfs] == [(4, 16), (8, 32)]


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(160, 1, 8, 8, generator=g)
    y = (x.mean((1, 2, 3)) > 0).long()
    return Split(x[:128], y[:128]), Split(x[128:], y[128:])


@pytest.mark.parametrize("name,params,key", [("ft", {}, "loss/ft.factor"), ("reviewkd", {}, "loss/reviewkd"),
                                             ("ft", {"paraphraser_epochs": 0}, "loss/ft.factor")])
def test_training_with_kd_and_the_term_decreases_it(tmp_path, name, params, key):
    train, val = _data()
    student, teacher = _cnns()
    terms = [(1.0, build_loss("kd", {})), (10.0, build_loss(name, params))]
    res = Trainer(student, terms, TrainConfig(epochs=5, batch_size=32, lr=0.01), out_dir=tmp_path, label="s",
                  teacher=teacher, progress=False).fit(train, val)
    values = [row.get(key) for row in res.history]
    assert all(p.grad is None for p in teacher.parameters())
    helpers = {k for k in load_tensors(tmp_path / "last.safetensors") if k.startswith("helpers.")}
    assert any(".paraphrasers." in k or ".abfs." in k for k in helpers)  # helpers are checkpointed
    if name == "ft" and terms[1][1].params.paraphraser_epochs:
        first = res.history[0]  # stage 1: the paraphraser alone, kd waits
        assert first["loss/kd"] == 0.0 and first["loss/ft.reconstruction"] > 0 and values[0] is None
        assert all("loss/ft.reconstruction" not in row for row in res.history[1:])
        values = values[1:]
    else:
        assert all(row["loss/kd"] > 0 for row in res.history)
    assert values[-1] < values[0]
    if name == "ft" and params:  # joint: the reconstruction trains all along
        recon = [row["loss/ft.reconstruction"] for row in res.history]
        assert recon[-1] < recon[0]


def test_methods_show_the_papers(capsys):
    assert main(["methods", "ft"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ft — factor transfer") and "Kim, Park & Kwak, NeurIPS 2018" in out
    assert "  rate = 0.5" in out and "  p = 1.0" in out and "  pairs = auto" in out and "  paraphraser_epochs = 1" in out
    assert main(["methods", "reviewkd"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("reviewkd — knowledge review") and "Distilling Knowledge via Knowledge Review" in out
    assert "CVPR 2021" in out and "  mid_channels = 64" in out and "(HCL)" in out
