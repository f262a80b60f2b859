"""Multi-teacher distillation: several frozen teachers, possibly of different architectures, teach one student.

``TeacherEnsemble`` is both an ``nn.Module`` and a ``TeacherSource``: per sample it weights its teachers (equally,
by fixed weights, by their confidence, or by how well each predicts the sample's label) and mixes their
predictions into one set of logits, so every response term (kd, dkd, ...) learns from the mixture unchanged.
Teacher k's layers are at ``teachers.{k}.<path>``, so feature terms address any teacher; ``multi_hint`` matches
one student layer to a layer of every teacher through one adapter per teacher.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import nn

from ...errors import TinyKDError
from ..capture import FeatureCapture, Outputs, _first_tensor
from ..losses.base import Batch, LossTerm, Params, SetupContext, register_loss
from ..losses.feature import as_map, channels_first, conv1x1, feature_kind, match_spatial, shape_str
from ..sources import TeacherRun, TeacherSource

# A pseudo feature path: asking a TeacherEnsemble for it yields the per-sample teacher weights, (B, K).
WEIGHTS = "ensemble_weights"
WEIGHTINGS = ("mean", "entropy", "confidence", "label")


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of softmax(logits) over the last axis."""
    log_p = F.log_softmax(logits, dim=-1)
    return -(log_p.exp() * log_p).sum(-1)


class TeacherEnsemble(nn.Module, TeacherSource):
    """K frozen teachers (any architectures, the same classes) as one teacher.

    ``weights``, per sample over the teachers:
      * "mean": 1/K;  a list of K numbers: those, normalised;
      * "entropy": softmax_k(−H(p_k) / τ), the more certain teacher counts more;
      * "confidence": softmax_k(max_c p_k / τ);
      * "label": CA-MKD's w_k = (1 − softmax_k(CE_k)) / (K − 1) with CE_k the teacher's cross-entropy on the
        sample's label (Zhang, Chen & Wang, ICASSP 2022, Confidence-Aware Multi-teacher KD); unlabelled samples
        (label -1) fall back to "entropy".
    ``combine``: "probs" mixes probabilities at ``temperature``: the returned logits are T·log Σ_k w_k·softmax(z_k/T),
    so a kd term at the same T sees exactly the weighted mean of the teachers' softened probabilities;
    "logits" returns Σ_k w_k·z_k.
    """

    def __init__(self, teachers: Sequence[nn.Module], *, weights: str | Sequence[float] = "mean",
                 combine: Literal["probs", "logits"] = "probs", temperature: float = 4.0, tau: float = 1.0):
        nn.Module.__init__(self)
        if len(teachers) < 1:
            raise TinyKDError("a teacher ensemble needs at least one teacher", "pass a list of teacher modules")
        if isinstance(weights, str):
            if weights not in WEIGHTINGS:
                raise TinyKDError(f"unknown teacher weighting '{weights}'",
                                  f"use one of {', '.join(WEIGHTINGS)} or a list of {len(teachers)} numbers")
            fixed = None
        else:
            fixed = [float(w) for w in weights]
            if len(fixed) != len(teachers) or min(fixed) < 0 or sum(fixed) <= 0:
                raise TinyKDError(f"teacher weights {list(weights)} must be {len(teachers)} non-negative numbers "
                                  "with a positive sum", "give one weight per teacher, e.g. [0.5, 0.3, 0.2]")
        if combine not in ("probs", "logits"):
            raise TinyKDError(f"combine must be 'probs' or 'logits', got {combine!r}", "use combine='probs'")
        self.teachers = nn.ModuleList(teachers)
        self.weighting = "fixed" if fixed is not None else weights
        fixed = fixed or [1.0] * len(teachers)
        self.register_buffer("fixed", torch.tensor(fixed) / sum(fixed))
        self.combine, self.temperature, self.tau = combine, temperature, tau

    @property
    def module(self) -> nn.Module:
        return self

    def extra_repr(self) -> str:  # part of the fingerprint a teacher cache keys on
        return f"weights={self.weighting}, combine={self.combine}, temperature={self.temperature}, tau={self.tau}"

    def teacher_weights(self, logits: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Per-sample teacher weights (B, K) from the teachers' logits (K, B, C) and the labels (-1: none)."""
        k, b, _ = logits.shape
        if self.weighting in ("mean", "fixed"):
            return self.fixed.to(logits.dtype).expand(b, k)
        if self.weighting == "confidence":
            return F.softmax(F.softmax(logits, -1).amax(-1).T / self.tau, dim=1)
        by_entropy = F.softmax(-entropy(logits).T / self.tau, dim=1)
        if self.weighting == "entropy" or y is None or k == 1:
            return by_entropy
        labelled = y >= 0
        ce = torch.stack([F.cross_entropy(z, y.clamp(min=0), reduction="none") for z in logits], dim=1)  # (B, K)
        ca_mkd = (1.0 - F.softmax(ce, dim=1)) / (k - 1)
        return torch.where(labelled[:, None], ca_mkd, by_entropy)

    def mix(self, logits: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """One set of logits (B, C) from the teachers' (K, B, C) and weights (B, K)."""
        w = w.T.unsqueeze(-1)  # (K, B, 1)
        if self.combine == "logits":
            return (w * logits).sum(0)
        t = self.temperature
        return t * torch.logsumexp(torch.log(w) + F.log_softmax(logits / t, dim=-1), dim=0)

    def all_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Every teacher's logits, (K, B, C)."""
        logits = [_first_tensor(teacher(x)) for teacher in self.teachers]
        if len({z.shape for z in logits}) > 1:
            raise TinyKDError(f"the teachers' logits differ in shape: {[shape_str(z.shape) for z in logits]}",
                              "give every teacher the same num_classes")
        return torch.stack(logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The mixture without labels ('label' weighting falls back to 'entropy')."""
        logits = self.all_logits(x)
        return self.mix(logits, self.teacher_weights(logits))

    @contextmanager
    def open(self, paths: Sequence[str]) -> Iterator[TeacherRun]:
        hooked = [p for p in paths if p != WEIGHTS]
        with FeatureCapture(self, hooked, role="teacher") as cap:
            def run(batch: Batch) -> Outputs:
                cap.features = {}
                logits = self.all_logits(batch.x)
                w = self.teacher_weights(logits, batch.y)
                features = dict(cap.features)
                if WEIGHTS in paths:
                    features[WEIGHTS] = w
                return Outputs(self.mix(logits, w), features)
            yield run


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
