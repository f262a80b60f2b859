"""Training on a CUDA GPU (``train.device``) computes what training on the CPU computes, and hands the models back on
the CPU. These tests run where torch sees a GPU and are skipped elsewhere (CI has none)."""
import copy

import pytest
import torch
from torch import nn

import tinykd.distill.schemes  # noqa: F401  (registers the scheme terms)
from tinykd.data.spec import Split
from tinykd.distill.cache import TeacherCache
from tinykd.distill.capture import Outputs, forward_with_features
from tinykd.distill.losses import build_loss
from tinykd.distill.losses.base import LOSSES, Batch, SetupContext
from tinykd.distill.schemes.datafree import DAFLBatches, deep_inversion
from tinykd.distill.schemes.multiteacher import TeacherEnsemble
from tinykd.distill.trainer import Trainer
from tinykd.io import load_tensors
from tinykd.models import create_model
from tinykd.recipe import MixupConfig, TrainConfig

from interrupt import Stop, stop_after

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
SHAPE = (1, 8, 8)
# Terms that take a single teacher; the scheme terms with their own models (peers, exits, ensembles) are below.
# terms of CNN pairs (the transformer terms, token_models_only, need BERT-style encoders)
SINGLE = sorted(n for n, c in LOSSES.items()
                if c.needs_teacher and n != "multi_hint" and not getattr(c, "token_models_only", False))
FEATURE = {"ab", "at", "catkd", "cc", "crd", "fitnet", "fsp", "gram", "hidden_cosine", "hidden_mse", "ickd", "nst", "pkt",
           "rkd", "sp", "vid"}
RANDOM = {"crd"}  # draws its negatives with the device's own generator


@pytest.fixture(autouse=True)
def _exact_float32():
    """cuDNN and cuBLAS may use TF32 for float32 by default; the comparisons below want float32 arithmetic."""
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def _data(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *SHAPE, generator=g)
    y = (x.mean((1, 2, 3)) > 0).long() + 2 * (x[:, 0, :4].mean((1, 2)) > 0).long()
    return Split(x[:192], y[:192]), Split(x[192:], y[192:])


def _cnn(widths, seed, hidden=16):
    torch.manual_seed(seed)
    return create_model("cnn", num_classes=4, in_shape=SHAPE, widths=widths, hidden=hidden)


def _params(name):
    params = {"pairs": "auto"} if name in FEATURE else {}
    if name == "crd":
        params.update(nce_k=32, feat_dim=16)
    if name == "ft":  # the factor loss from the first step (the default first trains the paraphraser alone)
        params.update(paraphraser_epochs=0)
    return params


def _pair(name):
    """A student and a wider teacher (FSP compares the matrices entry by entry: the same widths there; catkd's
    class activation maps need the classifier to read the last map, hence no hidden layer)."""
    hidden = 0 if name == "catkd" else 16
    return _cnn([4, 8], 0, hidden), _cnn([4, 8] if name == "fsp" else [8, 16], 1, hidden)


def _devices(*modules):
    return {p.device.type for m in modules for p in list(m.parameters()) + list(m.buffers())}


@pytest.mark.parametrize("name", SINGLE)
def test_every_term_gives_the_cpu_value_on_the_gpu(name):
    train, _ = _data()
    student, teacher = (m.eval() for m in _pair(name))
    x, y = train.x[:16], train.y[:16]
    batch = Batch(x, y, torch.arange(16))
    term = build_loss(name, _params(name))
    with torch.no_grad():
        s_ex, t_ex = Outputs(student(x)), Outputs(teacher(x))
    torch.manual_seed(0)
    term.setup(SetupContext(student, teacher, s_ex, t_ex, batch, len(train), 4))
    term.eval()

    def value(dev):
        s, t, tm = (copy.deepcopy(m).to(dev) for m in (student, teacher, term))
        b = batch.to(torch.device(dev))
        out_s = forward_with_features(s, b.x, tm.student_paths, role="student")
        with torch.no_grad():
            out_t = forward_with_features(t, b.x, tm.teacher_paths, role="teacher")
        v = tm(out_s, out_t, b)
        v.backward()
        grads = [p.grad for p in s.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
        assert all(p.grad is None for p in t.parameters())
        return v.detach().cpu()

    cpu, gpu = value("cpu"), value("cuda")
    assert torch.isfinite(gpu)
    if name not in RANDOM:
        torch.testing.assert_close(gpu, cpu, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", SINGLE)
def test_every_term_trains_on_the_gpu_and_hands_the_models_back(tmp_path, name):
    train, val = _data()
    student, teacher = _pair(name)
    teacher.eval().requires_grad_(False)
    start = copy.deepcopy(student.state_dict())
    terms = [(1.0, build_loss("ce", {})), (1.0, build_loss(name, _params(name)))]
    res = Trainer(student, terms, TrainConfig(epochs=2, batch_size=32, device="cuda"), out_dir=tmp_path, label="s",
                  teacher=teacher, progress=False).fit(train, val)
    assert all(torch.isfinite(torch.tensor(r["train_loss"])) for r in res.history)
    assert _devices(student, teacher, *(t for _, t in terms)) == {"cpu"}
    assert any(not torch.equal(v, student.state_dict()[k]) for k, v in start.items())
    assert {v.device.type for v in load_tensors(tmp_path / "last.safetensors").values()} == {"cpu"}


def _mlp(seed=0, dropout=0.0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 48), nn.ReLU(), nn.Dropout(dropout), nn.Linear(48, 4))


def test_a_gpu_run_follows_the_cpu_run(tmp_path):
    """KD from a teacher cache, with mixup and shifted batches: the batches are made on the CPU either way, so
    the GPU run sees the same batches and ends with the same weights, up to float rounding."""
    train, val = _data()
    teacher = _mlp(1).eval().requires_grad_(False)
    runs = {}
    for dev in ("cpu", "cuda"):
        student = _mlp(0)
        cache = TeacherCache(teacher, tmp_path / f"cache-{dev}")
        cfg = TrainConfig(epochs=3, batch_size=32, optimizer="sgd", lr=0.05, shift=1, device=dev)
        res = Trainer(student, [(1.0, build_loss("kd", {"temperature": 4.0}))], cfg, out_dir=tmp_path / dev, label=dev,
                      teacher=cache, progress=False, mixup=MixupConfig(alpha=0.4, ratio=0.5)).fit(train, val)
        runs[dev] = (res.history, student.state_dict())
        assert _devices(student, teacher) == {"cpu"}
    for a, b in zip(runs["cpu"][0], runs["cuda"][0]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["val_accuracy"] == pytest.approx(b["val_accuracy"], abs=1 / 64 + 1e-6)
    for k, v in runs["cpu"][1].items():
        torch.testing.assert_close(runs["cuda"][1][k], v, rtol=1e-3, atol=1e-4)


def test_resume_on_the_gpu_reproduces_the_uninterrupted_run(tmp_path):
    """Dropout draws from the GPU's generator: its state is checkpointed with the CPU's."""
    train, val = _data()
    cfg = TrainConfig(epochs=4, batch_size=32, device="cuda")
    full = _mlp(dropout=0.3)
    ref = Trainer(full, [(1.0, build_loss("ce", {}))], cfg, out_dir=tmp_path / "full", label="s",
                  progress=False).fit(train, val)
    part = _mlp(dropout=0.3)
    tr = stop_after(Trainer(part, [(1.0, build_loss("ce", {}))], cfg, out_dir=tmp_path / "part", label="s",
                            progress=False), 2)
    with pytest.raises(Stop):
        tr.fit(train, val)
    assert _devices(part) == {"cpu"}  # handed back even when training stops with an error
    assert "rng.cuda" in load_tensors(tmp_path / "part" / "last.safetensors")
    resumed = _mlp(dropout=0.3)
    res = Trainer(resumed, [(1.0, build_loss("ce", {}))], cfg, out_dir=tmp_path / "part", label="s",
                  progress=False).fit(train, val)
    assert [r["train_loss"] for r in res.history] == [r["train_loss"] for r in ref.history]
    for k, v in full.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k


def test_ensemble_teacher_and_data_free_generator_on_the_gpu(tmp_path):
    train, val = _data()
    teachers = [_cnn([8, 16], 1).eval(), _cnn([4, 8], 2).eval()]
    ensemble = TeacherEnsemble(teachers, weights="confidence")
    student = _cnn([4, 8], 0)
    Trainer(student, [(1.0, build_loss("kd", {}))], TrainConfig(epochs=1, batch_size=32, device="cuda"),
            out_dir=tmp_path / "ens", label="s", teacher=ensemble, progress=False).fit(train, val)
    assert _devices(student, ensemble) == {"cpu"}

    teacher = _cnn([8, 16], 1).eval().requires_grad_(False)
    torch.manual_seed(0)
    source = DAFLBatches(teacher, SHAPE, steps_per_epoch=3, batch_size=16, base=8, adversarial=1.0, jitter=1)
    student = _cnn([4, 8], 0)
    res = Trainer(student, [(1.0, build_loss("kd", {}))], TrainConfig(epochs=2, batch_size=16, device="cuda"),
                  out_dir=tmp_path / "dafl", label="s", teacher=teacher, batches=source, progress=False).fit(None, val)
    assert all(torch.isfinite(torch.tensor(r["source/generator"])) for r in res.history)
    assert _devices(student, teacher, source) == {"cpu"}

    teacher.cuda()
    synth = deep_inversion(teacher, SHAPE, 8, batch_size=8, iterations=5)
    assert synth.x.device.type == "cpu" and synth.x.shape == (8, *SHAPE) and torch.isfinite(synth.x).all()
