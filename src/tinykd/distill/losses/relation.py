"""Relation-based terms: the student preserves relations between samples in the teacher's representations.

Every term compares one embedding per sample from the student with one from the teacher: the outputs of the
modules at ``student`` and ``teacher`` (the logits where a path is not given), or of each ``[student, teacher]``
pair in ``pairs``, whose losses are summed (as Tung & Mori sum SP over layer pairs). ``pairs: auto`` pairs
stages by relative depth (pairing.py): by default only the deepest, the embedding the RKD, PKT, CC and CRD
papers use, and every stage for SP, whose paper compares several layers.

Captured maps of any rank are flattened per sample, (b, c, h, w) -> (b, c·h·w), never pooled: SP defines its
Gram matrix on the flattened map, and RKD, PKT, CC and CRD are defined on embedding vectors, which a flattened
map is. Only the batch sizes of the two sides must match; their widths may differ.
"""
from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field, ValidationInfo, field_validator
from rich.console import Console
from torch import nn

from ...errors import TinyKDError
from ...types import Batch, Outputs
from ..capture import forward_with_features
from .base import LossTerm, Params, SetupContext, register_loss
from .pairing import auto_pairs

EPS = 1e-7
console = Console(stderr=True)


class RelationParams(Params):
    student: str | None = Field(None, description="student module path of the embedding (default: the logits)")
    teacher: str | None = Field(None, description="teacher module path of the embedding (default: the logits)")
    pairs: list[tuple[str, str]] | str | None = Field(
        None, description="[[student_path, teacher_path], ...] (losses summed), or 'auto'")
    num_pairs: int | None = Field(None, ge=1, description="stage pairs `pairs: auto` picks (default: 1; all for sp)")
    pool: bool = Field(False, description="average a feature map over its spatial positions before flattening "
                                          "(the pooled penultimate embedding; keeps learned embeddings small)")

    @field_validator("pairs")
    @classmethod
    def _pairs_or_paths(cls, pairs: list[tuple[str, str]] | str, info: ValidationInfo) -> list[tuple[str, str]] | str:
        if isinstance(pairs, str) and pairs != "auto":
            raise ValueError("must be 'auto' or a list of [student_path, teacher_path] pairs")
        if info.data.get("student") is not None or info.data.get("teacher") is not None:
            raise ValueError("give either `pairs` or `student`/`teacher`, not both")
        if not pairs:
            raise ValueError("needs at least one [student_path, teacher_path] pair")
        return pairs

    @field_validator("num_pairs")
    @classmethod
    def _auto_only(cls, num_pairs: int | None, info: ValidationInfo) -> int | None:
        if num_pairs is not None and info.data.get("pairs") != "auto":
            raise ValueError("num_pairs only applies with pairs: auto")
        return num_pairs


def _embedding(out: Outputs, path: str | None, role: str, pool: bool = False) -> torch.Tensor:
    """(b, d): the logits, or the captured output at ``path`` flattened per sample; with ``pool``, a map
    (b, C, *spatial) is first averaged over its spatial positions to (b, C)."""
    x = out.logits if path is None else out.features.get(path)
    if x is None:
        raise TinyKDError(f"the {role} output at '{path}' was not captured",
                          "capture the term's student_paths/teacher_paths with FeatureCapture (the Trainer does)")
    if pool and x.dim() > 2:
        x = x.flatten(2).mean(2)
    return x.reshape(x.shape[0], -1)


def check_embedding_size(term: str, widths: list[tuple[int, int]], params: int) -> None:
    """A clear error when a term's learned embedding over flattened maps would be unreasonably large."""
    if params > 20_000_000:
        shown = ", ".join(f"{s}→{t}" for s, t in widths)
        raise TinyKDError(f"{term}: its linear embeddings over the flattened feature maps ({shown} features) would "
                          f"have {params:,} parameters",
                          f"set pool: true on the {term} term (average each map over its positions first), "
                          "or pair smaller layers")


class RelationTerm(LossTerm):
    """Base of the relation terms: resolves the (student, teacher) paths and yields the embeddings of each pair."""

    Params = RelationParams
    auto_count: ClassVar[int | None] = 1  # stage pairs `pairs: auto` picks by default (None: all)

    def __init__(self, params: RelationParams):
        super().__init__(params)
        self.pairs: list[tuple[str | None, str | None]] = []  # None stands for the logits, which need no hook
        if params.pairs != "auto":
            self.use_pairs(params.pairs or [(params.student, params.teacher)])

    def use_pairs(self, pairs: list[tuple[str | None, str | None]]) -> None:
        """Compare the embeddings at these (student path, teacher path) pairs and capture them."""
        self.pairs = [tuple(p) for p in pairs]
        self.student_paths = tuple(dict.fromkeys(s for s, _ in self.pairs if s is not None))
        self.teacher_paths = tuple(dict.fromkeys(t for _, t in self.pairs if t is not None))

    def setup(self, ctx: SetupContext) -> None:
        """Resolve ``pairs: auto`` from the two models' stages."""
        if self.params.pairs == "auto":
            n = self.params.num_pairs or self.auto_count
            self.use_pairs(auto_pairs(ctx.student, ctx.teacher, tuple(ctx.batch.x.shape[1:]), n))
            chosen = ", ".join(f"{s}→{t}" for s, t in self.pairs)
            console.print(f"[dim]pairs: auto chose {self.name}: {chosen}[/]")

    def example_embeddings(self, ctx: SetupContext) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The embeddings of each pair on ``ctx.batch``, recomputed (in eval mode, without gradients) when the
        examples lack paths that ``pairs: auto`` chose in setup."""
        outs = []
        for model, example, paths, role in ((ctx.student, ctx.student_example, self.student_paths, "student"),
                                            (ctx.teacher, ctx.teacher_example, self.teacher_paths, "teacher")):
            if all(p in example.features for p in paths):
                outs.append(example)
                continue
            was_training = model.training
            model.eval()
            try:
                with torch.no_grad():
                    outs.append(forward_with_features(model, ctx.batch, paths, role=role))
            finally:
                model.train(was_training)
        return self.embeddings(*outs)

    def embeddings(self, student: Outputs, teacher: Outputs) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(b, d_s) student and (b, d_t) detached teacher embeddings of every pair."""
        if not self.pairs:
            raise TinyKDError(f"{self.name}: pairs: auto is resolved by setup(), which has not run",
                              "call term.setup(ctx) first (the Trainer does)")
        out = []
        for s_path, t_path in self.pairs:
            s = _embedding(student, s_path, "student", self.params.pool)
            t = _embedding(teacher, t_path, "teacher", self.params.pool).detach()
            if s.shape[0] != t.shape[0]:
                raise TinyKDError(
                    f"{self.name}: the student embedding ({s_path or 'logits'}, {tuple(s.shape)}) and the teacher "
                    f"embedding ({t_path or 'logits'}, {tuple(t.shape)}) hold different numbers of samples",
                    "run the student and the teacher on the same batch (the Trainer does)")
            out.append((s, t))
        return out


# ----- RKD ---------------------------------------------------------------------------------------------------

def rkd_potentials(e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ψ_D of eq. 3, (b, b), and ψ_A of eq. 5, (b, b, b) with [i, j, k] = cos∠(e_j, e_i, e_k), of embeddings e.

    Both only need the Gram matrix of e, so no (b, b, d) tensor of differences is built; they are invariant
    to translation, so e is centred first, which keeps that expansion accurate.
    """
    b = e.shape[0]
    e = e - e.mean(0)
    g = e @ e.T                                             # (b, b) inner products
    sq = g.diagonal()
    d2 = sq[:, None] + sq[None, :] - 2 * g                  # squared distances ‖e_i − e_j‖²
    off = ~torch.eye(b, dtype=torch.bool, device=e.device)
    d = torch.where(off & (d2 > EPS**2), d2.clamp_min(EPS**2).sqrt(), 0.0)
    mu = d[off].mean().clamp_min(EPS)                       # eq. 3: mean distance over the pairs i ≠ j
    # <e_j − e_i, e_k − e_i> = g_jk − g_ij − g_ik + g_ii, then divided by both lengths (0 where j or k is i).
    dot = g[None, :, :] - g[:, :, None] - g[:, None, :] + sq[:, None, None]
    inv = (d > 0) / d.clamp_min(EPS)                        # 1 / ‖e_j − e_i‖, 0 for coincident points
    return d / mu, dot * inv[:, :, None] * inv[:, None, :]


class RKDParams(RelationParams):
    distance_weight: float = Field(25.0, ge=0.0)
    angle_weight: float = Field(50.0, ge=0.0)


@register_loss
class RKD(RelationTerm):
    """distance_weight · L_RKD-D + angle_weight · L_RKD-A on the (b, b) distances and (b, b, b) angles."""

    name = "rkd"
    description = "Relational KD: match mean-normalised pairwise distances and triplet angles (Huber loss)"
    paper = "Park, Kim, Lu & Cho 2019, Relational Knowledge Distillation (CVPR), eq. 3–6"
    Params = RKDParams

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> torch.Tensor:
        p = self.params
        distance = angle = student.logits.new_zeros(())
        for s, t in self.embeddings(student, teacher):
            if s.shape[0] < 2:  # a batch of one sample has no relations
                distance, angle = distance + s.sum() * 0.0, angle + s.sum() * 0.0
                continue
            psi_d_s, psi_a_s = rkd_potentials(s)
            psi_d_t, psi_a_t = rkd_potentials(t)
            # Eq. 4 and 6: Huber loss (δ = 1) averaged over all b² pairs and b³ triplets, as in the authors' code;
            # the paper's sums differ by a constant factor that the weights (25 and 50 there) were tuned with.
            distance = distance + F.smooth_l1_loss(psi_d_s, psi_d_t)
            angle = angle + F.smooth_l1_loss(psi_a_s, psi_a_t)
        self.parts = {"distance": distance.detach(), "angle": angle.detach()}
        return p.distance_weight * distance + p.angle_weight * angle


# ----- SP ----------------------------------------------------------------------------------------------------

def sp_loss(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """‖G_t − G_s‖²_F / b² with G = row-L2-normalised Q·Qᵀ (Tung & Mori eq. 2–4)."""
    g_s = F.normalize(s @ s.T, dim=1)                       # (b, b)
    g_t = F.normalize(t @ t.T, dim=1)
    return (g_t - g_s).pow(2).sum() / s.shape[0] ** 2


@register_loss
class SP(RelationTerm):
    """Similarity-preserving KD: the student's batch similarity matrix follows the teacher's."""

    name = "sp"
    description = "Similarity-Preserving KD: match the row-normalised b×b activation similarity matrices"
    paper = "Tung & Mori 2019, Similarity-Preserving Knowledge Distillation (ICCV), eq. 2–4"
    auto_count = None  # the paper sums over several layer pairs

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> torch.Tensor:
        return sum(sp_loss(s, t) for s, t in self.embeddings(student, teacher))


# ----- PKT ---------------------------------------------------------------------------------------------------

def pkt_conditional(e: torch.Tensor) -> torch.Tensor:
    """(b, b) conditional probabilities, row i = p(j | i), from the cosine kernel shifted to [0, 1]."""
    e = e / (e.norm(dim=1, keepdim=True) + EPS)
    kernel = (e @ e.T + 1.0) / 2.0
    return kernel / kernel.sum(dim=1, keepdim=True)


@register_loss
class PKT(RelationTerm):
    """KL(teacher ‖ student) between the conditional distributions of the two embeddings."""

    name = "pkt"
    description = "Probabilistic KT: match cosine-kernel conditional probability distributions (KL divergence)"
    paper = ("Passalis & Tefas 2018, Learning Deep Representations with Probabilistic Knowledge Transfer (ECCV): "
             "KL divergence of cosine-kernel conditional probabilities, as in the authors' code")

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> torch.Tensor:
        loss = student.logits.new_zeros(())
        for s, t in self.embeddings(student, teacher):
            p_s, p_t = pkt_conditional(s), pkt_conditional(t)
            # As in the authors' code: kernel rows include j = i, eps inside the log, mean over all b² entries.
            loss = loss + (p_t * torch.log((p_t + EPS) / (p_s + EPS))).mean()
        return loss


# ----- CC ----------------------------------------------------------------------------------------------------

def cc_correlation(f: torch.Tensor, gamma: float, order: int) -> torch.Tensor:
    """(b, b) correlations k(f_i, f_j) = exp(−γ‖f_i − f_j‖²) by the order-P Taylor series of the Gaussian RBF.

    With unit-norm f, ‖f_i − f_j‖² = 2 − 2 f_iᵀf_j, so k = e^{−2γ} Σ_{p=0}^{P} (2γ)^p / p! · (f_iᵀf_j)^p.
    """
    f = F.normalize(f, dim=1)
    sim = f @ f.T
    return sum(math.exp(-2 * gamma) * (2 * gamma) ** p / math.factorial(p) * sim ** p for p in range(order + 1))


class CCParams(RelationParams):
    gamma: float = Field(0.4, gt=0.0)
    order: int = Field(2, ge=0)


@register_loss
class CC(RelationTerm):
    """‖C_t − C_s‖² / b² between the Gaussian-RBF correlation matrices of the two embeddings."""

    name = "cc"
    description = "Correlation Congruence: match b×b Gaussian-RBF correlation matrices (Taylor order P)"
    paper = ("Peng et al. 2019, Correlation Congruence for Knowledge Distillation (ICCV), correlation congruence "
             "loss with the P-order Taylor expansion of the Gaussian RBF kernel")
    Params = CCParams

    def __init__(self, params: CCParams):
        super().__init__(params)
        # Per pair: a linear embedding of the student to the teacher's width, or Identity where they agree.
        self.embed = nn.ModuleList()

    def setup(self, ctx: SetupContext) -> None:
        """The paper compares embeddings of one width: where the widths differ, a linear embedding maps the
        student's onto the teacher's. Only the student side gets one: a trained teacher-side map could
        collapse the teacher's correlations to a constant that any student matches."""
        super().setup(ctx)
        widths = [(s.shape[1], t.shape[1]) for s, t in self.example_embeddings(ctx)]
        check_embedding_size(self.name, widths, sum((s + 1) * t for s, t in widths if s != t))
        self.embed = nn.ModuleList(nn.Identity() if s == t else nn.Linear(s, t) for s, t in widths)
        self.embed.to(ctx.student_example.logits.device)

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> torch.Tensor:
        p = self.params
        loss = student.logits.new_zeros(())
        for k, (s, t) in enumerate(self.embeddings(student, teacher)):
            if self.embed:
                s = self.embed[k](s)
            if s.shape[1] != t.shape[1]:
                raise TinyKDError(f"cc: the student embedding {tuple(s.shape)} and the teacher embedding "
                                  f"{tuple(t.shape)} differ in width and no linear embedding was built",
                                  "call term.setup(ctx) before the first step (the Trainer does)")
            c_s, c_t = cc_correlation(s, p.gamma, p.order), cc_correlation(t, p.gamma, p.order)
            loss = loss + (c_t - c_s).pow(2).sum() / s.shape[0] ** 2
        return loss


# ----- CRD ---------------------------------------------------------------------------------------------------

def nce_loss(scores: torch.Tensor, num_data: int) -> torch.Tensor:
    """NCE loss of eq. 18 with h of eq. 19: column 0 of ``scores`` (b, 1 + K) is the positive, the rest the K
    negatives, drawn from the uniform noise distribution P_n = 1/N; summed over samples, averaged over the batch."""
    k = scores.shape[1] - 1
    noise = k / num_data                                    # K · P_n
    log_h_pos = torch.log(scores[:, 0] / (scores[:, 0] + noise + EPS))
    log_1_minus_h_neg = torch.log(noise / (scores[:, 1:] + noise + EPS))
    return -(log_h_pos.sum() + log_1_minus_h_neg.sum()) / scores.shape[0]


class CRDParams(RelationParams):
    feat_dim: int = Field(128, ge=1, description="width of the L2-normalised embeddings g_s, g_t")
    nce_k: int = Field(4096, ge=1, description="negatives per anchor (paper: 16384), at most num_train − 1")
    nce_t: float = Field(0.07, gt=0.0, description="temperature τ")
    nce_momentum: float = Field(0.5, ge=0.0, lt=1.0, description="momentum of the memory-bank update")


@register_loss
class CRD(RelationTerm):
    """Contrastive representation distillation with memory banks of every training sample's embeddings.

    Both directions of the reference: the student's embedding is the anchor against positives and negatives
    from the teacher's memory bank (this trains the student and g_s), and the teacher's against the student's
    bank (this trains g_t). Each probability is exp(v·m/τ)/Z with Z = N · mean exp(v·m/τ) estimated once,
    on the first batch, as the reference ContrastMemory does; the NCE loss then uses P_n = 1/N.
    """

    name = "crd"
    description = "Contrastive Representation Distillation: NCE against memory banks of all training samples"
    paper = "Tian, Krishnan & Isola 2020, Contrastive Representation Distillation (ICLR), eq. 18–19"
    per_sample_state = True  # the memory banks
    Params = CRDParams

    def setup(self, ctx: SetupContext) -> None:
        """Linear embeddings g_s, g_t from the captured widths and a (pairs, N, feat_dim) memory bank per side."""
        p = self.params
        if ctx.num_train < 2:
            raise TinyKDError(f"crd needs at least 2 training samples for negatives, got {ctx.num_train}",
                              "use a larger training split")
        super().setup(ctx)
        self.num_data = ctx.num_train
        self.nce_k = min(p.nce_k, ctx.num_train - 1)
        widths = [(s.shape[1], t.shape[1]) for s, t in self.example_embeddings(ctx)]
        check_embedding_size(self.name, widths, sum((s + t + 2) * p.feat_dim for s, t in widths))
        device = ctx.student_example.logits.device
        self.embed_s = nn.ModuleList(nn.Linear(d_s, p.feat_dim) for d_s, _ in widths).to(device)
        self.embed_t = nn.ModuleList(nn.Linear(d_t, p.feat_dim) for _, d_t in widths).to(device)
        # Uniform init in ±sqrt(3 / feat_dim): rows of unit expected norm, as in the reference.
        bound = math.sqrt(3.0 / p.feat_dim)
        shape = (len(widths), ctx.num_train, p.feat_dim)
        self.register_buffer("memory_s", (torch.rand(shape, device=device) * 2 - 1) * bound)
        self.register_buffer("memory_t", (torch.rand(shape, device=device) * 2 - 1) * bound)
        self.register_buffer("z", torch.full((len(widths), 2), -1.0, device=device))  # (Z_s, Z_t); < 0: not set

    def draw_negatives(self, batch_size: int, device: torch.device) -> torch.Tensor:
        """(b, K) dataset indices drawn uniformly with replacement (the noise distribution); override to fix them."""
        return torch.randint(self.num_data, (batch_size, self.nce_k), device=device)

    def _scores(self, anchor: torch.Tensor, memory: torch.Tensor, k: int, side: int) -> torch.Tensor:
        """(b, 1 + K) exp(anchor · memory / τ) / Z, setting Z from this batch if it is the first."""
        e = torch.exp(torch.bmm(memory, anchor[:, :, None]).squeeze(2) / self.params.nce_t)
        if self.z[k, side] < 0:
            self.z[k, side] = e.detach().mean() * self.num_data
        return e / float(self.z[k, side])  # a constant: no gradient through Z

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> torch.Tensor:
        if not hasattr(self, "memory_s"):
            raise TinyKDError("crd was not set up: its embeddings and memory banks are built from the captured "
                              "shapes and the training-set size", "call term.setup(ctx) first (the Trainer does)")
        p = self.params
        pairs = self.embeddings(student, teacher)
        b = pairs[0][0].shape[0]
        index = batch.index.to(pairs[0][0].device, torch.long)
        if index.shape != (b,):
            raise TinyKDError(f"crd: batch.index has shape {tuple(index.shape)} for a batch of {b} samples",
                              "give one dataset index per sample")
        keep = index != -1  # -1: a synthetic sample (mixup) with no row in the memory banks
        if not bool(keep.all()):
            pairs = [(s[keep], t[keep]) for s, t in pairs]
            index = index[keep]
            b = int(index.numel())
            if b == 0:
                return student.logits.sum() * 0.0
        if b and (index.min() < 0 or index.max() >= self.num_data):
            raise TinyKDError(
                f"crd: batch.index holds {int(index.min())}..{int(index.max())}, outside [0, {self.num_data}): "
                f"the memory banks have one row per training sample",
                "pass the samples' indices in the training split the term was set up with (the Trainer does)")
        student_anchor = teacher_anchor = student.logits.new_zeros(())
        for k, (s, t) in enumerate(pairs):
            v_s = F.normalize(self.embed_s[k](s), dim=1)   # g_s, (b, feat_dim)
            v_t = F.normalize(self.embed_t[k](t), dim=1)   # g_t
            contrast = torch.cat([index[:, None], self.draw_negatives(b, index.device)], dim=1)  # (b, 1 + K)
            student_anchor = student_anchor + nce_loss(self._scores(v_s, self.memory_t[k][contrast], k, 0),
                                                       self.num_data)
            teacher_anchor = teacher_anchor + nce_loss(self._scores(v_t, self.memory_s[k][contrast], k, 1),
                                                       self.num_data)
            with torch.no_grad():  # momentum update of the positives' rows, renormalised
                m = p.nce_momentum
                self.memory_s[k][index] = F.normalize(self.memory_s[k][index] * m + v_s * (1 - m), dim=1)
                self.memory_t[k][index] = F.normalize(self.memory_t[k][index] * m + v_t * (1 - m), dim=1)
        self.parts = {"student_anchor": student_anchor.detach(), "teacher_anchor": teacher_anchor.detach()}
        return student_anchor + teacher_anchor
