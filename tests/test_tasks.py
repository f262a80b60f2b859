"""The core every task plugs into: batches of named inputs with a mask, the Task protocol, and the trainer on it."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tinykd.data.spec import Split
from tinykd.distill.callbacks import Shift, default_callbacks
from tinykd.distill.losses import build_loss
from tinykd.distill.module import DistillModule
from tinykd.distill.trainer import Trainer
from tinykd.recipe import TrainConfig
from tinykd.tasks import Classification, Task, model_logits
from tinykd.types import Batch, Outputs


class BagOfTokens(nn.Module):
    """Mean of the embeddings of the real tokens: padding must change nothing."""

    def __init__(self, vocab: int = 20, dim: int = 8, classes: int = 3):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, ids, mask):
        m = mask.unsqueeze(-1).float()
        return self.head((self.embed(ids) * m).sum(1) / m.sum(1).clamp_min(1))


def token_split(n: int = 12, length: int = 10) -> Split:
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(2, length + 1, (n,), generator=g)
    mask = (torch.arange(length)[None] < lengths[:, None]).long()
    ids = torch.randint(1, 20, (n, length), generator=g) * mask
    return Split(ids, torch.randint(0, 3, (n,), generator=g), mask)


def test_batch_wraps_a_tensor_and_keeps_the_old_fields():
    x, y, i = torch.randn(4, 3), torch.arange(4), torch.arange(4)
    b = Batch(x, y, i)
    assert b.inputs.keys() == {"x"} and b.x is x and b.args() == (x,) and b.mask is None and len(b) == 4
    sub = b.take(torch.tensor([1, 3]))
    assert torch.equal(sub.x, x[[1, 3]]) and torch.equal(sub.y, y[[1, 3]])


def test_collate_cuts_token_ids_to_the_longest_sequence_of_the_batch():
    split = token_split()
    idx = torch.tensor([0, 1, 2])
    batch = Classification().collate(split, idx)
    longest = int(split.mask[idx].sum(1).max())
    assert list(batch.inputs) == ["input_ids", "attention_mask"]
    assert batch.x.shape == (3, longest) and torch.equal(batch.mask, split.mask[idx, :longest])
    assert torch.equal(batch.inputs["input_ids"], split.x[idx, :longest])


def test_padding_changes_no_prediction_and_no_loss():
    torch.manual_seed(0)
    model, task = BagOfTokens(), Classification()
    split = token_split()
    wider = Split(F.pad(split.x, (0, 7)), split.y, F.pad(split.mask, (0, 7)))  # 7 more padding positions
    assert torch.allclose(task.predict(model, split), task.predict(model, wider), atol=1e-6)
    assert task.evaluate(model, split) == task.evaluate(model, wider)


def test_reduce_is_the_mean_over_real_positions_only():
    task = Classification()
    values = torch.tensor([[1.0, 2.0, 100.0], [3.0, 100.0, 100.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert task.reduce(values, mask).item() == (1 + 2 + 3) / 3
    # per-position vectors (B, L, V): every component of a real position counts once
    vec = values.unsqueeze(-1).expand(2, 3, 4)
    assert torch.isclose(task.reduce(vec, mask), torch.tensor(2.0))
    padded = torch.cat([values, torch.full((2, 5), -7.0)], 1)
    assert task.reduce(padded, torch.cat([mask, torch.zeros(2, 5, dtype=torch.long)], 1)) == task.reduce(values, mask)
    assert task.reduce(values, None) == values.mean()


def test_model_logits_reads_tensors_tuples_dicts_and_model_outputs():
    t = torch.randn(2, 3)

    class Out:  # like a Hugging Face ModelOutput: the loss comes first, logits are named
        loss = torch.tensor(1.0)
        logits = t
    assert model_logits(t) is t and model_logits((t, 1)) is t and model_logits(Out()) is t
    assert model_logits({"loss": torch.tensor(0.0), "logits": t}) is t


def test_example_inputs_of_text_have_the_stated_length():
    from tinykd.data.spec import InputSpec
    spec = InputSpec((64,), 2, "text", vocab_size=100)
    ids, mask = Classification().example_inputs(spec, 4, length=16)
    assert ids.shape == mask.shape == (4, 16) and ids.dtype == torch.long and int(ids.max()) < 100 and mask.all()
    assert Classification().input_names(spec) == ["input_ids", "attention_mask"]
    assert Classification().example_inputs(InputSpec((1, 28, 28), 10, "image"), 2)[0].shape == (2, 1, 28, 28)


class ScaledInputs(Task):
    """A task of its own: inputs are (x, scale), the model is told the scale, and the metric counts calls."""

    name = "scaled"

    def __init__(self):
        self.evaluated = 0

    def collate(self, split, idx):
        return Batch({"x": split.x[idx], "scale": torch.full((len(idx), 1), 2.0)}, split.y[idx], idx)

    def evaluate(self, model, split):
        self.evaluated += 1
        logits = self.predict(model, split)
        return {"accuracy": (logits.argmax(1) == split.y).float().mean().item(),
                "loss": F.cross_entropy(logits, split.y).item()}


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x, scale):
        return self.fc(x * scale)


def test_the_trainer_runs_any_task(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(64, 4)
    split = Split(x, (x[:, 0] > 0).long())
    task = ScaledInputs()
    cfg = TrainConfig(epochs=3, batch_size=16, lr=0.1, optimizer="sgd")
    res = Trainer(TwoInputs(), [(1.0, build_loss("ce", {}))], cfg, out_dir=tmp_path, label="t", task=task,
                  progress=False).fit(split, split)
    assert task.evaluated == 3 and len(res.history) == 3 and res.best_val_accuracy > 0.8


def test_a_token_model_trains_with_a_teacher_on_padded_batches(tmp_path):
    torch.manual_seed(0)
    split = token_split(48)
    teacher = BagOfTokens().eval().requires_grad_(False)
    cfg = TrainConfig(epochs=2, batch_size=8, lr=0.05)
    trainer = Trainer(BagOfTokens(), [(1.0, build_loss("kd", {"temperature": 2.0, "alpha": 0.5}))], cfg,
                      out_dir=tmp_path, label="s", teacher=teacher, progress=False)
    res = trainer.fit(split, split)
    assert len(res.history) == 2 and all(r["train_loss"] == r["train_loss"] for r in res.history)
    assert "dead_units" not in res.history[0]  # the dead-unit probe takes dense inputs only


def test_callbacks_follow_the_config_and_shift_refuses_token_ids(tmp_path):
    kinds = [type(c).__name__ for c in default_callbacks(TrainConfig(shift=2, max_norm=3.0))]
    assert kinds == ["Shift", "MaxNorm", "FiniteGuard", "DeadUnitProbe"]
    assert [type(c).__name__ for c in default_callbacks(TrainConfig())] == ["FiniteGuard", "DeadUnitProbe"]
    import pytest
    from tinykd.errors import TrainingError
    with pytest.raises(TrainingError, match="token ids"):
        Trainer(BagOfTokens(), [(1.0, build_loss("ce", {}))], TrainConfig(epochs=1), out_dir=tmp_path, label="s",
                callbacks=[Shift(2)], progress=False).fit(token_split(), token_split())


def test_distill_module_holds_every_trainable_parameter():
    student = nn.Linear(4, 2)
    helper = nn.Linear(3, 3)  # a regressor of a feature term
    module = DistillModule(student, [helper])
    ids = {id(p) for p in module.parameters()}
    assert ids == {id(p) for p in [*student.parameters(), *helper.parameters()]}
    assert module.helper_params() == 12
    assert torch.equal(module(torch.ones(1, 4)), student(torch.ones(1, 4)))


def test_outputs_carry_the_mask_to_the_device():
    out = Outputs(torch.zeros(2, 3), {"a": torch.ones(2)}, torch.ones(2, 5)).to(torch.device("cpu"))
    assert out.mask.shape == (2, 5) and out.features["a"].shape == (2,)


def test_epoch_order_groups_token_ids_by_length_and_visits_every_sample_once():
    split = token_split(1000, 40)
    g = torch.Generator().manual_seed(3)
    order = Classification().epoch_order(split, g, 16)
    assert sorted(order.tolist()) == list(range(1000))
    lengths = split.mask.sum(1)[order]
    padded = sum(int(b.max()) * len(b) for b in lengths.split(16))
    shuffled = split.mask.sum(1)[torch.randperm(1000, generator=torch.Generator().manual_seed(3))]
    assert padded < 0.8 * sum(int(b.max()) * len(b) for b in shuffled.split(16))  # far less padding
    dense = Split(torch.randn(50, 3), torch.zeros(50, dtype=torch.long))
    assert torch.equal(Classification().epoch_order(dense, torch.Generator().manual_seed(1), 8),
                       torch.randperm(50, generator=torch.Generator().manual_seed(1)))  # dense: a plain permutation
