"""The loss-term contract: ``term(student, teacher, batch) -> scalar``, registered by name with typed params."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator
from torch import nn

from ...errors import RecipeError, closest, unknown_name
from ...types import Batch, Outputs  # Batch is defined in tinykd.types; still importable from here
from ...yamlload import short_repr


@dataclass
class SetupContext:
    """What a term may need to build its helpers: both models, example outputs (with the term's captured
    features, computed without gradients on a few training samples), and the size of the training set."""

    student: nn.Module
    teacher: nn.Module | None
    student_example: Outputs
    teacher_example: Outputs | None
    batch: Batch
    num_train: int
    num_classes: int


MAX_TEMPERATURE = 1000.0  # far above any published setting (Hinton et al. 2015 used up to 20); T² stays finite


class Params(BaseModel):
    """Base of every term's hyper-parameters: unknown keys, NaN and infinity are errors, and so is a temperature
    above MAX_TEMPERATURE (its T² scaling would overflow the loss)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @model_validator(mode="after")
    def _bounded_temperatures(self):
        for key, value in self:
            if "temperature" in key and isinstance(value, (int, float)) and value > MAX_TEMPERATURE:
                raise ValueError(f"{key} {value:g} is above {MAX_TEMPERATURE:g}: its T² scaling overflows the loss")
        return self


class LossTerm(nn.Module):
    """A weighted piece of the training loss.

    Subclasses set ``name``, ``description``, ``paper``, ``needs_teacher`` and a ``Params`` model, and
    implement ``forward``. Trainable helpers (regressors, embeddings) are submodules of the term; the
    trainer optimises them with the student and they are never exported. ``parts`` may hold named
    sub-values of the last call for logging (e.g. the soft and hard halves of Hinton KD).
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    needs_teacher: ClassVar[bool] = True
    # State kept per training sample (a memory bank, last epoch's predictions): not split over several processes.
    per_sample_state: ClassVar[bool] = False
    Params: ClassVar[type[Params]] = Params

    def __init__(self, params: Params):
        super().__init__()
        self.params = params
        self.parts: dict[str, torch.Tensor] = {}

    # Paths of submodules whose outputs the term needs, captured with forward hooks.
    student_paths: tuple[str, ...] = ()
    teacher_paths: tuple[str, ...] = ()

    def setup(self, ctx: SetupContext) -> None:
        """Called once before training, before the optimizer exists: build helpers from captured shapes here."""

    def start_epoch(self, epoch: int, epochs: int) -> None:
        """Called at the start of every epoch (1-based), e.g. for temperature curricula or two-stage schedules."""

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> torch.Tensor:
        raise NotImplementedError


# Filled by the term modules of this package, every one of which tinykd.distill.losses imports: importing any
# module of the package (this one included) registers every built-in term.
LOSSES: dict[str, type[LossTerm]] = {}


def register_loss(cls: type[LossTerm]) -> type[LossTerm]:
    """Class decorator adding a LossTerm to the registry under ``cls.name``."""
    LOSSES[cls.name] = cls
    return cls


def build_loss(name: str, params: dict, *, where: str = "distill.losses") -> LossTerm:
    """A LossTerm from its registry name and raw hyper-parameters, with recipe-style errors."""
    if name not in LOSSES:
        raise unknown_name("loss term", name, LOSSES, where=where)
    cls = LOSSES[name]
    try:
        return cls(cls.Params.model_validate(params))
    except ValidationError as err:
        lines = []
        valid = sorted(cls.Params.model_fields)
        for e in err.errors():
            key = ".".join(str(p) for p in e["loc"])
            if e["type"] == "extra_forbidden":
                guess = closest(key, valid)
                hint = f"did you mean '{guess}'? " if guess else ""
                lines.append(f"{where}.{key}: unknown hyper-parameter of '{name}' ({hint}valid: {', '.join(valid) or 'none'})")
            else:
                msg = e["msg"].removeprefix("Value error, ")
                lines.append(f"{where}{'.' + key if key else ''}: {msg} (got {short_repr(e.get('input'))})")
        raise RecipeError("invalid loss term:\n  " + "\n  ".join(lines),
                          f"see `tinykd methods` for the hyper-parameters of '{name}'") from None


def describe_losses() -> list[dict]:
    """Name, description, paper and hyper-parameters of every registered term: ``required`` (names a recipe must
    give) and ``params`` (the others, with their defaults)."""
    rows = []
    for name, cls in sorted(LOSSES.items()):
        fields = cls.Params.model_fields
        rows.append({"name": name, "description": cls.description, "paper": cls.paper,
                     "needs_teacher": cls.needs_teacher,
                     "required": [k for k, f in fields.items() if f.is_required()],
                     "params": {k: f.default for k, f in fields.items() if not f.is_required()}})
    return rows


def token_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The mean of per-token ``values`` (B, L) over the real tokens of a padded text batch (``mask`` (B, L), 1 for a
    token; padded values never reach the result, even non-finite ones); the plain mean without a mask or when the
    token count is not the text's (a feature map read as tokens)."""
    if mask is None or mask.shape != values.shape:
        return values.mean()
    return torch.where(mask > 0, values, 0.0).sum() / mask.sum().clamp_min(1)
