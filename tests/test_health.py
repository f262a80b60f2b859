"""Dead ReLU units: the probe against units built to be dead or alive, and the trainer's warning."""
import torch
from rich.console import Console
from torch import nn

from tinykd.data.spec import Split
from tinykd.distill.health import dead_units, dead_warning
from tinykd.distill.losses import build_loss
from tinykd.distill.trainer import Trainer
from tinykd.recipe import TrainConfig


def _set(linear: nn.Module, weight: float, bias: list[float]) -> None:
    with torch.no_grad():
        linear.weight.fill_(weight)
        linear.bias.copy_(torch.tensor(bias))


def test_linear_units_with_negative_bias_and_no_weights_are_dead():
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2))
    # Zero weights: each unit outputs relu(bias) for every input, so the sign of its bias decides.
    _set(model[0], 0.0, [-1, -1, 1, 1, 1, -1])
    _set(model[2], 0.0, [1, -1, 1, 1, -1])
    assert dead_units(model, torch.randn(50, 4)) == {"1": (3, 6), "3": (2, 5)}


def test_a_unit_alive_for_one_input_at_one_position_is_alive_across_batches():
    conv = nn.Conv2d(1, 4, 3, padding=1)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, 1, 1] = 1.0  # channel 0 sees its own pixel: positive only where the pixel exceeds 0.5
        conv.bias.copy_(torch.tensor([-0.5, 1.0, -1.0, -1.0]))
    model = nn.Sequential(conv, nn.ReLU())
    x = torch.zeros(7, 1, 8, 8)
    x[6, 0, 4, 4] = 1.0  # the last input, one pixel: channel 0 fires there and nowhere else
    for batch_size in (2, 3, 512):  # the input that keeps channel 0 alive is in the last, partial batch
        assert dead_units(model, x, batch_size=batch_size) == {"1": (2, 4)}
    assert dead_units(model, x[:6]) == {"1": (3, 4)}


class _Reused(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.relu = nn.Linear(3, 4), nn.Linear(4, 5), nn.ReLU()

    def forward(self, x):
        return self.relu(self.b(self.relu(self.a(x))))


def test_a_relu_module_called_twice_is_judged_per_call_and_the_training_flag_is_kept():
    model = _Reused()
    _set(model.a, 0.0, [1, -1, -1, 1])
    _set(model.b, 0.0, [-1, -1, -1, 1, 1])
    model.train()
    assert dead_units(model, torch.randn(10, 3)) == {"relu (call 1)": (2, 4), "relu (call 2)": (3, 5)}
    assert model.training


class _Scalar(nn.Module):
    """One ReLU unit whose output per input is a scalar (shape (batch,))."""

    def __init__(self, bias: float):
        super().__init__()
        self.bias, self.relu = bias, nn.ReLU()

    def forward(self, x):
        return self.relu(x.sum(1) * 0 + self.bias)


def test_a_relu_with_one_value_per_input_is_one_unit():
    assert dead_units(_Scalar(-1.0), torch.randn(5, 3)) == {"relu": (1, 1)}
    assert dead_units(_Scalar(1.0), torch.randn(5, 3)) == {"relu": (0, 1)}


def test_warning_names_layers_at_a_quarter_dead_or_more():
    assert dead_warning({"a": (1, 8), "b": (0, 16)}, 512, 1) is None
    assert dead_warning({"tiny": (3, 4)}, 512, 1) is None  # too narrow to judge
    message = dead_warning({"a": (2, 8), "b": (402, 800), "c": (199, 800)}, 512, 3)
    assert "2 of 8 units of 'a'" in message and "402 of 800 units of 'b'" in message and "'c'" not in message
    assert "after epoch 3" in message and "train.warmup_epochs" in message


def _split(n=256):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 8, generator=g)
    return Split(x, (x[:, 0] > 0).long())


def _fit(model, tmp_path, epochs=2) -> str:
    console = Console(record=True, width=300)
    Trainer(model, [(1.0, build_loss("ce", {}))], TrainConfig(epochs=epochs, batch_size=32, lr=0.01), out_dir=tmp_path,
            label="m", console=console).fit(_split(), _split(64))
    return console.export_text()


def test_trainer_warns_once_when_a_layer_loses_its_units(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    with torch.no_grad():
        model[0].bias[:8] = -1e3  # half the hidden units can never fire: dead from the start
    text = _fit(model, tmp_path, epochs=3)
    assert text.count("dead ReLUs") == 1
    assert "8 of 16 units of '1'" in text and "after epoch 1" in text and "train.warmup_epochs" in text


def test_trainer_says_nothing_about_a_healthy_student(tmp_path):
    torch.manual_seed(0)
    assert "dead ReLUs" not in _fit(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2)), tmp_path)


def test_the_finding_is_kept_in_the_history_of_its_epoch(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    with torch.no_grad():
        model[0].bias[:8] = -1e3
    res = Trainer(model, [(1.0, build_loss("ce", {}))], TrainConfig(epochs=3, batch_size=32, lr=0.01),
                  out_dir=tmp_path, label="m", console=Console(quiet=True)).fit(_split(), _split(64))
    flagged = [r for r in res.history if r.get("dead_units")]
    assert [r["epoch"] for r in flagged] == [1]
    assert "8 of 16 units of '1'" in flagged[0]["dead_units"]
