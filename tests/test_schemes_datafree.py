"""Data-free distillation: DAFL's generator as the trainer's batch source, DeepInversion, sample grids."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tinykd.data.spec import Split
from tinykd.distill.losses import build_loss
from tinykd.distill.schemes import (BNStatistics, DAFLBatches, Generator, dafl_losses, deep_inversion,
                                    image_priors, inversion_losses, invert_batch, save_grid)
from tinykd.distill.trainer import Trainer
from tinykd.errors import TinyKDError, TrainingError
from tinykd.io import load_tensors
from tinykd.models import create_model
from tinykd.recipe import MixupConfig, TrainConfig

from interrupt import Stop, stop_after


def _teacher(seed=0, batch_norm=False):
    torch.manual_seed(seed)
    model = create_model("cnn", num_classes=4, in_shape=(1, 8, 8), widths=[4, 8], hidden=16)
    if not batch_norm:
        return model.eval()
    # Give the BatchNorm layers the running statistics of some input distribution, as after training
    # (momentum None: the exact average over the batches).
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None
    with torch.no_grad():
        model.train()
        for _ in range(5):
            model(torch.randn(32, 1, 8, 8) * 2 + 0.5)
    return model.eval()


def _student(seed=1):
    torch.manual_seed(seed)
    return create_model("mlp", num_classes=4, in_shape=(1, 8, 8), hidden=[16])


def _val(n=40):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(n, 1, 8, 8, generator=g)
    return Split(x, (x.mean((1, 2, 3)) > 0).long())


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(a, model):
    return all(torch.equal(v, model.state_dict()[k]) for k, v in a.items())


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 8, 8), (1, 7, 9), (1, 40), (2, 13), (10,)])
def test_generator_output_matches_the_teachers_input_spec(shape):
    g = Generator(shape, latent_dim=12, base=8)
    x = g(torch.randn(5, 12))
    assert x.shape == (5, *shape)
    if len(shape) > 1:  # the last BatchNorm standardises every channel over the batch
        assert torch.allclose(x.transpose(0, 1).reshape(shape[0], -1).mean(1), torch.zeros(shape[0]), atol=1e-5)


def test_dafl_losses_match_hand_computation():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.5]])
    features = torch.tensor([[1.0, -2.0], [0.5, 0.0]])
    got = dafl_losses(logits, features)

    def softmax(row):
        e = [math.exp(v) for v in row]
        return [v / sum(e) for v in e]
    p = [softmax(r) for r in logits.tolist()]
    one_hot = -(math.log(p[0][0]) + math.log(p[1][1])) / 2  # CE against each row's argmax
    activation = -(1.0 + 2.0 + 0.5 + 0.0) / 4
    mean = [(a + b) / 2 for a, b in zip(*p)]
    info = sum(m * math.log(m) for m in mean)  # −H(mean prediction)
    assert got["one_hot"].item() == pytest.approx(one_hot, rel=1e-6)
    assert got["activation"].item() == pytest.approx(activation)
    assert got["info_entropy"].item() == pytest.approx(info, rel=1e-6)


def test_dafl_trains_generator_and_student_only_and_resumes_exactly(tmp_path):
    teacher = _teacher()
    t_before = _state(teacher)
    val = _val()
    # Bit-exact resume is a CPU promise: some CUDA kernels (atomic adds in backward passes) vary in the last bits.
    cfg = TrainConfig(epochs=2, batch_size=16, device="cpu")

    def run(out, stop=None):
        torch.manual_seed(5)
        source = DAFLBatches(teacher, (1, 8, 8), steps_per_epoch=3, batch_size=16, latent_dim=8, base=8, lr=0.01)
        student = _student()
        tr = Trainer(student, [(1.0, build_loss("kd", {"temperature": 1.0}))], cfg, out_dir=out, label="dafl",
                     teacher=teacher, batches=source, progress=False)
        return student, source, (stop_after(tr, stop) if stop else tr)

    student, source, tr = run(tmp_path / "full")
    g_before, s_before = _state(source.generator), _state(student)
    res = tr.fit(None, val)
    assert _same(t_before, teacher)  # the teacher is frozen
    assert not _same(g_before, source.generator) and not _same(s_before, student)
    assert {"source/one_hot", "source/activation", "source/info_entropy"} <= set(res.history[0])
    assert not any("generator" in k for k in student.state_dict())  # the generator is not part of the student
    saved = load_tensors(tmp_path / "full" / "last.safetensors")
    assert any(k.startswith("source.generator.") for k in saved)
    assert any(k.startswith("source_optim.generator.") for k in saved)

    _, _, tr = run(tmp_path / "part", stop=1)
    with pytest.raises(Stop):
        tr.fit(None, val)
    student2, source2, tr = run(tmp_path / "part")
    res2 = tr.fit(None, val)
    assert [r["train_loss"] for r in res2.history] == [r["train_loss"] for r in res.history]
    assert _same(student.state_dict(), student2) and _same(source.generator.state_dict(), source2.generator)


def test_batch_source_excludes_transfer_and_mixup(tmp_path):
    source = DAFLBatches(_teacher(), (1, 8, 8), steps_per_epoch=1, batch_size=4, base=8)
    with pytest.raises(TrainingError, match="makes every training batch itself"):
        Trainer(_student(), [(1.0, build_loss("kd", {}))], TrainConfig(), out_dir=tmp_path, label="s",
                teacher=_teacher(), batches=source, mixup=MixupConfig(), progress=False)
    with pytest.raises(TrainingError, match="no training data"):
        Trainer(_student(), [(1.0, build_loss("ce", {}))], TrainConfig(), out_dir=tmp_path, label="s",
                progress=False).fit(None, _val())


def test_bn_statistics_and_image_priors_match_hand_computation():
    bn = nn.BatchNorm2d(2).eval()
    bn.running_mean.copy_(torch.tensor([0.5, -1.0]))
    bn.running_var.copy_(torch.tensor([2.0, 0.5]))
    model = nn.Sequential(nn.Identity(), bn)
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 0.0], [1.0, -1.0]]],
                      [[[0.0, 1.0], [1.0, 0.0]], [[2.0, 2.0], [-2.0, 0.0]]]])  # (2, 2, 2, 2)
    with BNStatistics(model) as stats:
        model(x)
        (r,) = stats.take()
    values = [[v for b in range(2) for v in x[b, c].flatten().tolist()] for c in range(2)]
    mean = [sum(v) / len(v) for v in values]
    var = [sum((a - m) ** 2 for a in v) / len(v) for v, m in zip(values, mean)]
    hand = (math.sqrt((mean[0] - 0.5) ** 2 + (mean[1] + 1.0) ** 2)
            + math.sqrt((var[0] - 2.0) ** 2 + (var[1] - 0.5) ** 2))
    assert r.item() == pytest.approx(hand, rel=1e-6)

    img = torch.tensor([[[[0.0, 1.0], [3.0, 2.0]]]])  # one 2x2 image
    tv_l1, tv_l2 = image_priors(img)
    # right: (−1, 1); down: (−3, −1); diagonal ↗: x[1,0] − x[0,1] = 2; diagonal ↘: x[0,0] − x[1,1] = −2
    assert tv_l1.item() == pytest.approx((1 + 1) / 2 + (3 + 1) / 2 + 2 + 2)
    assert tv_l2.item() == pytest.approx(math.sqrt(2) + math.sqrt(10) + 2 + 2)
    signal = torch.tensor([[[0.0, 3.0, 1.0]]])
    assert image_priors(signal)[1].item() == pytest.approx(math.sqrt(9 + 4))

    logits = torch.tensor([[1.0, 0.0]])
    parts = inversion_losses(logits, torch.tensor([1]), img, [torch.tensor(2.0), torch.tensor(3.0)], bn_weight=0.5,
                             first_bn_multiplier=10.0, tv_l1=0.1, tv_l2=0.01, l2=0.2)
    ce = -math.log(math.exp(0.0) / (math.exp(1.0) + 1.0))
    norm = math.sqrt(0 + 1 + 9 + 4)
    hand_total = ce + 0.5 * (10 * 2.0 + 3.0) + 0.1 * tv_l1.item() + 0.01 * tv_l2.item() + 0.2 * norm
    assert parts["total"].item() == pytest.approx(hand_total, rel=1e-6)


def test_deep_inversion_fits_the_bn_statistics_and_trains_a_student(tmp_path):
    teacher = _teacher(batch_norm=True)
    before = _state(teacher)
    targets = torch.tensor([0, 1, 2, 3] * 4)

    def bn_loss(x):
        with BNStatistics(teacher) as stats, torch.no_grad():
            logits = teacher(x)
            return sum(stats.take()).item(), F.cross_entropy(logits, targets).item()
    torch.manual_seed(0)
    start = bn_loss(torch.randn(16, 1, 8, 8))
    torch.manual_seed(0)
    x = invert_batch(teacher, targets, (1, 8, 8), iterations=60, lr=0.1, bn_weight=1.0, jitter=1)
    end = bn_loss(x)
    assert x.shape == (16, 1, 8, 8) and not x.requires_grad
    assert end[0] < 0.1 * start[0] and end[1] < start[1]  # statistics matched, moving towards the targets
    assert _same(before, teacher)

    rng = torch.get_rng_state()
    synth = deep_inversion(teacher, (1, 8, 8), 12, batch_size=8, iterations=5, seed=1)
    assert torch.equal(rng, torch.get_rng_state())  # the global RNG is left alone
    assert synth.x.shape == (12, 1, 8, 8) and sorted(synth.y.tolist()) == sorted([0, 1, 2, 3] * 3)
    student = _student()
    s_before = _state(student)
    Trainer(student, [(1.0, build_loss("kd", {}))], TrainConfig(epochs=1, batch_size=8), out_dir=tmp_path, label="s",
            teacher=teacher, progress=False).fit(synth, _val())
    assert not _same(s_before, student) and _same(before, teacher)
    with pytest.raises(TinyKDError, match="needs a teacher with BatchNorm"):
        BNStatistics(_student())


def test_save_grid_writes_png_for_images_and_signals(tmp_path):
    for name, x in (("img.png", torch.randn(10, 1, 8, 8)), ("rgb.png", torch.rand(3, 3, 6, 6)),
                    ("sig.png", torch.randn(5, 1, 40))):
        path = save_grid(x, tmp_path / name, labels=list(range(len(x))), ncol=4, title="synthetic")
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(TinyKDError, match="no samples"):
        save_grid(torch.empty(0, 1, 4, 4), tmp_path / "none.png")


def test_generator_learning_rate_schedule_and_hidden_bn_epsilon():
    teacher = create_model("lenet5", num_classes=10, in_shape=(1, 28, 28))
    src = DAFLBatches(teacher, (1, 28, 28), steps_per_epoch=10, batch_size=4, base=8, lr=0.2,
                      lr_schedule="cosine", total_steps=40)
    # cosine over 40 steps, from the trainer's (epoch from 1, step from 0): 0.2 · ½(1 + cos(π t / 40))
    for epoch, step, t in [(1, 0, 0), (2, 0, 10), (3, 0, 20), (4, 9, 39)]:
        assert src.lr_at(epoch, step) == pytest.approx(0.2 * 0.5 * (1 + math.cos(math.pi * t / 40)))
    assert src.lr_at(3, 0) == pytest.approx(0.1)
    src.next_batch(3, 0)
    assert src.optimizer.param_groups[0]["lr"] == pytest.approx(0.1)
    flat = DAFLBatches(teacher, (1, 28, 28), steps_per_epoch=10, batch_size=4, base=8, lr=0.2)
    assert flat.lr_at(1, 0) == flat.lr_at(9, 9) == 0.2
    with pytest.raises(TinyKDError, match="total_steps"):
        DAFLBatches(teacher, (1, 28, 28), lr_schedule="cosine")
    with pytest.raises(TinyKDError, match="schedule"):
        DAFLBatches(teacher, (1, 28, 28), lr_schedule="linear", total_steps=5)
    # the two hidden BatchNorms use the authors' epsilon 0.8; the first and the output BN the default
    eps = [m.eps for m in Generator((1, 28, 28), base=8).modules() if isinstance(m, nn.BatchNorm2d)]
    assert eps == [1e-5, 0.8, 0.8, 1e-5]


def test_dafl_adversarial_term_matches_hand_computation_and_moves_only_the_generator(tmp_path):
    teacher, student = _teacher(), _student()
    source = DAFLBatches(teacher, (1, 8, 8), steps_per_epoch=2, batch_size=8, latent_dim=8, base=8, lr=0.01,
                         adversarial=1.0)
    x = torch.randn(6, 1, 8, 8)
    with pytest.raises(TinyKDError, match="needs the student"):
        source.disagreement(x, teacher(x))
    source.bind(student)
    student.train()
    with torch.no_grad():
        t, s = teacher(x), student(x)
    expected = sum(sum(abs(a - b) for a, b in zip(pt, ps))
                   for pt, ps in zip(F.softmax(t, 1).tolist(), F.softmax(s, 1).tolist())) / len(x)
    assert source.disagreement(x, t).item() == pytest.approx(expected, rel=1e-5)
    assert student.training  # evaluated in eval mode, mode restored

    # G's step: the generator moves, neither the student nor the teacher does, and no gradient is left on them.
    s_before, t_before, g_before = _state(student), _state(teacher), _state(source.generator)
    source.next_batch(1, 0)
    assert "disagreement" in source.parts and 0 <= source.parts["disagreement"] <= 2
    assert _same(s_before, student) and _same(t_before, teacher) and not _same(g_before, source.generator)
    assert all(p.grad is None for p in [*student.parameters(), *teacher.parameters()])

    # With the adversarial weight, G's gradient is DAFL's minus the disagreement's (same G, same z).
    torch.manual_seed(0)
    gen = Generator((1, 8, 8), latent_dim=8, base=8)
    z = torch.randn(8, 8)
    grads = {}
    for weight in (0.0, 1.0):
        src = DAFLBatches(teacher, (1, 8, 8), batch_size=8, latent_dim=8, generator=gen, adversarial=weight)
        src.bind(student)
        xg = gen(z)
        logits, feats = src.teacher_outputs(xg)
        loss = sum(src.weights[k] * v for k, v in dafl_losses(logits, feats).items())
        if weight:
            loss = loss - src.disagreement(xg, logits)
        grads[weight] = torch.autograd.grad(loss, gen.l1.weight)[0]
    xg = gen(z)
    logits, _ = source.teacher_outputs(xg)
    g_adv = torch.autograd.grad(source.disagreement(xg, logits), gen.l1.weight)[0]
    assert torch.allclose(grads[1.0], grads[0.0] - g_adv, atol=1e-6)

    # The trainer binds the student it trains.
    student2 = _student()
    src = DAFLBatches(teacher, (1, 8, 8), steps_per_epoch=2, batch_size=8, latent_dim=8, base=8, adversarial=0.5)
    Trainer(student2, [(1.0, build_loss("kd", {"temperature": 1.0}))], TrainConfig(epochs=1, batch_size=8),
            out_dir=tmp_path, label="adv", teacher=teacher, batches=src, progress=False).fit(None, _val())
    assert src.student is student2
    with pytest.raises(TinyKDError, match="adversarial"):
        DAFLBatches(teacher, (1, 8, 8), adversarial=-1.0)


def test_dafl_rejects_a_negative_jitter():
    with pytest.raises(TinyKDError, match="jitter"):
        DAFLBatches(_teacher(), (1, 8, 8), jitter=-1)
