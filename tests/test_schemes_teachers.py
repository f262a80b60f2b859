"""Schemes with pre-trained teachers: the teacher-output cache, multi-teacher ensembles, teacher-assistant chains."""
import io
import math

import pytest
import torch
import torch.nn.functional as F
from rich.console import Console

from tinykd.data.spec import Split
from tinykd.distill.losses import build_loss
from tinykd.distill.losses.base import Batch
from tinykd.distill.schemes import (WEIGHTS, TeacherCache, TeacherEnsemble, assistant_kwargs, distill_chain,
                                    teacher_assistant_chain)
from tinykd.distill.trainer import Trainer
from tinykd.errors import TinyKDError
from tinykd.models import count_params, create_model
from tinykd.recipe import MixupConfig, TrainConfig


def _data(n=160, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=g)
    y = (x.mean((1, 2, 3)) > 0).long() + 2 * (x[:, 0, :4, :4].mean((1, 2)) > 0).long()
    cut = n * 4 // 5
    return Split(x[:cut], y[:cut]), Split(x[cut:], y[cut:])


def _cnn(seed=0, widths=(4, 8)):
    torch.manual_seed(seed)
    return create_model("cnn", num_classes=4, in_shape=(1, 8, 8), widths=list(widths), hidden=16)


def _mlp(seed=0):
    torch.manual_seed(seed)
    return create_model("mlp", num_classes=4, in_shape=(1, 8, 8), hidden=[16])


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


CFG = TrainConfig(epochs=2, batch_size=32)


class _Counter:
    """Counts the teacher's forward passes, per training epoch of the trainers it watches."""

    def __init__(self, module):
        self.calls = 0
        module.register_forward_hook(lambda *_: setattr(self, "calls", self.calls + 1))

    def per_epoch(self, trainer):
        counts = []
        run = trainer._epoch

        def epoch(e, *args):
            before = self.calls
            row = run(e, *args)
            counts.append(self.calls - before)
            return row
        trainer._epoch = epoch
        return counts


# ----- cache --------------------------------------------------------------------------------------
def _kd_hint():
    return [(1.0, build_loss("kd", {})), (1.0, build_loss("fitnet", {"student": "layers.0", "teacher": "head.relu"}))]


def test_cache_serves_teacher_outputs_once_per_sample_across_epochs_and_runs(tmp_path):
    train, val = _data()
    teacher = _cnn(1).eval()
    count = _Counter(teacher)
    cache = TeacherCache(teacher, tmp_path / "cache", preprocessing={"normalize": "none"})
    tr = Trainer(_mlp(), _kd_hint(), CFG, out_dir=tmp_path / "s1", label="s", teacher=cache, progress=False)
    per_epoch = count.per_epoch(tr)
    tr.fit(train, val)
    assert per_epoch[0] >= 1 and per_epoch[1] == 0  # epoch 2 is served from the store
    # Each sample once (the terms' setup asks for a few samples' logits before their features).
    assert len(train) <= cache.stats["computed"] <= len(train) + 8 and cache.stats["live"] == 0
    # The stored logits and features are the teacher's.
    batch = Batch(train.x[:10], train.y[:10], torch.arange(10))
    served = cache.outputs(batch, ["head.relu"])
    with torch.no_grad():
        live = teacher(train.x[:10])
    assert torch.allclose(served.logits, live, atol=1e-6)
    assert served.features["head.relu"].shape == (10, 16)
    # A second run (new student, new trainer) computes nothing, not even for the terms' setup.
    before = count.calls
    cache2 = TeacherCache(teacher, tmp_path / "cache", preprocessing={"normalize": "none"})
    Trainer(_mlp(1), _kd_hint(), CFG, out_dir=tmp_path / "s2", label="s", teacher=cache2, progress=False).fit(train, val)
    assert count.calls == before and cache2.stats["computed"] == 0 and cache2.stats["hits"] > 2 * len(train)
    assert len(list((tmp_path / "cache").iterdir())) == 1


def test_cache_log_line_reads_as_a_plan_when_empty_and_as_reuse_when_filled(tmp_path):
    train, _ = _data()
    teacher = _cnn(1).eval()
    said = io.StringIO()
    TeacherCache(teacher, tmp_path / "cache").prepare(train, Console(file=said, width=400))
    assert (f"empty; the first epoch computes and stores the teacher's outputs for all {len(train)} training "
            "samples") in said.getvalue() and f"0/{len(train)}" not in said.getvalue()
    from tinykd.distill.cache import cache_state
    assert cache_state(57000, 57000) == ("the teacher's outputs for all 57,000 training samples stored by an "
                                         "earlier run, served from it")
    assert cache_state(1000, 57000) == ("1,000 of 57,000 training samples stored by an earlier run; the first "
                                        "epoch computes the other 56,000")


@pytest.mark.parametrize("change", ["teacher weights", "data", "preprocessing"])
def test_cache_is_invalidated_when_teacher_data_or_preprocessing_change(tmp_path, change):
    train, val = _data()
    teacher = _cnn(1).eval()
    count = _Counter(teacher)
    cfg = TrainConfig(epochs=1, batch_size=64)
    TeacherCache(teacher, tmp_path / "c").prepare(train, Console(quiet=True))  # only keys; nothing computed
    first = TeacherCache(teacher, tmp_path / "c")
    Trainer(_mlp(), [(1.0, build_loss("kd", {}))], cfg, out_dir=tmp_path / "a", label="s", teacher=first,
            progress=False).fit(train, val)
    old_folder = first.folder
    prep = None
    if change == "teacher weights":
        with torch.no_grad():
            teacher.head.fc.bias.add_(0.5)
    elif change == "data":
        train = Split(train.x.clone(), train.y)
        train.x[0, 0, 0, 0] += 1.0
    else:
        prep = {"mean": 0.1}
    before = count.calls
    second = TeacherCache(teacher, tmp_path / "c", preprocessing=prep)
    Trainer(_mlp(), [(1.0, build_loss("kd", {}))], cfg, out_dir=tmp_path / "b", label="s", teacher=second,
            progress=False).fit(train, val)
    assert second.folder != old_folder and not old_folder.exists()  # stale outputs are removed
    assert count.calls > before and second.stats["computed"] >= len(train)
    if change == "teacher weights":  # and the new outputs are the changed teacher's
        batch = Batch(train.x[:4], train.y[:4], torch.arange(4))
        with torch.no_grad():
            assert torch.allclose(second.outputs(batch).logits, teacher(train.x[:4]), atol=1e-6)


def test_cache_runs_mixed_samples_live_and_says_so_once(tmp_path):
    train, val = _data()
    teacher = _cnn(1).eval()
    count = _Counter(teacher)
    out = io.StringIO()
    cache = TeacherCache(teacher, tmp_path / "c")
    tr = Trainer(_mlp(), [(1.0, build_loss("kd", {}))], TrainConfig(epochs=2, batch_size=32), out_dir=tmp_path / "s",
                 label="s", teacher=cache, mixup=MixupConfig(alpha=1.0, ratio=0.5), progress=False,
                 console=Console(file=out, width=200))
    per_epoch = count.per_epoch(tr)
    tr.fit(train, val)
    steps = math.ceil(len(train) / 32)
    assert per_epoch[1] == steps  # epoch 2: one live pass per batch, for its mixed samples only
    assert cache.stats["live"] == 2 * sum(round(0.5 * min(32, len(train) - i * 32)) for i in range(steps))
    assert out.getvalue().count("no dataset index") == 1


def test_cache_rejects_unknown_dtype(tmp_path):
    with pytest.raises(TinyKDError, match="float32 or float16"):
        TeacherCache(_cnn(), tmp_path, dtype="int8")


# ----- multi-teacher ------------------------------------------------------------------------------
def _softmax(row, t=1.0):
    e = [math.exp(v / t) for v in row]
    return [v / sum(e) for v in e]


def test_ensemble_weights_and_mixture_match_hand_computation():
    z = torch.tensor([[[2.0, 0.0, -1.0], [0.1, 0.2, 0.3]],      # teacher 0, samples 0..1
                      [[0.5, 0.5, 0.0], [3.0, -1.0, 0.0]]])     # teacher 1
    y = torch.tensor([0, -1])
    dummy = [torch.nn.Identity(), torch.nn.Identity()]
    probs = [[_softmax(z[k, b].tolist()) for b in range(2)] for k in range(2)]
    ent = [[-sum(p * math.log(p) for p in probs[k][b]) for k in range(2)] for b in range(2)]
    by_entropy = [_softmax([-h for h in ent[b]]) for b in range(2)]

    assert torch.allclose(TeacherEnsemble(dummy).teacher_weights(z, y), torch.full((2, 2), 0.5))
    assert torch.allclose(TeacherEnsemble(dummy, weights=[3, 1]).teacher_weights(z, y), torch.tensor([[0.75, 0.25]] * 2))
    assert torch.allclose(TeacherEnsemble(dummy, weights="entropy").teacher_weights(z, y), torch.tensor(by_entropy), atol=1e-6)
    conf = [_softmax([max(probs[k][b]) for k in range(2)]) for b in range(2)]
    assert torch.allclose(TeacherEnsemble(dummy, weights="confidence").teacher_weights(z, y), torch.tensor(conf), atol=1e-6)
    # CA-MKD on the labelled sample: w_k = (1 − softmax_k(CE_k)) / (K − 1); the unlabelled one falls back to entropy.
    ce = [-math.log(probs[k][0][0]) for k in range(2)]
    ca = [(1 - s) / 1 for s in _softmax(ce)]
    got = TeacherEnsemble(dummy, weights="label").teacher_weights(z, y)
    assert torch.allclose(got, torch.tensor([ca, by_entropy[1]]), atol=1e-6)
    # "probs": softmax(mixed / T) is the weighted mean of the teachers' softened probabilities.
    ens = TeacherEnsemble(dummy, weights=[3, 1], temperature=2.0)
    w = ens.teacher_weights(z, y)
    mixed = F.softmax(ens.mix(z, w) / 2.0, dim=1)
    hand = [[0.75 * a + 0.25 * b for a, b in zip(_softmax(z[0, s].tolist(), 2.0), _softmax(z[1, s].tolist(), 2.0))]
            for s in range(2)]
    assert torch.allclose(mixed, torch.tensor(hand), atol=1e-6)
    logit_mix = TeacherEnsemble(dummy, weights=[3, 1], combine="logits").mix(z, w)
    assert torch.allclose(logit_mix, 0.75 * z[0] + 0.25 * z[1])
    with pytest.raises(TinyKDError, match="unknown teacher weighting"):
        TeacherEnsemble(dummy, weights="votes")
    with pytest.raises(TinyKDError, match="2 non-negative numbers"):
        TeacherEnsemble(dummy, weights=[1, 2, 3])


def test_heterogeneous_teachers_teach_logits_and_features_through_one_adapter_each(tmp_path):
    train, val = _data()
    teachers = [_cnn(1).eval(), _mlp(2).eval(), _cnn(3, widths=(8, 8)).eval()]
    before = [_state(t) for t in teachers]
    ens = TeacherEnsemble(teachers, weights="label")
    student = _mlp(4)
    s_before = _state(student)
    hint = build_loss("multi_hint", {"student": "layers.0",
                                     "teachers": ["teachers.0.features.1", "teachers.1.layers.0", "teachers.2.head.relu"]})
    count = _Counter(teachers[0])
    tr = Trainer(student, [(1.0, build_loss("kd", {})), (0.5, hint)], CFG, out_dir=tmp_path / "s", label="s",
                 teacher=TeacherCache(ens, tmp_path / "c"), progress=False)
    per_epoch = count.per_epoch(tr)
    res = tr.fit(train, val)
    assert per_epoch[1] == 0  # the ensemble's outputs, per-sample weights included, are cached as one teacher
    assert all(_same(b, t.state_dict()) for b, t in zip(before, teachers))  # teachers frozen
    assert not _same(s_before, student.state_dict())
    assert len(hint.adapters) == 3 and all(p.grad is not None for p in hint.adapters.parameters())
    assert not any("adapter" in k for k in student.state_dict())
    assert {f"loss/multi_hint.teacher{i}" for i in range(3)} <= set(res.history[0])
    # Per-sample weights are a distribution over the teachers.
    out = ens.outputs(Batch(val.x, val.y, torch.arange(len(val))), [WEIGHTS])
    w = out.features[WEIGHTS]
    assert w.shape == (len(val), 3) and torch.allclose(w.sum(1), torch.ones(len(val)))


def test_multi_hint_paths_address_the_ensembles_teachers(tmp_path):
    train, val = _data()
    hint = build_loss("multi_hint", {"student": "layers.0", "teachers": ["teachers.0.head.relu"], "weights": "mean"})
    with pytest.raises(TinyKDError, match="the teacher has no module at path 'teachers.0.head.relu'"):
        Trainer(_mlp(), [(1.0, hint)], CFG, out_dir=tmp_path, label="s", teacher=_cnn(), progress=False).fit(train, val)


# ----- teacher-assistant chain --------------------------------------------------------------------
def test_assistant_size_is_the_geometric_mean_of_teacher_and_student(tmp_path):
    base = {"widths": [2, 4], "hidden": 16}
    student_p = count_params(create_model("cnn", num_classes=4, in_shape=(1, 8, 8), **base))
    teacher_p = count_params(create_model("resnet8", num_classes=4, in_shape=(1, 8, 8)))
    (one,) = assistant_kwargs("cnn", base, width_arg="widths", num_classes=4, in_shape=(1, 8, 8),
                              teacher_params=teacher_p, student_params=student_p)
    p = count_params(create_model("cnn", num_classes=4, in_shape=(1, 8, 8), **one))
    target = math.sqrt(student_p * teacher_p)
    assert abs(math.log(p / target)) < math.log(1.25) and student_p < p < teacher_p
    two = assistant_kwargs("cnn", base, width_arg="widths", num_classes=4, in_shape=(1, 8, 8),
                           teacher_params=teacher_p, student_params=student_p, count=2)
    sizes = [count_params(create_model("cnn", num_classes=4, in_shape=(1, 8, 8), **kw)) for kw in two]
    assert teacher_p > sizes[0] > sizes[1] > student_p  # largest first
    with pytest.raises(TinyKDError, match="width argument 'width'"):
        assistant_kwargs("cnn", base, width_arg="width", num_classes=4, in_shape=(1, 8, 8),
                         teacher_params=teacher_p, student_params=student_p)


class _Stop(Exception):
    pass


def test_chain_runs_stages_in_order_and_resumes_in_the_middle(tmp_path, monkeypatch):
    train, val = _data()
    order = []
    init = Trainer.__init__

    def spy(self, model, terms, cfg, **kw):
        order.append((kw["label"], kw.get("teacher") is not None))
        init(self, model, terms, cfg, **kw)
    monkeypatch.setattr(Trainer, "__init__", spy)
    log = Trainer._log

    def stop_in_student(self, row):
        log(self, row)
        if self.label == "student" and row["epoch"] == 1:
            raise _Stop
    monkeypatch.setattr(Trainer, "_log", stop_in_student)

    def models():
        return [_cnn(1, (8, 16)), _cnn(2, (4, 8)), _mlp(3)]
    teacher, assistant, student = models()
    with pytest.raises(_Stop):
        teacher_assistant_chain(teacher, [assistant], student, train, val, CFG, out_dir=tmp_path, teacher_trained=False)
    assert order == [("teacher", False), ("assistant1", True), ("student", True)]
    assert (tmp_path / "stage2-student" / "last.json").is_file()

    monkeypatch.setattr(Trainer, "_log", log)
    order.clear()
    teacher, assistant, student = models()
    rows = teacher_assistant_chain(teacher, [assistant], student, train, val, CFG, out_dir=tmp_path,
                                   teacher_trained=False)
    assert order == [("teacher", False), ("assistant1", True), ("student", True)]
    assert [r.label for r in rows] == ["teacher", "assistant1", "student"]
    assert [r.teacher for r in rows] == [None, "teacher", "assistant1"]
    assert [r.reused for r in rows] == [True, True, False]  # finished stages reused, the student resumed
    assert rows[2].epochs == 2 and rows[2].params == count_params(student)
    assert {"stage", "label", "teacher", "params", "best_val_accuracy", "out_dir"} <= set(rows[0].row())


def test_chain_with_a_trained_teacher_and_errors(tmp_path):
    train, val = _data()
    teacher = _cnn(1)
    Trainer(teacher, [(1.0, build_loss("ce", {}))], TrainConfig(epochs=1), out_dir=tmp_path / "t", label="t",
            progress=False).fit(train, val)
    frozen = _state(teacher)
    rows = distill_chain([("t", teacher), ("s", _mlp())], train, val, TrainConfig(epochs=1), out_dir=tmp_path / "c",
                         train_first=False)
    assert rows[0].epochs == 0 and rows[1].teacher == "t" and _same(frozen, teacher.state_dict())
    with pytest.raises(TinyKDError, match="at least one student"):
        distill_chain([("t", teacher)], train, val, CFG, out_dir=tmp_path)
    with pytest.raises(TinyKDError, match="unique"):
        distill_chain([("a", teacher), ("a", _mlp())], train, val, CFG, out_dir=tmp_path)
