"""Multi-teacher distillation: several frozen teachers, possibly of different architectures, teach one student.

``TeacherEnsemble`` is both an ``nn.Module`` and a ``TeacherSource``: per sample it weights its teachers (equally,
by fixed weights, by their confidence, or by how well each predicts the sample's label) and mixes their
predictions into one set of logits, so every response term (kd, dkd, ...) learns from the mixture unchanged.
Teacher k's layers are at ``teachers.{k}.<path>``, so feature terms address any teacher; ``multi_hint`` matches
one student layer to a layer of every teacher through one adapter per teacher. The scheme: ``MultiTeacher``.
"""
from __future__ import annotations

from torch import nn

from ...recipe import DistillConfig, ModelConfig
from ..ensemble import WEIGHTINGS, WEIGHTS, TeacherEnsemble, entropy  # noqa: F401  (the scheme's teacher)
from ..losses.multiteacher import MultiHint, MultiHintParams  # noqa: F401  (the scheme's term)
from .base import Prepared, Scheme, SchemeReport
from .registry import register_scheme


def kd_temperature(losses) -> float:
    """The temperature of the first loss term that has one (the ensemble mixes probabilities at it); else 4."""
    for l in losses:
        t = l.params().get("temperature")
        if isinstance(t, (int, float)):
            return float(t)
    return 4.0


def _weights(weights: object) -> str:
    if isinstance(weights, list):
        return "fixed " + ", ".join(f"{w:g}" for w in weights)
    return str(weights or "mean")


@register_scheme
class MultiTeacher(Scheme):
    """The teacher and ``distill.teachers`` (each trained on the labels or loaded) teach as one ensemble,
    combined per sample by ``distill.teacher_weights``."""

    name = "multi_teacher"
    phrase = "Distillation from the teacher ensemble"
    fields = ("teachers",)
    variant_words = {"teacher_": "Teacher"}

    @classmethod
    def check_chosen(cls, d: DistillConfig) -> None:
        if not d.teachers:
            raise ValueError("scheme multi_teacher needs the extra teachers in distill.teachers, e.g. "
                             "[{model: mlp, kwargs: {hidden: [256]}}]")
        super().check_chosen(d)

    @classmethod
    def check_section(cls, d: DistillConfig, chosen: bool) -> None:
        super().check_section(d, chosen)
        if isinstance(d.teacher_weights, list) and len(d.teacher_weights) != len(d.teachers) + 1:
            raise ValueError(f"teacher_weights lists {len(d.teacher_weights)} numbers for "
                             f"{len(d.teachers) + 1} teachers (the teacher and distill.teachers): give one each")

    @classmethod
    def extra_models(cls, d: DistillConfig) -> list[tuple[str, ModelConfig, bool]]:
        return [(f"distill.teachers[{i}]", cfg, True) for i, cfg in enumerate(d.teachers)]

    @classmethod
    def variant_configs(cls, d: DistillConfig) -> dict[str, ModelConfig]:
        return {f"teacher_{i}": cfg for i, cfg in enumerate(d.teachers, start=2)}

    def prepare(self, teacher: nn.Module, student: nn.Module) -> Prepared:
        ctx, d = self.ctx, self.d
        members, labels = [teacher], ["teacher"]
        for i, cfg in enumerate(d.teachers, start=2):
            label, where = f"teacher_{i}", f"distill.teachers[{i - 2}]"
            model = ctx.build(cfg.model, cfg.kwargs, where, ctx.recipe.seed + i)
            self.history += ctx.train_or_load(model, cfg, label, where)
            self.models[label] = model
            if not cfg.checkpoint:
                self.folders[label] = ctx.run_dir / label
            members.append(model)
            labels.append(label)
        temperature = kd_temperature(d.losses)
        source = TeacherEnsemble(members, weights=d.teacher_weights, temperature=temperature)
        self.facts.update({"teachers": labels, "teacher_weights": d.teacher_weights, "temperature": temperature})
        ctx.console.print(f"multi-teacher: {len(members)} teachers, weights {d.teacher_weights}")
        return self.cached(source), None, ctx.bundle.train

    @classmethod
    def report(cls, facts: dict) -> SchemeReport:
        out = super().report(facts)
        out.intro = (f"The distilled student learned from an ensemble of teachers, combined per sample "
                     f"({_weights(facts.get('teacher_weights'))} weights) into one soft target at "
                     f"T = {float(facts.get('temperature') or 0):g}.")
        out.teachers = facts.get("teachers") or []
        return out
