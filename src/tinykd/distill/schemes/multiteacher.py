"""Multi-teacher distillation: several frozen teachers, possibly of different architectures, teach one student.

``TeacherEnsemble`` is both an ``nn.Module`` and a ``TeacherSource``: per sample it weights its teachers (equally,
by fixed weights, by their confidence, or by how well each predicts the sample's label) and mixes their
predictions into one set of logits, so every response term (kd, dkd, ...) learns from the mixture unchanged.
Teacher k's layers are at ``teachers.{k}.<path>``, so feature terms address any teacher; ``multi_hint`` matches
one student layer to a layer of every teacher through one adapter per teacher.
"""
from __future__ import annotations

from ..ensemble import WEIGHTINGS, WEIGHTS, TeacherEnsemble, entropy  # noqa: F401  (the scheme's teacher)
from ..losses.multiteacher import MultiHint, MultiHintParams  # noqa: F401  (the scheme's term)
