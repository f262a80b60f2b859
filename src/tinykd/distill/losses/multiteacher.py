"""Feature-level multi-teacher distillation: ``multi_hint`` matches one student layer to a layer of every teacher
of a ``TeacherEnsemble`` (distill/ensemble.py) through one adapter per teacher (the scheme: schemes/multiteacher.py).
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, field_validator
from torch import nn

from ...errors import TinyKDError
from ...types import Batch, Outputs
from ..ensemble import WEIGHTS, TeacherEnsemble
from .base import LossTerm, Params, SetupContext, register_loss
from .feature import as_map, channels_first, conv1x1, feature_kind, match_spatial


# ----- feature-level multi-teacher ------------------------------------------------------------------
class MultiHintParams(Params):
    student: str
    teachers: list[str] = Field(min_length=1)  # one path per teacher, inside the ensemble: teachers.{k}.<path>
    weights: list[float] | Literal["ensemble", "mean"] = "ensemble"

    @field_validator("teachers")
    @classmethod
    def _one_per_teacher(cls, paths):
        ks = [p.split(".")[1] if p.startswith("teachers.") and p.count(".") >= 2 else None for p in paths]
        if None in ks:
            raise ValueError("each path must address one teacher of the ensemble, e.g. teachers.0.layer3")
        return paths


class _Adapter(nn.Module):
    """Maps the student's feature onto one teacher's: 1×1 conv + BN between maps of the same rank, else linear
    between vectors, a map on either side being globally average-pooled to a vector first."""

    def __init__(self, s_kind: str, s: torch.Tensor, t_kind: str, t: torch.Tensor):
        super().__init__()
        self.maps = s_kind == t_kind == "map" and s.dim() == t.dim()
        if self.maps:
            bn = nn.BatchNorm1d if s.dim() == 3 else nn.BatchNorm2d
            self.net = nn.Sequential(conv1x1(s.shape[1], t.shape[1], s.dim() - 2), bn(t.shape[1]))
        else:
            self.net = nn.Linear(s.shape[1], t.shape[1])

    def forward(self, s: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(prediction, target) of the same shape."""
        if self.maps:
            return match_spatial(self.net(s), t)
        return self.net(_pool(s)), _pool(t)


def _pool(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(2).mean(-1) if x.dim() > 2 else x


@register_loss
class MultiHint(LossTerm):
    """Σ_k w_k · MSE(A_k(f_s), f_t^k): one student layer regressed onto a layer of every teacher, one adapter each."""

    name = "multi_hint"
    description = ("feature-level multi-teacher KD: one student layer matched to a layer of each teacher of a "
                   "TeacherEnsemble through one learned adapter per teacher, weighted per sample or fixed")
    paper = ("You, Xu, Xu & Tao, KDD 2017, Learning from Multiple Teacher Networks (hints from several teachers); "
             "adapters as in Romero et al. 2015, FitNets")
    Params = MultiHintParams

    def __init__(self, params: MultiHintParams):
        super().__init__(params)
        if isinstance(params.weights, list) and len(params.weights) != len(params.teachers):
            raise TinyKDError(f"multi_hint: {len(params.weights)} weights for {len(params.teachers)} teachers",
                              "give one weight per teacher path")
        self.student_paths = (params.student,)
        self.teacher_paths = tuple(params.teachers) + ((WEIGHTS,) if params.weights == "ensemble" else ())
        self.adapters = nn.ModuleList()
        self.kinds: list[tuple[str, str]] = []

    def setup(self, ctx: SetupContext) -> None:
        if not isinstance(ctx.teacher, TeacherEnsemble):
            raise TinyKDError("multi_hint needs a TeacherEnsemble as the teacher",
                              "pass teacher=TeacherEnsemble([teacher_a, teacher_b, ...])")
        s = ctx.student_example.features[self.params.student]
        s_kind = feature_kind(s.shape, channels_first(ctx.student), "student", self.params.student)
        adapters = []
        for path in self.params.teachers:
            t = ctx.teacher_example.features[path]
            k = int(path.split(".")[1])
            t_kind = feature_kind(t.shape, channels_first(ctx.teacher.teachers[k]), "teacher", path)
            self.kinds.append((s_kind, t_kind))
            # Tokens (B, T, D) are compared as (B, D, T) maps, like the map-based feature terms do.
            adapters.append(_Adapter(_as_map_kind(s_kind), as_map(s, s_kind), _as_map_kind(t_kind), as_map(t, t_kind)))
        self.adapters = nn.ModuleList(adapters)

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> torch.Tensor:
        p = self.params
        f_s = as_map(student.features[p.student], self.kinds[0][0])
        if p.weights == "ensemble":
            w = teacher.features[WEIGHTS].detach()  # (B, K) over all the ensemble's teachers
            k_index = [int(path.split(".")[1]) for path in p.teachers]
            w = w[:, k_index] / w[:, k_index].sum(1, keepdim=True)
        else:
            fixed = [1.0] * len(p.teachers) if p.weights == "mean" else p.weights
            w = f_s.new_tensor(fixed).div(sum(fixed)).expand(len(f_s), -1)
        total = f_s.new_zeros(())
        parts = {}
        for i, (path, adapter, (_, t_kind)) in enumerate(zip(p.teachers, self.adapters, self.kinds)):
            pred, f_t = adapter(f_s, as_map(teacher.features[path].detach(), t_kind))
            per_sample = (pred - f_t).pow(2).flatten(1).mean(1)  # (B,) mean squared error of each sample
            total = total + (w[:, i] * per_sample).mean()
            parts[f"teacher{i}"] = per_sample.mean().detach()
        self.parts = parts
        return total


def _as_map_kind(kind: str) -> str:
    return "map" if kind == "tokens" else kind
