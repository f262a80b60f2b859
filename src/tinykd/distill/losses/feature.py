"""Feature-based terms: the student mimics intermediate representations of the teacher.

Each term compares student and teacher features captured at module paths (see capture.py), named as one
``student``/``teacher`` pair, a list ``pairs: [[student_path, teacher_path], ...]``, or ``pairs: auto``
(stages matched by relative depth, see pairing.py). Features come in three layouts:

* maps (B, C, H, W), or (B, C, L) from 1-D convolutions;
* tokens (B, T, D), the hidden states of sequence models;
* vectors (B, D).

A 3-D feature is read as a (B, C, L) map when its network is built from nn.Conv1d and has no attention,
and as (B, T, D) tokens otherwise; map-based terms (at, nst, fsp, gram) read tokens as a (B, D, T) map,
hidden-state terms read a map as H·W tokens of C dimensions. Where a student map and a teacher map
differ in spatial size, the larger is adaptive-average-pooled to the smaller one.
"""
from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, ValidationInfo, field_validator
from pydantic import model_validator
from rich.console import Console
from torch import nn

from ...errors import TinyKDError
from ...types import Batch, Outputs
from ..capture import forward_with_features
from ..capture import resolve_module
from .base import LossTerm, Params, SetupContext, register_loss, token_mean
from .pairing import auto_pairs

console = Console(stderr=True)

Kind = Literal["map", "tokens", "vector"]


# ----- layouts ------------------------------------------------------------------------------------
def channels_first(model: nn.Module | None) -> bool:
    """Whether 3-D features of ``model`` are (B, C, L) conv maps rather than (B, T, D) tokens."""
    modules = list(model.modules()) if model is not None else []
    return (any(isinstance(m, nn.Conv1d) for m in modules)
            and not any(isinstance(m, nn.MultiheadAttention) for m in modules))


def shape_str(shape: tuple[int, ...] | torch.Size) -> str:
    """A feature shape with its batch dimension written B, e.g. (B, 16, 7, 7)."""
    return "(" + ", ".join(["B", *map(str, shape[1:])]) + ")"


def feature_kind(shape: torch.Size, conv1d: bool, role: str, path: str) -> Kind:
    """The layout of a captured feature; a TinyKDError for ranks no term can compare."""
    if len(shape) == 4 or (len(shape) == 3 and conv1d):
        return "map"
    if len(shape) == 3:
        return "tokens"
    if len(shape) == 2:
        return "vector"
    raise TinyKDError(f"the {role} feature at '{path}' has shape {shape_str(shape)}; feature terms compare "
                      "(B, D) vectors, (B, T, D) tokens or (B, C, H, W) / (B, C, L) maps",
                      "pick another layer (`tinykd layers MODEL` lists the output shapes)")


def as_map(x: torch.Tensor, kind: Kind) -> torch.Tensor:
    """(B, C, *spatial): tokens (B, T, D) become a (B, D, T) map."""
    return x.transpose(1, 2) if kind == "tokens" else x


def as_tokens(x: torch.Tensor, kind: Kind) -> torch.Tensor:
    """(B, T, D): a map (B, C, *spatial) becomes its spatial positions as tokens, a vector one token."""
    if kind == "map":
        return x.flatten(2).transpose(1, 2)
    return x.unsqueeze(1) if kind == "vector" else x


def match_spatial(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Maps (B, ·, *spatial) of the same spatial rank, the larger adaptive-average-pooled to the smaller size."""
    size = tuple(min(m, n) for m, n in zip(a.shape[2:], b.shape[2:]))
    pool = F.adaptive_avg_pool1d if len(size) == 1 else F.adaptive_avg_pool2d
    return tuple(x if tuple(x.shape[2:]) == size else pool(x, size) for x in (a, b))


def conv1x1(c_in: int, c_out: int, rank: int) -> nn.Conv1d | nn.Conv2d:
    """A 1×1 convolution over maps with ``rank`` spatial dimensions (no bias: a BN or the target supplies shifts)."""
    return (nn.Conv1d if rank == 1 else nn.Conv2d)(c_in, c_out, 1, bias=False)


def example_features(ctx: SetupContext, student_paths: tuple[str, ...],
                     teacher_paths: tuple[str, ...]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Student and teacher features at the paths on ``ctx.batch``, recomputed when the examples lack them
    (paths chosen by ``pairs: auto`` are only known inside setup)."""
    out = []
    for model, example, paths, role in ((ctx.student, ctx.student_example, student_paths, "student"),
                                        (ctx.teacher, ctx.teacher_example, teacher_paths, "teacher")):
        if example is not None and all(p in example.features for p in paths):
            out.append(example.features)
            continue
        was_training = model.training
        model.eval()  # the shape pass must not update BatchNorm statistics
        try:
            with torch.no_grad():
                out.append(forward_with_features(model, ctx.batch, paths, role=role).features)
        finally:
            model.train(was_training)
    return out[0], out[1]


# ----- pairs of layers ----------------------------------------------------------------------------
class PairParams(Params):
    """Which layers to compare: ``student`` and ``teacher`` paths, ``pairs: [[s, t], ...]`` or ``pairs: auto``."""

    student: str | None = None
    teacher: str | None = None
    pairs: list[tuple[str, str]] | str | None = Field(None, validate_default=True)  # a list, or "auto"
    num_pairs: int | None = Field(None, ge=1)  # how many stages pairs: auto pairs (default: all it can)

    @field_validator("pairs")
    @classmethod
    def _one_way(cls, pairs, info: ValidationInfo):
        single = (info.data.get("student"), info.data.get("teacher"))
        if isinstance(pairs, str) and pairs != "auto":
            raise ValueError("must be 'auto' or a list of [student_path, teacher_path] pairs")
        if pairs is not None and single != (None, None):
            raise ValueError("give either student/teacher paths or pairs, not both")
        if pairs is None and single != (None, None) and None in single:
            missing = "teacher" if single[1] is None else "student"
            raise ValueError(f"'{missing}' is missing: give both a student and a teacher path")
        if pairs is None and None in single:
            raise ValueError("name the layers to compare: student and teacher paths, "
                             "pairs: [[student_path, teacher_path], ...], or pairs: auto")
        if pairs == []:
            raise ValueError("pairs is empty; list at least one [student_path, teacher_path]")
        return pairs

    @field_validator("num_pairs")
    @classmethod
    def _auto_only(cls, num_pairs, info: ValidationInfo):
        if num_pairs is not None and info.data.get("pairs") != "auto":
            raise ValueError("num_pairs only applies with pairs: auto")
        return num_pairs


class FeatureTerm(LossTerm):
    """Base of the terms that compare student and teacher features at (student path, teacher path) pairs.

    ``setup`` resolves ``pairs: auto``, reads each pair's layouts from example features and calls ``build``,
    where a subclass checks the shapes and creates its helpers.
    """

    Params = PairParams

    def __init__(self, params: PairParams):
        super().__init__(params)
        self.pairs: list[tuple[str, str]] = []
        self.kinds: list[tuple[Kind, Kind]] = []  # (student, teacher) layout of each pair, set by setup
        if params.pairs != "auto":
            self.use_pairs(params.pairs or [(params.student, params.teacher)])

    def use_pairs(self, pairs: list[tuple[str, str]]) -> None:
        """Compare these (student path, teacher path) pairs and capture their features."""
        self.pairs = [tuple(p) for p in pairs]
        self.student_paths = tuple(dict.fromkeys(s for s, _ in self.pairs))
        self.teacher_paths = tuple(dict.fromkeys(t for _, t in self.pairs))
        unique = len(self.student_paths) == len(self.pairs)
        self.part_names = [s if unique else f"{s}>{t}" for s, t in self.pairs]

    def describe(self) -> str:
        """The compared pairs, e.g. ``at: features.0→layer2, features.1→layer3``."""
        return f"{self.name}: " + ", ".join(f"{s}→{t}" for s, t in self.pairs)

    def setup(self, ctx: SetupContext) -> None:
        if self.params.pairs == "auto":
            self.use_pairs(auto_pairs(ctx.student, ctx.teacher, tuple(ctx.batch.x.shape[1:]), self.params.num_pairs))
            console.print(f"[dim]pairs: auto chose {self.describe()}[/]")
        s_feats, t_feats = example_features(ctx, self.student_paths, self.teacher_paths)
        conv1d = channels_first(ctx.student), channels_first(ctx.teacher)
        self.kinds = [(feature_kind(s_feats[s].shape, conv1d[0], "student", s),
                       feature_kind(t_feats[t].shape, conv1d[1], "teacher", t)) for s, t in self.pairs]
        self.build([(s_feats[s], t_feats[t]) for s, t in self.pairs])

    def build(self, examples: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Check each pair's example (student, teacher) features and create helpers; by default maps are required."""
        for i, (s_x, t_x) in enumerate(examples):
            self.require_maps(i, s_x, t_x)

    def mismatch(self, i: int, s_shape: torch.Size, t_shape: torch.Size, what: str, fix: str) -> TinyKDError:
        """A TinyKDError naming pair ``i``'s paths and both shapes."""
        s, t = self.pairs[i]
        return TinyKDError(f"{self.name}: student '{s}' {shape_str(s_shape)} and teacher '{t}' "
                           f"{shape_str(t_shape)} {what}", fix)

    def require_maps(self, i: int, s_x: torch.Tensor, t_x: torch.Tensor) -> None:
        """Map-based terms need a spatial (or token) axis on both sides, of the same rank."""
        s_kind, t_kind = self.kinds[i]
        if "vector" in (s_kind, t_kind):
            raise self.mismatch(i, s_x.shape, t_x.shape, f"cannot be compared: {self.name} needs feature maps "
                                "(B, C, H, W) or tokens (B, T, D), not (B, D) vectors",
                                "pair earlier layers (before flatten/pooling), or use hidden_mse / fitnet for vectors")
        if s_x.dim() != t_x.dim():
            raise self.mismatch(i, s_x.shape, t_x.shape, "have different spatial ranks (2-D maps vs 1-D maps/tokens)",
                                "pair layers of the same kind in both networks")

    def features(self, student: Outputs, teacher: Outputs):
        """(student feature, teacher feature detached, student kind, teacher kind) of each pair."""
        if len(self.kinds) != len(self.pairs) or not self.pairs:
            raise RuntimeError(f"{self.name}: setup() must run before the term is called")
        for (s, t), (s_kind, t_kind) in zip(self.pairs, self.kinds):
            yield student.features[s], teacher.features[t].detach(), s_kind, t_kind

    def total(self, losses: list[torch.Tensor]) -> torch.Tensor:
        """Sum of per-pair losses, each logged under its student path when there are several pairs."""
        if len(losses) > 1:
            self.parts = {name: loss.detach() for name, loss in zip(self.part_names, losses)}
        return torch.stack(losses).sum()


# ----- FitNets ------------------------------------------------------------------------------------
class FitNetParams(PairParams):
    stage1_epochs: int = Field(0, ge=0)  # > 0: the paper's two stages (hints only, then the other terms only)


@register_loss
class FitNet(FeatureTerm):
    """Hint loss ‖u_h − r(v_g)‖² through a learned regressor r from the student's guided layer to the teacher's hint.

    Normalisation: F.mse_loss, the mean over all B·C·H·W elements, instead of the paper's ½·sum, so the
    value does not grow with batch or map size (the ½ is absorbed by the term's weight); summed over pairs.
    """

    name = "fitnet"
    description = "FitNets hints: MSE between a teacher layer and a student layer through a learned 1×1 conv/linear regressor"
    paper = "Romero et al. 2015, FitNets: Hints for Thin Deep Nets (ICLR), Eq. 3"
    Params = FitNetParams

    def __init__(self, params: FitNetParams):
        super().__init__(params)
        self.regressors = nn.ModuleList()
        # While True the trainer trains with this term alone (stage 1); before the first epoch counts as stage 1.
        self.exclusive = params.stage1_epochs > 0

    def build(self, examples: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        # The paper's regressor is a convolution whose kernel makes the student's map the teacher's size;
        # here it is a 1×1 conv + BN, and a spatial mismatch is pooled away instead (the larger map is
        # adaptive-average-pooled to the smaller size).
        regressors = []
        for i, (v_g, u_h) in enumerate(examples):
            kinds = self.kinds[i]
            if kinds == ("map", "map") and v_g.dim() == u_h.dim():
                bn = nn.BatchNorm1d if v_g.dim() == 3 else nn.BatchNorm2d
                regressors.append(nn.Sequential(conv1x1(v_g.shape[1], u_h.shape[1], v_g.dim() - 2), bn(u_h.shape[1])))
            elif kinds == ("tokens", "tokens"):
                if v_g.shape[1] != u_h.shape[1]:
                    raise self.mismatch(i, v_g.shape, u_h.shape, "have different token counts",
                                        "pair hidden states of the same sequence length")
                regressors.append(nn.Linear(v_g.shape[2], u_h.shape[2]))
            elif kinds == ("vector", "vector"):
                regressors.append(nn.Linear(v_g.shape[1], u_h.shape[1]))
            else:
                raise self.mismatch(i, v_g.shape, u_h.shape, f"cannot be regressed onto each other ({kinds[0]} vs "
                                    f"{kinds[1]}): fitnet maps 2-D maps onto 2-D maps and 1-D onto 1-D (1×1 conv), "
                                    "tokens onto tokens and vectors onto vectors (linear)",
                                    "pair layers of the same kind, or use hidden_mse, which reads maps as tokens")
        self.regressors = nn.ModuleList(regressors)

    def start_epoch(self, epoch: int, epochs: int) -> None:
        self.exclusive = epoch <= self.params.stage1_epochs

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> torch.Tensor:
        if self.params.stage1_epochs and not self.exclusive:
            return student.logits.sum() * 0.0  # stage 2 of the paper trains with KD alone
        losses = []
        for (v_g, u_h, s_kind, _), regressor in zip(self.features(student, teacher), self.regressors):
            if s_kind == "map":
                v_g, u_h = match_spatial(v_g, u_h)
            losses.append(F.mse_loss(regressor(v_g), u_h))  # Eq. 3: ‖u_h(x) − r(v_g(x))‖², mean over elements
        return self.total(losses)


# ----- Attention transfer -------------------------------------------------------------------------
class ATParams(PairParams):
    p: float = Field(2.0, gt=0.0)  # F(A) = Σ_c |A_c|^p


def attention_map(a: torch.Tensor, p: float) -> torch.Tensor:
    """Activation-based spatial attention F(A) = Σ_c |A_c|^p: (B, C, *spatial) -> (B, 1, *spatial)."""
    return a.abs().pow(p).sum(1, keepdim=True)


@register_loss
class AttentionTransfer(FeatureTerm):
    """½ Σ_pairs mean((Q_s/‖Q_s‖₂ − Q_t/‖Q_t‖₂)²) with Q = vec(Σ_c |A_c|^p); the weight is β of the paper's β/2.

    The paper (Eq. 2) writes β/2 · Σ_j ‖Q_s/‖Q_s‖₂ − Q_t/‖Q_t‖₂‖_p; the per-pair value here is the authors'
    reference implementation, ``(at(x) - at(y)).pow(2).mean()`` over batch and positions, and the ½ is the
    paper's. Their code (cifar.py) adds ``beta * sum(loss_groups)`` without the ½, and β = 1000 was tuned
    there: an ``at`` weight of 2000 in tinykd equals their β = 1000, a weight of 1000 is half that strength.
    Attention maps of different spatial sizes are adaptive-average-pooled to the smaller.
    """

    name = "at"
    description = "attention transfer: match L2-normalised spatial attention maps Σ_c |A_c|^p of layer pairs"
    paper = "Zagoruyko & Komodakis 2017, Paying More Attention to Attention (ICLR), §3.1 and Eq. 2"
    Params = ATParams

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> torch.Tensor:
        losses = []
        for a_s, a_t, s_kind, t_kind in self.features(student, teacher):
            q_s, q_t = match_spatial(attention_map(as_map(a_s, s_kind), self.params.p),
                                     attention_map(as_map(a_t, t_kind), self.params.p))
            q_s, q_t = F.normalize(q_s.flatten(1), dim=1), F.normalize(q_t.flatten(1), dim=1)  # (B, H·W)
            losses.append((q_s - q_t).pow(2).mean())
        return 0.5 * self.total(losses)  # β/2 · Σ_j, with β the term's weight


# ----- Neuron selectivity transfer ----------------------------------------------------------------
class NSTParams(PairParams):
    degree: int = Field(2, ge=1)  # polynomial kernel k(x, y) = (xᵀy + c)^d; d = 1, c = 0 is the linear kernel
    c: float = Field(0.0, ge=0.0)


def poly_mmd2(f_s: torch.Tensor, f_t: torch.Tensor, degree: int, c: float) -> torch.Tensor:
    """Squared MMD per sample between the row sets of (B, N, D) and (B, M, D) with k(x, y) = (xᵀy + c)^d."""
    def k(a, b):  # mean of k over all (row of a, row of b) pairs: (B,)
        return (a @ b.transpose(1, 2) + c).pow(degree).mean((1, 2))
    return k(f_t, f_t) + k(f_s, f_s) - 2 * k(f_s, f_t)


@register_loss
class NeuronSelectivityTransfer(FeatureTerm):
    """½ · MMD²(student channels, teacher channels), each channel's H·W activations one L2-normalised sample.

    Each sample's MMD² (the kernel form of the MMD, §3.2) compares the distribution of the C_s student
    and C_t teacher channel vectors, so channel counts may differ; averaged over the batch and summed
    over pairs, times ½ so the weight is the paper's λ (L = H(y, p_S) + λ/2 · MMD², §3.3). The maps
    must cover the same positions: the larger is adaptive-average-pooled to the smaller size.
    """

    name = "nst"
    description = "neuron selectivity transfer: MMD between student and teacher channel activation patterns (poly kernel)"
    paper = "Huang & Wang 2017, Like What You Like: Knowledge Distill via Neuron Selectivity Transfer (arXiv:1707.01219), §3.2–3.3"
    Params = NSTParams

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> torch.Tensor:
        losses = []
        for a_s, a_t, s_kind, t_kind in self.features(student, teacher):
            a_s, a_t = match_spatial(as_map(a_s, s_kind), as_map(a_t, t_kind))
            f_s = F.normalize(a_s.flatten(2), dim=2)  # (B, C_s, H·W)
            f_t = F.normalize(a_t.flatten(2), dim=2)  # (B, C_t, H·W)
            losses.append(poly_mmd2(f_s, f_t, self.params.degree, self.params.c).mean())
        return 0.5 * self.total(losses)


# ----- FSP and Gram matrices ----------------------------------------------------------------------
def fsp_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """G_ij = Σ_s a_i(s) · b_j(s) / |s| for maps (B, C1, *S) and (B, C2, *S) -> (B, C1, C2) (Yim et al. Eq. 1)."""
    a, b = match_spatial(a, b)
    return a.flatten(2) @ b.flatten(2).transpose(1, 2) / a[0, 0].numel()


class FSPParams(Params):
    """``student_pairs`` and ``teacher_pairs`` (the i-th of each compared), or ``pairs: auto`` (consecutive stages)."""

    student_pairs: list[tuple[str, str]] | None = None
    teacher_pairs: list[tuple[str, str]] | None = None
    pairs: Literal["auto"] | None = Field(None, validate_default=True)
    num_pairs: int | None = Field(None, ge=1)  # with pairs: auto, how many consecutive-stage FSP matrices

    @field_validator("pairs")
    @classmethod
    def _one_way(cls, pairs, info: ValidationInfo):
        s, t = info.data.get("student_pairs"), info.data.get("teacher_pairs")
        if pairs is not None and (s or t):
            raise ValueError("give either student_pairs/teacher_pairs or pairs: auto, not both")
        if pairs is None and not (s and t):
            raise ValueError("name the layers: student_pairs: [[a, b], ...] and teacher_pairs: [[a, b], ...] "
                             "(an FSP matrix relates the two layers of a pair), or pairs: auto")
        if pairs is None and len(s) != len(t):
            raise ValueError(f"student_pairs has {len(s)} pairs but teacher_pairs has {len(t)}; "
                             "the i-th student FSP matrix is compared with the i-th teacher one")
        return pairs

    @field_validator("num_pairs")
    @classmethod
    def _auto_only(cls, num_pairs, info: ValidationInfo):
        if num_pairs is not None and info.data.get("pairs") != "auto":
            raise ValueError("num_pairs only applies with pairs: auto")
        return num_pairs


@register_loss
class FSP(LossTerm):
    """Mean over pairs of mean((G_t − G_s)²) between the FSP matrices of a layer pair in each network.

    Eq. 2 sums λ_i·‖G_T − G_S‖²₂ over pairs; here λ_i = 1/n and the squared Frobenius norm is divided by
    the number of entries (C1·C2), so the value does not grow with width. Two layers of a pair with
    different spatial sizes are related after adaptive-average-pooling the larger to the smaller.
    """

    name = "fsp"
    description = "flow of solution procedure: match Gram-like matrices between two layers of each network"
    paper = "Yim, Joo, Bae & Kim 2017, A Gift from Knowledge Distillation (CVPR), Eq. 1–2"
    Params = FSPParams

    def __init__(self, params: FSPParams):
        super().__init__(params)
        self.fsp_pairs: list[tuple[tuple[str, str], tuple[str, str]]] = []
        self.kinds: dict[tuple[str, str], Kind] = {}  # (role, path) -> layout, set by setup
        if params.pairs is None:
            self.use_pairs([(tuple(s), tuple(t)) for s, t in zip(params.student_pairs, params.teacher_pairs)])

    def use_pairs(self, fsp_pairs: list[tuple[tuple[str, str], tuple[str, str]]]) -> None:
        """Compare these ((student a, student b), (teacher a, teacher b)) FSP matrices."""
        self.fsp_pairs = fsp_pairs
        self.student_paths = tuple(dict.fromkeys(p for s, _ in fsp_pairs for p in s))
        self.teacher_paths = tuple(dict.fromkeys(p for _, t in fsp_pairs for p in t))

    def describe(self) -> str:
        return f"{self.name}: " + ", ".join(f"({sa}, {sb})→({ta}, {tb})" for (sa, sb), (ta, tb) in self.fsp_pairs)

    def setup(self, ctx: SetupContext) -> None:
        if self.params.pairs == "auto":
            n = self.params.num_pairs + 1 if self.params.num_pairs else None
            stages = auto_pairs(ctx.student, ctx.teacher, tuple(ctx.batch.x.shape[1:]), n)
            if len(stages) < 2:
                raise TinyKDError(f"fsp: pairs: auto found one stage pair ({stages}); an FSP matrix needs two layers",
                                  "name the layers with student_pairs and teacher_pairs")
            self.use_pairs([((s0, s1), (t0, t1)) for (s0, t0), (s1, t1) in zip(stages, stages[1:])])
            console.print(f"[dim]pairs: auto chose {self.describe()}[/]")
        s_feats, t_feats = example_features(ctx, self.student_paths, self.teacher_paths)
        conv1d = channels_first(ctx.student), channels_first(ctx.teacher)
        self.kinds = {}
        for (role, feats, flag, names) in (("student", s_feats, conv1d[0], self.student_paths),
                                           ("teacher", t_feats, conv1d[1], self.teacher_paths)):
            for path in names:
                self.kinds[role, path] = feature_kind(feats[path].shape, flag, role, path)
        for (sa, sb), (ta, tb) in self.fsp_pairs:
            sizes = []
            for role, feats, (a, b) in (("student", s_feats, (sa, sb)), ("teacher", t_feats, (ta, tb))):
                ka, kb = self.kinds[role, a], self.kinds[role, b]
                shape_a, shape_b = as_map(feats[a], ka).shape, as_map(feats[b], kb).shape
                if "vector" in (ka, kb) or len(shape_a) != len(shape_b):
                    raise TinyKDError(f"fsp: the {role} layers '{a}' {shape_str(feats[a].shape)} and '{b}' "
                                      f"{shape_str(feats[b].shape)} need feature maps of the same spatial rank",
                                      "pair conv layers (before flatten/pooling)")
                sizes.append((shape_a[1], shape_b[1]))
            if sizes[0] != sizes[1]:
                raise TinyKDError(f"fsp: the student's FSP matrix ('{sa}', '{sb}') is {sizes[0][0]}×{sizes[0][1]} "
                                  f"but the teacher's ('{ta}', '{tb}') is {sizes[1][0]}×{sizes[1][1]}; FSP compares "
                                  "them entry by entry",
                                  "pick layers with the same channel counts in both networks, or use fitnet or "
                                  "gram, which learn a projection between different widths")

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> torch.Tensor:
        if not self.kinds:
            raise RuntimeError(f"{self.name}: setup() must run before the term is called")
        losses = []
        for (sa, sb), (ta, tb) in self.fsp_pairs:
            g_s = fsp_matrix(as_map(student.features[sa], self.kinds["student", sa]),
                             as_map(student.features[sb], self.kinds["student", sb]))
            g_t = fsp_matrix(as_map(teacher.features[ta].detach(), self.kinds["teacher", ta]),
                             as_map(teacher.features[tb].detach(), self.kinds["teacher", tb]))
            losses.append((g_t - g_s).pow(2).mean())  # Eq. 2 with λ_i = 1/n, per entry
        if len(losses) > 1:
            self.parts = {f"{sa}>{sb}": loss.detach() for ((sa, sb), _), loss in zip(self.fsp_pairs, losses)}
        return torch.stack(losses).mean()


@register_loss
class Gram(FeatureTerm):
    """Mean over pairs of mean((G_s − G_t)²), G = F Fᵀ / (H·W) over channels per sample (a layer's FSP with itself).

    Equals 4 × Gatys et al.'s style loss E_l (Eq. 4, 1/(4N²M²) Σ (G − A)² with N channels and M
    positions). When the channel counts differ, a learned 1×1 conv maps the student's channels to the
    teacher's. Spatial sizes may differ: a Gram matrix is C×C whatever the map size.
    """

    name = "gram"
    description = "Gram-matrix (style) matching of channel correlations, with a 1×1 projection for different widths"
    paper = "Gatys, Ecker & Bethge 2016, Image Style Transfer Using Convolutional Neural Networks (CVPR), Eq. 3–4"

    def __init__(self, params: PairParams):
        super().__init__(params)
        self.projections = nn.ModuleList()

    def build(self, examples: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        projections = []
        for i, (f_s, f_t) in enumerate(examples):
            self.require_maps(i, f_s, f_t)
            c_s, c_t = as_map(f_s, self.kinds[i][0]).shape[1], as_map(f_t, self.kinds[i][1]).shape[1]
            projections.append(nn.Identity() if c_s == c_t else conv1x1(c_s, c_t, f_s.dim() - 2))
        self.projections = nn.ModuleList(projections)

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> torch.Tensor:
        losses = []
        for (f_s, f_t, s_kind, t_kind), projection in zip(self.features(student, teacher), self.projections):
            f_s, f_t = projection(as_map(f_s, s_kind)), as_map(f_t, t_kind)
            losses.append((fsp_matrix(f_s, f_s) - fsp_matrix(f_t, f_t)).pow(2).mean())
        return self.total(losses) / len(losses)


@register_loss
class ICKD(FeatureTerm):
    """Σ_pairs mean over samples and C_t² entries of (G_s − G_t)², G = F Fᵀ / (H·W) the inter-channel correlation.

    Liu et al. (ICCV 2021): each channel's map is vectorised and the C × C inner products between channels
    of a sample are matched; the student's map always passes a learned 1×1 conv to the teacher's channel
    count first (the paper's embedding, a helper of the term). Normalisation follows the paper's formula,
    the mean of the squared differences over the C² entries, not the released code, which L2-normalises
    each row of G and divides the summed squares by B·C; dividing G by H·W keeps the value independent
    of the map size (a constant per pair, absorbed by the weight). Spatial sizes may differ (G is C × C).
    """

    name = "ickd"
    description = "inter-channel correlation KD: match C×C channel inner-product matrices through a learned 1×1 conv"
    paper = ("Liu et al. ICCV 2021, Exploring Inter-Channel Correlation for Diversity-preserved Knowledge "
             "Distillation (ICKD, without its grid-level variant)")

    def __init__(self, params: PairParams):
        super().__init__(params)
        self.embeddings = nn.ModuleList()

    def build(self, examples: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        embeddings = []
        for i, (f_s, f_t) in enumerate(examples):
            self.require_maps(i, f_s, f_t)
            c_s, c_t = as_map(f_s, self.kinds[i][0]).shape[1], as_map(f_t, self.kinds[i][1]).shape[1]
            embeddings.append(conv1x1(c_s, c_t, f_s.dim() - 2))
        self.embeddings = nn.ModuleList(embeddings)

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> torch.Tensor:
        losses = []
        for (f_s, f_t, s_kind, t_kind), embed in zip(self.features(student, teacher), self.embeddings):
            f_s, f_t = embed(as_map(f_s, s_kind)), as_map(f_t, t_kind)
            losses.append((fsp_matrix(f_s, f_s) - fsp_matrix(f_t, f_t)).pow(2).mean())  # (B, C_t, C_t) entries
        return self.total(losses)


# ----- Variational information distillation -------------------------------------------------------
def channel_map(x: torch.Tensor, kind: Kind) -> torch.Tensor:
    """(B, C, *spatial) for a per-channel helper: tokens become a (B, D, T) map, a vector a (B, D, 1) map."""
    return x.unsqueeze(-1) if kind == "vector" else as_map(x, kind)


def conv1x1_biased(c_in: int, c_out: int, rank: int) -> nn.Conv1d | nn.Conv2d:
    """A 1×1 convolution with a bias, over maps with ``rank`` spatial dimensions."""
    return (nn.Conv1d if rank == 1 else nn.Conv2d)(c_in, c_out, 1)


class ChannelMapTerm(FeatureTerm):
    """Base of vid and ab: a helper acts on each channel map; maps (2-D or 1-D), tokens (as (B, D, T) maps) and
    vectors (as (B, D, 1) maps, where a 1×1 conv is a linear layer) are compared with their own kind, and the
    larger of two maps is adaptive-average-pooled to the smaller size."""

    def check_pair(self, i: int, s_x: torch.Tensor, t_x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The pair's example features as (B, C, *spatial) maps; a TinyKDError when their kinds differ."""
        kinds = self.kinds[i]
        s_m, t_m = channel_map(s_x, kinds[0]), channel_map(t_x, kinds[1])
        if ("vector" in kinds and kinds[0] != kinds[1]) or s_m.dim() != t_m.dim():
            raise self.mismatch(i, s_x.shape, t_x.shape, f"cannot be compared ({kinds[0]} vs {kinds[1]}): {self.name} "
                                "maps 2-D maps onto 2-D maps, 1-D maps or tokens onto each other, vectors onto vectors",
                                "pair layers of the same kind in both networks")
        return s_m, t_m

    def maps(self, student: Outputs, teacher: Outputs):
        """(student map, teacher map) of each pair, of the same spatial size."""
        for s, t, s_kind, t_kind in self.features(student, teacher):
            yield match_spatial(channel_map(s, s_kind), channel_map(t, t_kind))


VID_EPS = 1e-5  # ε of σ²_c = softplus(α_c) + ε: the smallest variance, so log σ_c ≥ ½ log ε ≈ −5.76


class VIDParams(PairParams):
    init_variance: float = Field(5.0, gt=VID_EPS, le=1e6)  # σ²_c at the start (α_c = softplus⁻¹(init_variance − ε))


@register_loss
class VID(ChannelMapTerm):
    """Σ_pairs mean over samples, channels and positions of log σ_c + (t − μ(s))² / (2σ²_c), σ²_c = softplus(α_c) + ε.

    Ahn et al. (CVPR 2019), Eq. 2 and 4: the student's feature s predicts the teacher's t through a Gaussian
    q(t | s) = N(μ(s), diag σ²) whose mean μ is a regressor, three 1×1 convolutions (C_s → C_t → C_t → C_t,
    with biases) with ReLU in between, and whose variance is learned per channel: σ²_c = softplus(α_c) + ε,
    ε = 1e-5, α_c initialised so that every σ²_c starts at ``init_variance`` (default 5). The value is the
    negative log-likelihood −log q(t | s) without its constant ½ log 2π, averaged over positions and channels
    (and samples) instead of the paper's sum over them, so it does not grow with map size (a constant factor
    per pair, absorbed by the weight, the paper's λ); it can be negative, and its floor is ½ log ε. The
    regressor and the α_c are the term's helpers. Pass pairs of the same spatial size, as the paper does (a
    larger map is pooled to the smaller size). Add a ce term, as in the paper.
    """

    name = "vid"
    description = ("variational information distillation: Gaussian likelihood of the teacher's feature given the "
                   "student's, with a 1×1-conv regressor mean and learned per-channel variance")
    paper = ("Ahn, Hu, Damianou, Lawrence & Dai, CVPR 2019, Variational Information Distillation for Knowledge "
             "Transfer, Eq. 2 and 4")
    Params = VIDParams

    def __init__(self, params: VIDParams):
        super().__init__(params)
        self.regressors = nn.ModuleList()
        self.alphas = nn.ParameterList()

    def build(self, examples: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        alpha0 = math.log(math.expm1(self.params.init_variance - VID_EPS))  # softplus⁻¹
        regressors, alphas = [], []
        for i, (s_x, t_x) in enumerate(examples):
            s_m, t_m = self.check_pair(i, s_x, t_x)
            c_s, c_t, rank = s_m.shape[1], t_m.shape[1], s_m.dim() - 2
            regressors.append(nn.Sequential(conv1x1_biased(c_s, c_t, rank), nn.ReLU(),
                                            conv1x1_biased(c_t, c_t, rank), nn.ReLU(), conv1x1_biased(c_t, c_t, rank)))
            alphas.append(nn.Parameter(torch.full((c_t,), alpha0)))
        self.regressors = nn.ModuleList(regressors)
        self.alphas = nn.ParameterList(alphas)

    def variances(self, i: int) -> torch.Tensor:
        """σ²_c of pair ``i``, (C_t,)."""
        return F.softplus(self.alphas[i]) + VID_EPS

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> torch.Tensor:
        losses = []
        for i, ((s, t), mu) in enumerate(zip(self.maps(student, teacher), self.regressors)):
            var = self.variances(i).view(1, -1, *([1] * (t.dim() - 2)))  # broadcast over batch and positions
            losses.append((0.5 * var.log() + (t - mu(s)).pow(2) / (2 * var)).mean())  # −log q(t | s) − const
        return self.total(losses)


# ----- Activation boundaries ----------------------------------------------------------------------
class ABParams(PairParams):
    margin: float = Field(1.0, gt=0.0, le=1e3)  # m: how far past the boundary the student's response must go


@register_loss
class AB(ChannelMapTerm):
    """Σ_pairs mean over elements of ρ(t)·σ(m − r(s))² + (1 − ρ(t))·σ(m + r(s))², ρ(t) = 1[t > 0], σ = ReLU.

    Heo et al. (AAAI 2019), the alternative (piecewise differentiable) activation-transfer loss: where a
    teacher neuron is active the connected student response r(s) is pushed above m, where it is inactive
    below −m, and a response already past the margin costs nothing. r is the paper's connector, a 1×1
    conv + BN (a helper of the term). Name the student's pre-ReLU layer (cnn: ``features.i.bn``); the
    teacher's may be pre- or post-ReLU, ρ is the same. m = 1 by default, tinykd's choice: the margin is a
    hyper-parameter of the paper, not re-checked here against its experiments. The value is the mean over
    the B·C·H·W elements instead of the paper's squared 2-norm (the sum), so it does not grow with batch
    or map size (absorbed by the weight). The paper trains with this loss alone as an initialisation stage
    before classification training; tinykd uses it as a term in the weighted list (combine it with ce/kd).
    """

    name = "ab"
    description = ("activation-boundary distillation: hinge-like loss making a 1×1-conv+BN connected student "
                   "response active/inactive where the teacher's neurons are, by a margin")
    paper = ("Heo, Lee, Yun & Choi, AAAI 2019, Knowledge Transfer via Distillation of Activation Boundaries Formed "
             "by Hidden Neurons (alternative loss, used as a term)")
    Params = ABParams

    def __init__(self, params: ABParams):
        super().__init__(params)
        self.connectors = nn.ModuleList()

    def build(self, examples: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        connectors = []
        for i, (s_x, t_x) in enumerate(examples):
            s_m, t_m = self.check_pair(i, s_x, t_x)
            bn = nn.BatchNorm2d if s_m.dim() == 4 else nn.BatchNorm1d
            connectors.append(nn.Sequential(conv1x1(s_m.shape[1], t_m.shape[1], s_m.dim() - 2), bn(t_m.shape[1])))
        self.connectors = nn.ModuleList(connectors)

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> torch.Tensor:
        m, losses = self.params.margin, []
        for (s, t), connector in zip(self.maps(student, teacher), self.connectors):
            r = connector(s)
            rho = (t > 0).to(r.dtype)  # the teacher neuron's activation
            losses.append((rho * F.relu(m - r).pow(2) + (1 - rho) * F.relu(m + r).pow(2)).mean())
        return self.total(losses)


# ----- Class attention transfer -------------------------------------------------------------------
class CATKDParams(PairParams):
    student_classifier: str | None = None  # path of the student's final nn.Linear (default: its last Linear)
    teacher_classifier: str | None = None  # the same in the teacher
    pool_size: int = Field(2, ge=1, le=64)  # CAMs are average-pooled to pool_size × pool_size (or pool_size)

    @model_validator(mode="after")
    def _one_pair(self):
        if isinstance(self.pairs, list) and len(self.pairs) != 1:
            raise ValueError(f"catkd compares the CAMs of one layer per network (the last feature map), got "
                             f"{len(self.pairs)} pairs")
        if self.num_pairs not in (None, 1):
            raise ValueError("catkd compares one pair (the last feature maps): num_pairs must be 1")
        if self.pairs == "auto":
            self.num_pairs = 1  # pairs: auto picks the deepest stage pair
        return self


def last_linear(model: nn.Module, role: str) -> str:
    """Path of the last nn.Linear registered in ``model`` (its classifier in every tinykd model)."""
    paths = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not paths:
        raise TinyKDError(f"catkd: the {role} ({type(model).__name__}) has no nn.Linear to read class weights from",
                          f"name its classifier with {role}_classifier")
    return paths[-1]


def class_activation_maps(f: torch.Tensor, weight: torch.Tensor, flat: bool) -> torch.Tensor:
    """CAM_k = Σ_c w_{k,c} F_c for a map (B, C, *S) and a classifier weight (K, D) -> (B, K, *S).

    ``flat``: the classifier reads the flattened map (D = C·|S|), so w is read as (K, C, *S) and
    CAM_k(s) = Σ_c w_{k,c,s} F_c(s); otherwise it reads the pooled map (D = C). Either way the CAM's
    positions sum (flat) or average (pooled) to the logit minus its bias."""
    if flat:
        return (weight.view(weight.shape[0], *f.shape[1:]).unsqueeze(0) * f.unsqueeze(1)).sum(2)
    return torch.einsum("kc,bc...->bk...", weight, f)


@register_loss
class CATKD(FeatureTerm):
    """mean over samples, classes and positions of (Ŝ_k − T̂_k)², T̂_k the pooled, L2-normalised CAM of class k.

    Guo et al. (CVPR 2023): a class activation map CAM_k = Σ_c w_{k,c} F_c is computed from each network's last
    feature map F and the weights w of its final linear classifier (the classifier applied at every
    position); the CAMs are average-pooled to pool_size × pool_size (default 2 × 2), each map is divided by
    its L2 norm over the pooled positions, and the student's maps are matched to the teacher's by a squared
    error. The average over positions makes it an MSE; summing over positions instead multiplies it by
    pool_size² (absorbed by the weight, the paper's β). Classifier bias terms do not enter.

    The classifier: ``student_classifier`` / ``teacher_classifier`` name each network's final nn.Linear by
    path (default: the last nn.Linear of the model, ``head.fc`` in cnn, ``fc`` in resnet). The term keeps a
    reference to the student's and teacher's classifiers, not a copy: gradients reach the student's
    classifier (it is the student's own parameter, trained and exported as such, not a helper) and never
    the teacher's. It must read the feature map directly: after global average pooling (in_features = C) or
    flattened (in_features = C·H·W, as cnn with ``hidden: 0``; then w is read per position); a hidden
    layer between map and classifier (cnn's default ``hidden``) leaves no CAM and is an error. The
    feature layer is the last map before the classifier: ``student``/``teacher`` paths, or ``pairs: auto``
    (the deepest stage pair). Both networks need the same classes. No helpers; add a ce term as in the paper.
    """

    name = "catkd"
    description = ("class attention transfer: match pooled, normalised class activation maps (last feature map "
                   "× final linear classifier weights)")
    paper = "Guo, Yan, Li & Lin, CVPR 2023, Class Attention Transfer Based Knowledge Distillation (CAT-KD)"
    Params = CATKDParams

    def __init__(self, params: CATKDParams):
        super().__init__(params)
        # (student, teacher) classifiers, kept in a tuple so they are not registered as the term's submodules.
        self.classifiers: tuple[nn.Linear, nn.Linear] | None = None
        self.flat: tuple[bool, bool] = (False, False)

    def setup(self, ctx: SetupContext) -> None:
        found = []
        for model, path, role in ((ctx.student, self.params.student_classifier, "student"),
                                  (ctx.teacher, self.params.teacher_classifier, "teacher")):
            path = path or last_linear(model, role)
            module = resolve_module(model, path, role=role)
            if not isinstance(module, nn.Linear):
                raise TinyKDError(f"catkd: the {role}'s '{path}' is a {type(module).__name__}, not an nn.Linear",
                                  f"name the {role}'s final linear classifier with {role}_classifier")
            found.append((path, module))
        self.classifier_paths = tuple(p for p, _ in found)
        self.classifiers = tuple(m for _, m in found)
        super().setup(ctx)

    def build(self, examples: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        (f_s, f_t), = examples
        flat = []
        for f, kind, (role, path), lin in zip((f_s, f_t), self.kinds[0], zip(("student", "teacher"), self.pairs[0]),
                                              self.classifiers):
            c, positions = f.shape[1], f[0, 0].numel()
            if kind != "map":
                raise TinyKDError(f"catkd: the {role} feature at '{path}' is {kind} {shape_str(f.shape)}; a class "
                                  "activation map needs the last conv feature map (B, C, H, W) or (B, C, L)",
                                  "name the last conv stage (before pooling/flatten)")
            if lin.in_features not in (c, c * positions):
                cls_path = self.classifier_paths[role == "teacher"]
                raise TinyKDError(f"catkd: the {role}'s classifier '{cls_path}' reads {lin.in_features} features, but "
                                  f"'{path}' {shape_str(f.shape)} gives {c} channels ({c * positions} flattened): "
                                  "a class activation map needs a classifier that reads this map directly "
                                  "(after global pooling or flatten)",
                                  "name the last feature map and the final Linear; a model with a hidden layer "
                                  "before its classifier (e.g. cnn with hidden > 0) has no CAM: use hidden: 0")
            flat.append(lin.in_features == c * positions and positions > 1)
        if self.classifiers[0].out_features != self.classifiers[1].out_features:
            raise TinyKDError(f"catkd: the student's classifier has {self.classifiers[0].out_features} classes, the "
                              f"teacher's {self.classifiers[1].out_features}", "give both the same num_classes")
        if f_s.dim() != f_t.dim():
            raise self.mismatch(0, f_s.shape, f_t.shape, "have different spatial ranks", "pair maps of the same kind")
        self.flat = tuple(flat)

    def cams(self, f: torch.Tensor, side: int) -> torch.Tensor:
        """Pooled, per-map L2-normalised CAMs (B, K, P) of one side (0 student, 1 teacher)."""
        weight = self.classifiers[side].weight.to(f.device, f.dtype)  # .to keeps the graph to the parameter
        cam = class_activation_maps(f, weight if side == 0 else weight.detach(), self.flat[side])
        pool = F.adaptive_avg_pool1d if cam.dim() == 3 else F.adaptive_avg_pool2d
        return F.normalize(pool(cam, self.params.pool_size).flatten(2), dim=2)

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> torch.Tensor:
        if self.classifiers is None:
            raise RuntimeError(f"{self.name}: setup() must run before the term is called")
        (f_s, f_t, _, _), = self.features(student, teacher)
        return (self.cams(f_s, 0) - self.cams(f_t, 1)).pow(2).mean()


# ----- Hidden-state matching ----------------------------------------------------------------------
class HiddenTerm(FeatureTerm):
    """Base of hidden_mse and hidden_cosine: student tokens through a learned linear map W onto the teacher's.

    Maps are read as H·W tokens of C dimensions (after pooling the larger map to the smaller size) and
    vectors as one token; token counts must then match. W is built when the widths differ, identity otherwise.
    """

    def __init__(self, params: PairParams):
        super().__init__(params)
        self.projections = nn.ModuleList()

    def build(self, examples: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        projections = []
        for i, (h_s, h_t) in enumerate(examples):
            s_kind, t_kind = self.kinds[i]
            if (s_kind, t_kind) == ("map", "map") and h_s.dim() == h_t.dim():
                h_s, h_t = match_spatial(h_s, h_t)
            s_tok, t_tok = as_tokens(h_s, s_kind).shape, as_tokens(h_t, t_kind).shape
            if s_tok[1] != t_tok[1]:
                raise self.mismatch(i, examples[i][0].shape, examples[i][1].shape, f"give {s_tok[1]} vs {t_tok[1]} tokens (a map gives one "
                                    "token per position, a vector one token)",
                                    "pair layers with the same sequence length or spatial layout")
            projections.append(nn.Identity() if s_tok[2] == t_tok[2] else nn.Linear(s_tok[2], t_tok[2]))
        self.projections = nn.ModuleList(projections)

    def hidden_states(self, student: Outputs, teacher: Outputs):
        """(H_s W, H_t) as (B, T, D_t) tokens for each pair."""
        for (h_s, h_t, s_kind, t_kind), projection in zip(self.features(student, teacher), self.projections):
            if (s_kind, t_kind) == ("map", "map") and h_s.dim() == h_t.dim():
                h_s, h_t = match_spatial(h_s, h_t)
            yield projection(as_tokens(h_s, s_kind)), as_tokens(h_t, t_kind)


@register_loss
class HiddenMSE(HiddenTerm):
    """Σ_pairs MSE(H_s W_h, H_t), the mean over tokens and dimensions (TinyBERT's hidden-state loss); in a padded text
    batch over the real tokens only."""

    name = "hidden_mse"
    description = "hidden-state MSE through a learned linear projection (TinyBERT); maps read as tokens"
    paper = "Jiao et al. 2020, TinyBERT: Distilling BERT for Natural Language Understanding (Findings of EMNLP), Eq. 8"

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> torch.Tensor:
        return self.total([token_mean((h_s - h_t).pow(2).mean(-1), batch.mask)
                           for h_s, h_t in self.hidden_states(student, teacher)])


@register_loss
class HiddenCosine(HiddenTerm):
    """Σ_pairs mean over tokens of 1 − cos(h_s W, h_t) (DistilBERT's cosine embedding loss, target 1); in a padded
    text batch over the real tokens only."""

    name = "hidden_cosine"
    description = "hidden-state cosine embedding loss, 1 − cos(h_s W, h_t) per token (DistilBERT)"
    paper = "Sanh, Debut, Chaumond & Wolf 2019, DistilBERT, a distilled version of BERT (arXiv:1910.01108), §2 L_cos"

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> torch.Tensor:
        return self.total([token_mean(1.0 - F.cosine_similarity(h_s, h_t, dim=-1), batch.mask)
                           for h_s, h_t in self.hidden_states(student, teacher)])
