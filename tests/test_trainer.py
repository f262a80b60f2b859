"""The training loop: exact resume, NaN guard, checkpoints that never run code."""
import os
import pickle

import pytest
import torch
from rich.console import Console
from torch import nn

from tinykd.data.spec import Split
from tinykd.distill.losses import build_loss
from tinykd.distill.trainer import Trainer, resolve_device
from tinykd.errors import CheckpointError, TrainingError
from tinykd.io import load_state_dict, load_weights, save_tensors
from tinykd.recipe import TrainConfig

from interrupt import Stop, stop_after


def _data(n=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 4, 4, generator=g)
    y = (x.flatten(1).sum(1) > 0).long() + 2 * (x[:, 0, 0, 0] > 0).long()
    cut = n * 4 // 5
    return Split(x[:cut], y[:cut]), Split(x[cut:], y[cut:])


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 4))


def test_resume_reproduces_uninterrupted_run(tmp_path):
    train, val = _data()
    teacher = _mlp()
    Trainer(teacher, [(1.0, build_loss("ce", {}))], TrainConfig(epochs=3, batch_size=32), out_dir=tmp_path / "t",
            label="teacher", progress=False).fit(train, val)
    teacher.eval()
    cfg = TrainConfig(epochs=4, batch_size=32, optimizer="sgd", lr=0.05, warmup_epochs=1)

    def kd():
        return [(1.0, build_loss("kd", {"temperature": 4.0}))]
    full = _mlp()
    ref = Trainer(full, kd(), cfg, out_dir=tmp_path / "full", label="s", teacher=teacher, progress=False).fit(train, val)

    part = _mlp()
    tr = stop_after(Trainer(part, kd(), cfg, out_dir=tmp_path / "part", label="s", teacher=teacher, progress=False), 2)
    with pytest.raises(Stop):
        tr.fit(train, val)
    resumed = _mlp()
    res = Trainer(resumed, kd(), cfg, out_dir=tmp_path / "part", label="s", teacher=teacher, progress=False).fit(train, val)

    assert [r["epoch"] for r in res.history] == [1, 2, 3, 4]
    for a, b in zip(ref.history, res.history):
        assert a["train_loss"] == b["train_loss"] and a["val_accuracy"] == b["val_accuracy"]
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    # A finished run is reused, not retrained.
    again = Trainer(_mlp(), kd(), cfg, out_dir=tmp_path / "part", label="s", teacher=teacher, progress=False).fit(train, val)
    assert again.history == res.history


def test_training_learns(tmp_path):
    train, val = _data(600)
    model = _mlp()
    res = Trainer(model, [(1.0, build_loss("ce", {}))], TrainConfig(epochs=10, batch_size=32, lr=0.01), out_dir=tmp_path,
                  label="m", progress=False).fit(train, val)
    assert res.history[-1]["train_loss"] < res.history[0]["train_loss"]
    assert res.best_val_accuracy > 0.6  # 4 balanced-ish classes: chance is ~0.25


def test_without_validation_split_keeps_last_epoch_and_says_so(tmp_path):
    train, _ = _data()
    empty = Split(train.x[:0], train.y[:0])
    console = Console(record=True, width=200)
    model = _mlp()
    res = Trainer(model, [(1.0, build_loss("ce", {}))], TrainConfig(epochs=3, batch_size=32), out_dir=tmp_path,
                  label="m", console=console).fit(train, empty)
    assert res.best_epoch == 3 and res.best_val_accuracy != res.best_val_accuracy  # nan: nothing to validate on
    last = load_state_dict(tmp_path / "last.safetensors")
    for k, v in model.state_dict().items():
        assert torch.equal(v, last["model." + k]), k
    text = console.export_text()
    assert text.count("no validation split") == 3 and "nan" not in text


def test_nan_guard_stops_with_message_and_keeps_last_good_checkpoint(tmp_path):
    train, val = _data()
    model = _mlp()
    poisoned = Split(train.x.clone(), train.y)
    tr = Trainer(model, [(1.0, build_loss("ce", {}))], TrainConfig(epochs=3, batch_size=32), out_dir=tmp_path,
                 label="m", progress=False)
    orig_epoch = tr._epoch

    def epoch(e, data, s, t):
        if e == 2:
            poisoned.x[:] = float("nan")
        return orig_epoch(e, poisoned, s, t)
    tr._epoch = epoch
    with pytest.raises(TrainingError, match=r"loss term 'ce' became nan at epoch 2, step 1.*epoch 1\)") as info:
        tr.fit(train, val)
    assert "the training inputs hold NaN/inf" in str(info.value)  # the poisoned inputs, not the learning rate
    assert (tmp_path / "last.safetensors").is_file() and (tmp_path / "best.safetensors").is_file()


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_checkpoint_loading_refuses_code_and_explains_mismatch(tmp_path):
    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as f:
        pickle.dump({"w": _Evil()}, f)
    with pytest.raises(CheckpointError, match="refused to load"):
        load_state_dict(evil)
    good = tmp_path / "w.pt"
    torch.save(_mlp().state_dict(), good)
    state = load_state_dict(good)
    load_weights(_mlp(), state, source="w.pt")
    st = tmp_path / "w.safetensors"
    save_tensors(st, state)
    wrong = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Dropout(0.3), nn.Linear(8, 4))
    with pytest.raises(CheckpointError, match=r"3 shape mismatches \(e\.g\. 1\.bias: checkpoint \(32,\) vs model \(8,\)"):
        load_weights(wrong, load_state_dict(st), source=str(st))
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_state_dict(tmp_path / "junk.safetensors")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_state_dict(tmp_path / "nope.safetensors")


def test_teacher_needed_by_kd(tmp_path):
    with pytest.raises(TrainingError, match="need a teacher"):
        Trainer(_mlp(), [(1.0, build_loss("kd", {}))], TrainConfig(), out_dir=tmp_path, label="s", progress=False)


def test_transfer_set_and_mixup_reach_only_teacher_terms(tmp_path):
    train, val = _data()
    teacher = _mlp().eval()
    seen = {"unlabelled": 0, "mixed": 0, "total": 0}
    kd = build_loss("kd", {"temperature": 2.0, "alpha": 0.5})
    forward = kd.forward

    def spy(student, t, batch):
        seen["unlabelled"] += int((batch.y < 0).sum())
        seen["mixed"] += int((batch.index < 0).sum())
        seen["total"] += len(batch.y)
        return forward(student, t, batch)
    kd.forward = spy
    transfer = torch.randn(100, 1, 4, 4)
    from tinykd.recipe import MixupConfig
    Trainer(_mlp(), [(1.0, kd)], TrainConfig(epochs=1, batch_size=34), out_dir=tmp_path, label="s", teacher=teacher,
            progress=False, transfer=transfer, mixup=MixupConfig(alpha=1.0, ratio=0.5)).fit(train, val)
    n_batches = -(-(len(train) + 100) // 34)
    mixed = seen["mixed"]
    assert mixed == sum(round(0.5 * min(34, len(train) + 100 - i * 34)) for i in range(n_batches))
    assert seen["unlabelled"] == 100 + mixed  # transfer inputs and mixed inputs carry no label
    assert seen["total"] == len(train) + 100 + mixed
    with pytest.raises(TrainingError, match="needs a loss term that learns from the teacher"):
        Trainer(_mlp(), [(1.0, build_loss("ce", {}))], TrainConfig(), out_dir=tmp_path / "x", label="s",
                transfer=transfer, progress=False)


def test_fitnet_two_stage_trains_hints_alone_then_the_other_terms(tmp_path):
    """Romero et al. 2015: stage 1 optimises the hint loss only; stage 2 the KD loss only."""
    train, val = _data()
    teacher = _mlp()
    teacher.eval()
    terms = [(1.0, build_loss("kd", {"temperature": 4.0})),
             (1.0, build_loss("fitnet", {"pairs": [["2", "2"]], "stage1_epochs": 2}))]
    res = Trainer(_mlp(), terms, TrainConfig(epochs=4, batch_size=32), out_dir=tmp_path / "s", label="s",
                  teacher=teacher, progress=False).fit(train, val)
    stage1, stage2 = res.history[:2], res.history[2:]
    assert all(r["loss/kd"] == 0.0 and r["loss/fitnet"] > 0 for r in stage1)
    assert all(r["loss/kd"] > 0 and r["loss/fitnet"] == 0.0 for r in stage2)
    assert all(abs(r["train_loss"] - r["loss/fitnet"]) < 1e-6 for r in stage1)


def test_crd_with_mixup_ignores_synthetic_samples(tmp_path):
    """Mixed inputs have no memory-bank row (index -1): CRD learns from the real samples of each batch only."""
    from tinykd.recipe import MixupConfig
    train, val = _data()
    teacher = _mlp()
    teacher.eval()
    terms = [(1.0, build_loss("kd", {})), (0.5, build_loss("crd", {"nce_k": 16, "feat_dim": 8}))]
    res = Trainer(_mlp(), terms, TrainConfig(epochs=1, batch_size=32), out_dir=tmp_path / "s", label="s",
                  teacher=teacher, progress=False, mixup=MixupConfig(alpha=1.0, ratio=0.5)).fit(train, val)
    assert res.history[0]["loss/crd"] > 0


def test_shift_jitters_each_batch_and_the_teacher_sees_the_same_view(tmp_path):
    from tinykd.distill.schemes import TeacherCache

    train, val = _data(n=100)
    seen = {"student": [], "teacher": []}

    class Recorder(nn.Module):
        def __init__(self, role):
            super().__init__()
            self.role, self.net = role, _mlp()

        def forward(self, x):
            self.training and self.role == "student" and seen["student"].append(x.detach().cpu().clone())
            self.role == "teacher" and seen["teacher"].append(x.detach().cpu().clone())
            return self.net(x)

    teacher = Recorder("teacher").eval()
    cache = TeacherCache(teacher, tmp_path / "cache", preprocessing={"normalize": "none"})
    cfg = TrainConfig(epochs=2, batch_size=16, shift=1)
    Trainer(Recorder("student"), [(1.0, build_loss("kd", {"temperature": 2.0}))], cfg, out_dir=tmp_path / "s",
            label="student", teacher=cache, progress=False).fit(train, val)
    students = torch.cat(seen["student"])
    teachers = torch.cat(seen["teacher"][-len(seen["student"]):])
    assert torch.equal(students, teachers)  # the teacher labels exactly the shifted inputs the student saw
    assert cache.stats["live"] == 2 * len(train)  # every training batch ran live: no stale output was served
    # Each input is its training sample moved by at most one position (the border filled with the background).
    x = students[:16]
    assert not torch.equal(x, train.x[:16])
    inner_same = [any(torch.equal(x[i, 0, 1:3, 1:3], torch.roll(train.x, (dy, dx), (2, 3))[j, 0, 1:3, 1:3])
                      for j in range(len(train)) for dy in (-1, 0, 1) for dx in (-1, 0, 1)) for i in range(4)]
    assert all(inner_same)


def test_shift_on_inputs_without_spatial_axes_is_a_clear_error(tmp_path):
    train, val = _data(n=40)
    flat_train, flat_val = Split(train.x.flatten(1), train.y), Split(val.x.flatten(1), val.y)
    with pytest.raises(TrainingError, match="train.shift"):
        Trainer(nn.Sequential(nn.Linear(16, 4)), [(1.0, build_loss("ce", {}))], TrainConfig(epochs=1, shift=2),
                out_dir=tmp_path, label="m", progress=False).fit(flat_train, flat_val)


def test_resolve_device_names_and_errors(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(TrainingError, match=r"train.device is 'cuda' but torch sees no CUDA GPU") as info:
        resolve_device("cuda")
    assert "set train.device to 'auto' or 'cpu'" in str(info.value)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert resolve_device("auto") == torch.device("cuda", 0)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(TrainingError, match=r"'cuda:2' but torch sees 2 CUDA GPU\(s\): cuda:0..cuda:1"):
        resolve_device("cuda:2")


def test_a_gpu_asked_for_without_one_fails_before_training(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    train, val = _data()
    model = _mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(TrainingError, match="no CUDA GPU"):
        Trainer(model, [(1.0, build_loss("ce", {}))], TrainConfig(epochs=1, device="cuda"), out_dir=tmp_path,
                label="m", progress=False).fit(train, val)
    assert not any(tmp_path.iterdir())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_max_norm_projects_every_units_incoming_weights_into_the_ball(tmp_path):
    from tinykd.distill.trainer import apply_max_norm

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.Flatten(), nn.Linear(12, 5))
    with torch.no_grad():
        model[2].weight.mul_(10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    apply_max_norm(model, 0.5)
    for name, w in (("0.weight", model[0].weight), ("2.weight", model[2].weight)):
        old = before[name].flatten(1)
        norms = old.norm(dim=1)
        expected = old * torch.clamp(0.5 / norms, max=1.0)[:, None]  # w · min(1, r / ‖w‖), unit by unit
        torch.testing.assert_close(w.flatten(1), expected, rtol=1e-5, atol=1e-6)
        assert (w.flatten(1).norm(dim=1) <= 0.5 + 1e-5).all()
    assert torch.equal(model[2].bias, before["2.bias"])  # biases are not constrained
    # Through the trainer: after every step no unit's incoming weights are longer than the radius.
    train, val = _data()
    net = _mlp()
    Trainer(net, [(1.0, build_loss("ce", {}))], TrainConfig(epochs=2, batch_size=32, lr=0.05, max_norm=0.8),
            out_dir=tmp_path, label="m", progress=False).fit(train, val)
    for layer in (net[1], net[4]):
        assert (layer.weight.norm(dim=1) <= 0.8 + 1e-5).all()


def test_mlp_input_dropout_drops_inputs_in_training_only():
    from tinykd.models import create_model

    torch.manual_seed(0)
    model = create_model("mlp", num_classes=3, in_shape=(1, 10, 10), hidden=[], input_dropout=0.25)
    seen = []
    model.fc.register_forward_pre_hook(lambda _m, inputs: seen.append(inputs[0]))
    x = torch.ones(64, 1, 10, 10)
    model.train()(x)
    dropped = (seen[-1] == 0).float().mean().item()
    assert 0.2 < dropped < 0.3 and torch.allclose(seen[-1][seen[-1] != 0], torch.tensor(1 / 0.75))
    model.eval()(x)
    assert torch.equal(seen[-1], x.flatten(1))
    assert "input_dropout=0.25" in repr(model)
    assert "input_dropout" not in repr(create_model("mlp", num_classes=3, in_shape=(1, 10, 10)))
