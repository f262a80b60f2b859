"""Schemes without a pre-trained teacher: online (DML, peer ensemble) and self-distillation (BYOT, PS-KD, BAN)."""
import math

import pytest
import torch
import torch.nn.functional as F

from tinykd.data.spec import Split
from tinykd.distill.capture import Outputs
from tinykd.distill.losses import build_loss
from tinykd.distill.losses.base import Batch, SetupContext
from tinykd.distill.schemes import EarlyExits, Peers, born_again, peer_accuracies
from tinykd.distill.trainer import Trainer
from tinykd.errors import TinyKDError
from tinykd.models import create_model
from tinykd.recipe import TrainConfig

from interrupt import Stop, stop_after


def _data(n=160, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=g)
    y = (x.mean((1, 2, 3)) > 0).long() + 2 * (x[:, 0, :4, :4].mean((1, 2)) > 0).long()
    cut = n * 4 // 5
    return Split(x[:cut], y[:cut]), Split(x[cut:], y[cut:])


def _cnn(seed=0):
    torch.manual_seed(seed)
    return create_model("cnn", num_classes=4, in_shape=(1, 8, 8), widths=[4, 8], hidden=16)


def _mlp(seed=0):
    torch.manual_seed(seed)
    return create_model("mlp", num_classes=4, in_shape=(1, 8, 8), hidden=[16])


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _changed(before, model):
    return any(not torch.equal(v, model.state_dict()[k]) for k, v in before.items() if v.is_floating_point())


CFG = TrainConfig(epochs=2, batch_size=32)


def _log_softmax(row, t=1.0):
    m = max(v / t for v in row)
    lse = m + math.log(sum(math.exp(v / t - m) for v in row))
    return [v / t - lse for v in row]


def _kl(p_logits, q_logits, t):
    """KL(softmax(p/t) ‖ softmax(q/t)) · t² for one sample, by hand."""
    lp, lq = _log_softmax(p_logits, t), _log_softmax(q_logits, t)
    return sum(math.exp(a) * (a - b) for a, b in zip(lp, lq)) * t * t


def _ce(logits, y):
    return -_log_softmax(logits)[y]


# ----- online -------------------------------------------------------------------------------------
def test_dml_trains_every_heterogeneous_peer(tmp_path):
    train, val = _data()
    peers = Peers([_cnn(1), _mlp(2), _mlp(3)])
    before = [_state(p) for p in peers.peers]
    res = Trainer(peers, [(1.0, build_loss("dml", {"peers": 3}))], CFG, out_dir=tmp_path, label="dml",
                  progress=False).fit(train, val)
    assert all(_changed(b, p) for b, p in zip(before, peers.peers))
    assert {f"loss/dml.peer{k}.kl" for k in range(3)} <= set(res.history[0])
    assert len(peer_accuracies(peers, val)) == 3
    # Peer 0 answers for the group (validation, export).
    assert torch.equal(peers(val.x), peers.peer(0)(val.x))


def test_dml_and_peer_ensemble_match_hand_computation():
    z = [[1.0, 0.0, -1.0], [0.2, 0.4, 0.1], [2.0, -1.0, 0.5]]  # 3 peers, one sample
    y = 2
    logits = [torch.tensor([row], requires_grad=True) for row in z]
    student = Outputs(logits[0], {f"peers.{k}": logits[k] for k in range(3)})
    batch = Batch(torch.zeros(1, 1), torch.tensor([y]), torch.tensor([0]))
    t = 2.0
    dml = build_loss("dml", {"peers": 3, "temperature": t, "alpha": 0.5})
    hand = sum(_ce(z[k], y) + 0.5 * sum(_kl(z[j], z[k], t) for j in range(3) if j != k) / 2 for k in range(3))
    loss = dml(student, None, batch)
    assert loss.item() == pytest.approx(hand, rel=1e-5)
    # Each peer's gradient is that of its own objective: what it mimics is detached.
    loss.backward()
    own = F.cross_entropy(logits[0], torch.tensor([y])) + 0.5 * sum(
        F.kl_div(F.log_softmax(logits[0] / t, 1), F.log_softmax(logits[j].detach() / t, 1), reduction="batchmean",
                 log_target=True) * t * t for j in (1, 2)) / 2
    (grad,) = torch.autograd.grad(own, logits[0])
    assert torch.allclose(logits[0].grad, grad, atol=1e-6)

    ens = build_loss("peer_ensemble", {"peers": 3, "temperature": t, "alpha": 0.7, "ensemble_ce": 0.3})
    mean = [sum(z[k][c] for k in range(3)) / 3 for c in range(3)]
    hand = 0.3 * _ce(mean, y) + sum(_ce(z[k], y) + 0.7 * _kl(mean, z[k], t) for k in range(3))
    assert ens(student, None, batch).item() == pytest.approx(hand, rel=1e-5)


def test_online_terms_need_peers(tmp_path):
    train, val = _data()
    with pytest.raises(TinyKDError, match="no module at path 'peers.0'"):
        Trainer(_mlp(), [(1.0, build_loss("dml", {}))], CFG, out_dir=tmp_path, label="s", progress=False).fit(train, val)
    with pytest.raises(TinyKDError, match="no module at path 'peers.2'"):
        Trainer(Peers([_mlp(), _mlp(1)]), [(1.0, build_loss("dml", {"peers": 3}))], CFG, out_dir=tmp_path / "b",
                label="s", progress=False).fit(train, val)
    with pytest.raises(TinyKDError, match="expects the student to be Peers of 2 models, got 3"):
        Trainer(Peers([_mlp(), _mlp(1), _mlp(2)]), [(1.0, build_loss("dml", {"peers": 2}))], CFG,
                out_dir=tmp_path / "c", label="s", progress=False).fit(train, val)
    with pytest.raises(TinyKDError, match="at least 2 peers"):
        Peers([_mlp()])


# ----- BYOT ---------------------------------------------------------------------------------------
def test_byot_heads_train_outside_the_student_and_can_be_kept_as_early_exits(tmp_path):
    train, val = _data()
    student = _cnn(1)
    byot = build_loss("byot", {"exits": ["features.0"], "deepest": "features.1"})
    res = Trainer(student, [(1.0, byot)], CFG, out_dir=tmp_path, label="byot", progress=False).fit(train, val)
    assert len(byot.heads) == 1
    assert not any(k.startswith("heads") or "bottleneck" in k for k in student.state_dict())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in byot.heads.parameters())
    assert {"loss/byot.exit1.kd", "loss/byot.exit1.hint", "loss/byot.exit1.acc"} <= set(res.history[0])
    exits = EarlyExits(student, byot).eval()
    with torch.no_grad():
        outs = exits(val.x)
        assert len(outs) == 2 and outs[0].shape == (len(val), 4)
        assert torch.allclose(outs[-1], student.eval()(val.x))


def test_byot_matches_hand_computation():
    torch.manual_seed(0)
    student = _cnn(0).eval()
    x = torch.randn(3, 1, 8, 8)
    y = torch.tensor([0, 3, -1])  # the unlabelled sample takes part in KD and hint, not in CE
    byot = build_loss("byot", {"exits": ["features.0"], "deepest": "features.1", "temperature": 2.0,
                               "alpha": 0.4, "beta": 0.1})
    from tinykd.distill.capture import forward_with_features
    out = forward_with_features(student, x, byot.student_paths)
    byot.setup(SetupContext(student, None, out, None, Batch(x, y, torch.arange(3)), 3, 4))
    byot.eval()
    loss = byot(out, None, Batch(x, y, torch.arange(3)))

    head = byot.heads[0]
    f_map = head.bottleneck(out.features["features.0"])  # (3, 8, 4, 4): bottleneck to the deepest width
    f_i = f_map.mean((2, 3))
    z_i = head.fc(f_i)
    f_c = out.features["features.1"].mean((2, 3))
    zc, zi = out.logits.tolist(), z_i.tolist()
    ce_c = (_ce(zc[0], 0) + _ce(zc[1], 3)) / 2
    ce_i = (_ce(zi[0], 0) + _ce(zi[1], 3)) / 2
    kd = sum(_kl(zc[b], zi[b], 2.0) for b in range(3)) / 3
    hint = sum(((a - b) ** 2) for row_a, row_b in zip(f_i.tolist(), f_c.tolist()) for a, b in zip(row_a, row_b)) / 3
    hand = ce_c + 0.6 * ce_i + 0.4 * kd + 0.1 * hint
    assert loss.item() == pytest.approx(hand, rel=1e-4)
    with pytest.raises(TinyKDError, match="also listed as an exit"):
        build_loss("byot", {"exits": ["features.1"], "deepest": "features.1"})


# ----- PS-KD --------------------------------------------------------------------------------------
def test_pskd_targets_mix_labels_with_the_previous_epoch_prediction():
    term = build_loss("pskd", {"alpha_T": 0.8})
    logits0 = torch.zeros(1, 3)
    term.setup(SetupContext(None, None, Outputs(logits0), None, Batch(torch.zeros(1, 1), torch.tensor([0]),
                                                                       torch.tensor([0])), 5, 3))
    batch = Batch(torch.zeros(2, 1), torch.tensor([1, 2]), torch.tensor([3, 0]))
    first = [[0.5, 1.0, -0.5], [0.0, 0.3, 2.0]]
    term.start_epoch(1, 4)  # α_1 = 0.8 · 1/4, but no previous prediction yet: the one-hot label
    loss1 = term(Outputs(torch.tensor(first)), None, batch)
    assert loss1.item() == pytest.approx((_ce(first[0], 1) + _ce(first[1], 2)) / 2, rel=1e-6)
    term.start_epoch(2, 4)
    alpha = 0.8 * 2 / 4
    second = [[1.0, 0.0, 0.0], [0.2, 0.2, 0.2]]
    loss2 = term(Outputs(torch.tensor(second)), None, batch)
    hand = 0.0
    for b, label in enumerate((1, 2)):
        prev = [math.exp(v) for v in _log_softmax(first[b])]
        target = [(1 - alpha) * (c == label) + alpha * prev[c] for c in range(3)]
        hand -= sum(t * lp for t, lp in zip(target, _log_softmax(second[b]))) / 2
    assert loss2.item() == pytest.approx(hand, rel=1e-6)
    # Samples without a label or an index have no target and take no part.
    mixed = Batch(torch.zeros(2, 1), torch.tensor([-1, 0]), torch.tensor([2, -1]))
    assert term(Outputs(torch.tensor(second, requires_grad=True)), None, mixed).item() == 0.0


def test_pskd_bank_is_checkpointed_so_resume_is_exact(tmp_path):
    train, val = _data()
    cfg = TrainConfig(epochs=3, batch_size=32)
    full = _mlp(1)
    ref = Trainer(full, [(1.0, build_loss("pskd", {}))], cfg, out_dir=tmp_path / "a", label="s",
                  progress=False).fit(train, val)
    part = _mlp(1)
    tr = stop_after(Trainer(part, [(1.0, build_loss("pskd", {}))], cfg, out_dir=tmp_path / "b", label="s",
                            progress=False), 2)
    with pytest.raises(Stop):
        tr.fit(train, val)
    resumed = _mlp(1)
    res = Trainer(resumed, [(1.0, build_loss("pskd", {}))], cfg, out_dir=tmp_path / "b", label="s",
                  progress=False).fit(train, val)
    assert [r["train_loss"] for r in res.history] == [r["train_loss"] for r in ref.history]
    assert all(torch.equal(v, resumed.state_dict()[k]) for k, v in full.state_dict().items())
    assert not any("bank" in k for k in resumed.state_dict())


# ----- born-again ---------------------------------------------------------------------------------
def test_born_again_generations_each_learn_from_the_previous(tmp_path):
    train, val = _data()
    seeds = iter(range(10))
    rows = born_again(lambda: _mlp(next(seeds)), train, val, TrainConfig(epochs=1, batch_size=32),
                      out_dir=tmp_path, generations=2)
    assert [(r.label, r.teacher) for r in rows] == [("gen0", None), ("gen1", "gen0"), ("gen2", "gen1")]
    assert len({r.params for r in rows}) == 1
    again = born_again(lambda: _mlp(0), train, val, TrainConfig(epochs=1, batch_size=32), out_dir=tmp_path,
                       generations=2)
    assert all(r.reused for r in again) and [r.best_val_accuracy for r in again] == [r.best_val_accuracy for r in rows]
