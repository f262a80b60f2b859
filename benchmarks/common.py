"""Shared pieces of the benchmark scripts: train one configuration, evaluate best and last, write tables."""
from __future__ import annotations

import dataclasses
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console

from tinykd.data.spec import DataBundle
from tinykd.inference import predict_logits
from tinykd.models import create_model
from tinykd.recipe import MixupConfig, TrainConfig, load_recipe
from tinykd.stages import distill, trained_weights


@dataclass
class Outcome:
    best: float  # test accuracy of the checkpoint with the best validation accuracy
    last: float  # test accuracy after the last epoch
    seconds_per_epoch: float
    helper_params: int


def test_accuracy(model: torch.nn.Module, data: DataBundle) -> float:
    return (predict_logits(model, data.test.x).argmax(1) == data.test.y).float().mean().item()


def train(model_name: str, kwargs: dict, data: DataBundle, cfg: TrainConfig, losses: list[dict], *, seed: int,
          teacher: torch.nn.Module | None = None, transfer: torch.Tensor | None = None,
          mixup: MixupConfig | None = None, console: Console | None = None,
          keep: str = "best") -> tuple[torch.nn.Module, Outcome]:
    """Train a fresh ``model_name`` with weighted loss terms through the distillation stage (``tinykd.stages.distill``,
    scheme offline; ``transfer``: unlabelled inputs the teacher labels); return it and its outcome. The returned
    model carries the weights of the best validation epoch (``keep="best"``) or of the last epoch (``keep="last"``)."""
    torch.manual_seed(seed)
    model = create_model(model_name, num_classes=data.spec.num_classes, in_shape=tuple(data.spec.shape), **kwargs)
    recipe = load_recipe({"seed": seed, "student": {"model": model_name, "kwargs": kwargs, "train": cfg.model_dump()},
                          "distill": {"losses": losses, "scratch_baseline": False,
                                      "mixup": None if mixup is None else mixup.model_dump()}})
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        res = distill(recipe, dataclasses.replace(data, unlabelled=transfer), Path(tmp), teacher, student=model,
                      console=console or Console(quiet=True), progress=False)
        elapsed = time.perf_counter() - t0
        model = res.student
        best = test_accuracy(model, data)
        best_state = {k: v.clone() for k, v in model.state_dict().items()}
        model.load_state_dict(trained_weights(res.folders["student"], "last"))
        last = test_accuracy(model, data)
        if keep == "best":
            model.load_state_dict(best_state)
    return model.eval(), Outcome(best, last, elapsed / len(res.result.history), res.helper_params)


def mean_std(values: list[float]) -> str:
    """'mean ± std' in percent (std over seeds; 0 for one seed)."""
    m = statistics.mean(values) * 100
    s = statistics.stdev(values) * 100 if len(values) > 1 else 0.0
    return f"{m:.2f} ± {s:.2f}"


def write_table(path: Path, title: str, header: list[str], rows: list[list[str]], notes: list[str]) -> str:
    """A markdown table with the command that produced it; written to ``path`` and returned."""
    lines = [f"# {title}", "", f"Command: `python {' '.join(sys.argv)}`", ""]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines += [""] + notes
    text = "\n".join(lines) + "\n"
    Path(path).write_text(text)
    return text
