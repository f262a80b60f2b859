"""Several frozen teachers, possibly of different architectures, as one teacher (the scheme: schemes/multiteacher.py).

``TeacherEnsemble`` is both an ``nn.Module`` and a ``TeacherSource``: per sample it weights its teachers (equally,
by fixed weights, by their confidence, or by how well each predicts the sample's label) and mixes their
predictions into one set of logits, so every response term (kd, dkd, ...) learns from the mixture unchanged.
Teacher k's layers are at ``teachers.{k}.<path>``, so feature terms address any teacher.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import TinyKDError
from ..types import Batch, Outputs
from .capture import FeatureCapture, _first_tensor
from .sources import TeacherRun, TeacherSource

# A pseudo feature path: asking a TeacherEnsemble for it yields the per-sample teacher weights, (B, K).
WEIGHTS = "ensemble_weights"
WEIGHTINGS = ("mean", "entropy", "confidence", "label")


def _shape_str(shape: torch.Size) -> str:
    """A logits shape with its batch dimension written B, as the feature terms write shapes: (B, 10)."""
    return "(" + ", ".join(["B", *map(str, shape[1:])]) + ")"


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
            raise TinyKDError(f"the teachers' logits differ in shape: {[_shape_str(z.shape) for z in logits]}",
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
