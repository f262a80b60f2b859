"""Offline distillation (Hinton et al. 2015), the default scheme: the trained, frozen teacher teaches the student;
with ``distill.cache`` its outputs are served from the teacher-output cache (distill/cache.py)."""
from __future__ import annotations

from torch import nn

from .base import Prepared, Scheme, SchemeReport
from .registry import register_scheme


@register_scheme
class Offline(Scheme):
    """The teacher teaches the student; every loss term may read both models' layers."""

    name = "offline"
    checked_paths = ("student", "teacher")
    preflight_setup = True

    def prepare(self, teacher: nn.Module, student: nn.Module) -> Prepared:
        return self.cached(teacher), None, self.ctx.bundle.train

    @classmethod
    def report(cls, facts: dict) -> SchemeReport:
        out = super().report(facts)
        out.shown = "cache_stats" in facts  # a plain offline run needs no Scheme section
        return out
