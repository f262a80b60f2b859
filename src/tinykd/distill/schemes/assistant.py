"""Distillation chains: teacher → assistant(s) → student, each stage a full offline distillation.

Mirzadeh et al. (AAAI 2020), Improved Knowledge Distillation via Teacher Assistant: when the gap between teacher
and student is large, an intermediate-size assistant distilled from the teacher teaches the student better than
the teacher does. ``assistant_kwargs`` picks assistant sizes between the two (geometric interpolation of the
parameter counts, found by a width sweep of one model family); ``distill_chain`` runs the stages in order, each in
its own folder, so a finished stage is reused and an interrupted one resumes (born-again generations are a chain
of one architecture).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from torch import nn

from ...data.spec import Split
from ...errors import TinyKDError
from ...inference import predict_logits
from ...io import read_json
from ...models import count_params, create_model
from ...recipe import TrainConfig
from ..losses.base import LossTerm, build_loss
from ..trainer import Trainer

TermFactory = Callable[[], list[tuple[float, LossTerm]]]


def default_kd() -> list[tuple[float, LossTerm]]:
    """Hinton KD, T = 4, α = 0.9: the loss of every distilled stage unless told otherwise."""
    return [(1.0, build_loss("kd", {"temperature": 4.0, "alpha": 0.9}))]


@dataclass
class StageResult:
    """One stage of a chain: who learned from whom, and how well."""

    stage: int
    label: str
    teacher: str | None  # the previous stage's label; None for a stage trained on labels alone
    params: int
    best_epoch: int
    best_val_accuracy: float
    epochs: int
    reused: bool  # a finished checkpoint in the stage folder was loaded instead of training
    out_dir: Path
    model: nn.Module = field(repr=False)

    def row(self) -> dict:
        """The result as a plain dict (no model), e.g. for a table or metrics.json."""
        out = {k: v for k, v in self.__dict__.items() if k != "model"}
        out["out_dir"] = str(self.out_dir)
        return out


def _finished(folder: Path) -> bool:
    state = folder / "last.json"
    return state.is_file() and bool(read_json(state).get("finished"))


def distill_chain(models: Sequence[tuple[str, nn.Module]], train: Split, val: Split, cfg: TrainConfig, *,
                  out_dir: Path, terms: TermFactory | None = None, first_cfg: TrainConfig | None = None,
                  train_first: bool = True, seed: int = 0, console: Console | None = None,
                  progress: bool = False) -> list[StageResult]:
    """Train ``models`` in order, each taught by the one before; the first learns from the labels
    (``train_first``) or is used as given (already trained). ``terms`` makes each distilled stage's loss terms
    (fresh per stage; default kd). Stage i lives in ``out_dir/stage{i}-{label}``. One StageResult per stage."""
    if len(models) < 2:
        raise TinyKDError(f"a chain needs a teacher and at least one student, got {len(models)} models",
                          "pass [(label, teacher), (label, assistant), ..., (label, student)]")
    labels = [label for label, _ in models]
    if len(set(labels)) != len(labels):
        raise TinyKDError(f"chain stage labels must be unique, got {labels}", "name every stage differently")
    terms = terms or default_kd
    out_dir = Path(out_dir)
    results: list[StageResult] = []
    for i, (label, model) in enumerate(models):
        folder = out_dir / f"stage{i}-{label}"
        teacher = results[-1] if results else None
        if i == 0 and not train_first:
            model.eval()
            results.append(StageResult(0, label, None, count_params(model), 0, _accuracy(model, val), 0, True,
                                       folder, model))
            continue
        reused = _finished(folder)
        stage_terms = [(1.0, build_loss("ce", {}))] if teacher is None else terms()
        res = Trainer(model, stage_terms, (first_cfg or cfg) if i == 0 else cfg, out_dir=folder, label=label,
                      seed=seed, teacher=teacher.model if teacher else None, console=console,
                      progress=progress).fit(train, val)
        model.eval()
        results.append(StageResult(i, label, teacher.label if teacher else None, count_params(model), res.best_epoch,
                                   res.best_val_accuracy, len(res.history), reused, folder, model))
    return results


def _accuracy(model: nn.Module, split: Split) -> float:
    if len(split) == 0:
        return float("nan")
    return (predict_logits(model, split.x).argmax(1) == split.y).float().mean().item()


# ----- assistant sizes ----------------------------------------------------------------------------
def scale_width(value: object, scale: float) -> object:
    """A width argument times ``scale``: ints and lists of ints rounded (at least 1), floats multiplied."""
    if isinstance(value, bool):
        raise TinyKDError(f"cannot scale the width argument {value!r}", "name a numeric width argument")
    if isinstance(value, int):
        return max(1, round(value * scale))
    if isinstance(value, float):
        return value * scale
    ints = isinstance(value, (list, tuple)) and value and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    if ints:
        return [max(1, round(v * scale)) for v in value]
    raise TinyKDError(f"cannot scale the width argument {value!r}",
                      "give an int, a float multiplier or a list of ints (e.g. widths=[8, 16])")


def assistant_kwargs(model: str, kwargs: dict, *, width_arg: str, num_classes: int, in_shape: tuple[int, ...],
                     teacher_params: int, student_params: int, count: int = 1,
                     scales: Sequence[float] | None = None) -> list[dict]:
    """Keyword arguments of ``count`` assistants of family ``model``, largest first, whose parameter counts are
    closest (in log scale) to the geometric interpolation P_s^(1−i/(n+1)) · P_t^(i/(n+1)) between the student's
    and the teacher's; found by scaling ``kwargs[width_arg]`` over ``scales`` (default 1/32 … 32).

    With one assistant the target is √(P_s·P_t), the geometric mean."""
    if width_arg not in kwargs:
        raise TinyKDError(f"width argument '{width_arg}' is not in the assistant's kwargs {sorted(kwargs)}",
                          f"pass kwargs with {width_arg} set, e.g. {{'{width_arg}': ...}}")
    if not 0 < student_params < teacher_params:
        raise TinyKDError(f"an assistant fits between student and teacher only when the student is smaller "
                          f"({student_params:,} vs {teacher_params:,} parameters)", "swap teacher and student")
    scales = list(scales) if scales is not None else [2 ** (e / 8) for e in range(-40, 41)]
    sweep: dict[int, dict] = {}
    for s in scales:
        trial = {**kwargs, width_arg: scale_width(kwargs[width_arg], s)}
        n = count_params(create_model(model, num_classes=num_classes, in_shape=tuple(in_shape), **trial))
        sweep.setdefault(n, trial)
    chosen = []
    for i in range(count, 0, -1):
        f = i / (count + 1)
        target = math.exp((1 - f) * math.log(student_params) + f * math.log(teacher_params))
        best = min(sweep, key=lambda n: abs(math.log(n) - math.log(target)))
        chosen.append(sweep[best])
    return chosen


def teacher_assistant_chain(teacher: nn.Module, assistants: Sequence[nn.Module], student: nn.Module, train: Split,
                            val: Split, cfg: TrainConfig, *, out_dir: Path, teacher_trained: bool = True,
                            **kwargs) -> list[StageResult]:
    """teacher → assistant1 → … → student; ``teacher_trained`` False trains the teacher first (stage 0)."""
    models = [("teacher", teacher), *((f"assistant{i + 1}", a) for i, a in enumerate(assistants)), ("student", student)]
    return distill_chain(models, train, val, cfg, out_dir=out_dir, train_first=not teacher_trained, **kwargs)
