"""Feature terms whose helpers re-encode the features before comparing them: factor transfer (ft) and
knowledge review (reviewkd).

Both read maps (B, C, H, W) or (B, C, L), tokens (B, T, D) as (B, D, T) maps, and vectors (B, C) as maps
whose spatial sizes are all 1 (of the spatial rank of the maps they are compared or fused with; 1×1 maps
when every compared feature is a vector). On a map of size 1 the papers' 3×3 convolutions become 1×1 (the
same function: a padded 3×3 kernel reads its centre tap alone there). Both name their layers as the other
feature terms do (``student``/``teacher``, ``pairs``), but default to ``pairs: auto``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from ...errors import TinyKDError
from ...types import Batch, Outputs
from .base import register_loss
from .feature import FeatureTerm, Kind, PairParams, as_map, match_spatial, shape_str

LEAKY_SLOPE = 0.1  # the negative slope of the factor-transfer modules' LeakyReLUs (the authors' code)


class AutoPairParams(PairParams):
    """PairParams whose layers default to ``pairs: auto`` when neither paths nor pairs are given."""

    pairs: list[tuple[str, str]] | str | None = Field("auto", validate_default=True)

    @model_validator(mode="before")
    @classmethod
    def _paths_replace_auto(cls, data):
        if isinstance(data, dict) and "pairs" not in data and ("student" in data or "teacher" in data):
            data = {**data, "pairs": None}  # student/teacher paths given: no default pairs: auto alongside them
        return data


def conv(rank: int, c_in: int, c_out: int, kernel: int, *, bias: bool = False) -> nn.Conv1d | nn.Conv2d:
    """A stride-1 convolution that keeps the spatial size, over maps with ``rank`` spatial dimensions."""
    return (nn.Conv1d if rank == 1 else nn.Conv2d)(c_in, c_out, kernel, padding=kernel // 2, bias=bias)


def batch_norm(rank: int, channels: int) -> nn.BatchNorm1d | nn.BatchNorm2d:
    return (nn.BatchNorm1d if rank == 1 else nn.BatchNorm2d)(channels)


def kernel_size(x: torch.Tensor) -> int:
    """3 for the 3×3 convolutions of both papers, 1 on a map of size 1 (a vector), where a padded 3×3 kernel
    computes with its centre tap alone: the same function with a ninth of the weights."""
    return 1 if all(d == 1 for d in x.shape[2:]) else 3


def as_rank(x: torch.Tensor, kind: Kind, rank: int) -> torch.Tensor:
    """(B, C, *spatial) with ``rank`` spatial dimensions: tokens become (B, D, T), a vector (B, C, 1[, 1])."""
    return x.view(*x.shape, *([1] * rank)) if kind == "vector" else as_map(x, kind)


class ReencodingTerm(FeatureTerm):
    """Base of ft and reviewkd: pairs of maps of one spatial rank, each side read by ``as_rank``."""

    Params = AutoPairParams

    def spatial_rank(self, pairs: list[int], examples: list[tuple[torch.Tensor, torch.Tensor]], why: str) -> int:
        """The spatial rank shared by the non-vector features of ``pairs`` (2 when all are vectors)."""
        first: dict[int, int] = {}  # spatial rank -> the first pair with a feature of that rank
        for i in pairs:
            ranks = {x.dim() - 2 for x, kind in zip(examples[i], self.kinds[i]) if kind != "vector"}
            if len(ranks) > 1:
                raise self.mismatch(i, examples[i][0].shape, examples[i][1].shape,
                                    "have different spatial ranks (2-D maps vs 1-D maps/tokens)",
                                    "pair layers of the same kind in both networks")
            for rank in ranks:
                first.setdefault(rank, i)
        if len(first) > 1:
            i, j = sorted(first.values())
            s, t = self.pairs[i]
            raise self.mismatch(j, examples[j][0].shape, examples[j][1].shape,
                                f"are maps of another spatial rank than student '{s}' {shape_str(examples[i][0].shape)}"
                                f" and teacher '{t}' {shape_str(examples[i][1].shape)} ({why})",
                                "pair layers of one kind: all 2-D maps, or all 1-D maps or tokens")
        return next(iter(first), 2)

    def map_pairs(self, student: Outputs, teacher: Outputs):
        """(student map, teacher map, detached) of each pair, both with the pair's spatial rank."""
        for (s, t, s_kind, t_kind), rank in zip(self.features(student, teacher), self.ranks):
            yield as_rank(s, s_kind, rank), as_rank(t, t_kind, rank)


# ----- Factor transfer ----------------------------------------------------------------------------
class FTParams(AutoPairParams):
    rate: float = Field(0.5, gt=0.0, le=4.0)  # k: the factor has round-down(k · C_t) channels (at least 1)
    p: float = Field(1.0, ge=1.0, le=8.0)  # the p-norm of the factor difference (the paper uses p = 1)
    paraphraser_epochs: int = Field(1, ge=0)  # the paper's stage 1 (the paraphraser alone); 0: trained jointly

    @model_validator(mode="after")
    def _last_stage_by_default(self):
        if self.pairs == "auto" and self.num_pairs is None:
            self.num_pairs = 1  # the paper paraphrases the teacher's last stage
        return self


def conv_bn_lrelu(rank: int, c_in: int, c_out: int, kernel: int, transposed: bool = False) -> list[nn.Module]:
    """A 3×3 (transposed) convolution keeping the size, BN, LeakyReLU(0.1): a layer of a paraphraser or translator."""
    if transposed:
        layer = (nn.ConvTranspose1d if rank == 1 else nn.ConvTranspose2d)(c_in, c_out, kernel, padding=kernel // 2,
                                                                         bias=False)
    else:
        layer = conv(rank, c_in, c_out, kernel)
    return [layer, batch_norm(rank, c_out), nn.LeakyReLU(LEAKY_SLOPE)]


class Paraphraser(nn.Module):
    """A convolutional auto-encoder of the teacher's map: C_t → C_t → F → F channels, then back F → C_t → C_t."""

    def __init__(self, rank: int, channels: int, factor_channels: int, kernel: int = 3):
        super().__init__()
        c, f, k = channels, factor_channels, kernel
        self.encoder = nn.Sequential(*conv_bn_lrelu(rank, c, c, k), *conv_bn_lrelu(rank, c, f, k),
                                     *conv_bn_lrelu(rank, f, f, k))
        self.decoder = nn.Sequential(*conv_bn_lrelu(rank, f, f, k, True), *conv_bn_lrelu(rank, f, c, k, True),
                                     *conv_bn_lrelu(rank, c, c, k, True))


def translator(rank: int, channels: int, factor_channels: int, kernel: int = 3) -> nn.Sequential:
    """The student's side: C_s → C_s → F → F channels, the paraphraser encoder's layout."""
    c, f, k = channels, factor_channels, kernel
    return nn.Sequential(*conv_bn_lrelu(rank, c, c, k), *conv_bn_lrelu(rank, c, f, k), *conv_bn_lrelu(rank, f, f, k))


def factor_vector(x: torch.Tensor) -> torch.Tensor:
    """A factor map (B, F, *spatial) as L2-normalised rows (B, F·|spatial|)."""
    return F.normalize(x.flatten(1), dim=1)


@register_loss
class FactorTransfer(ReencodingTerm):
    """mean over samples and elements of |T(s)/‖T(s)‖₂ − E(t)/‖E(t)‖₂|^p, with E the encoder of a paraphraser trained
    to reconstruct the teacher's map t (L2) and T a translator on the student's map s.

    Kim, Park & Kwak (NeurIPS 2018): the paraphraser is a convolutional auto-encoder on the teacher's last
    feature map (3×3 convolutions keeping the size: C_t → C_t → F → F, then transposed F → F → C_t → C_t,
    each followed by BN and LeakyReLU(0.1) as in the authors' code), F = round-down(rate · C_t) the factor
    channels (k = 0.5 in the paper), trained with the reconstruction loss ‖t − P(t)‖² (the mean squared error
    here). The translator (C_s → C_s → F → F, the same layers) turns the student's map into a factor, and the
    student learns to match the teacher's factor: the paper's L_FT = ‖F_T/‖F_T‖₂ − F_S/‖F_S‖₂‖_p (Eq. 3), the
    flattened factors L2-normalised per sample. The value is the mean over the B·F·H·W elements of |·|^p: for
    the paper's p = 1 the per-sample 1-norm divided by F·H·W, a constant absorbed by the weight (the paper's
    β/2); for p > 1 the p-th power of the norm divided by F·H·W, as the peers' code computes it (p = 2: an
    MSE). A factor of a larger map is adaptive-average-pooled to the smaller one's size. Both modules are the
    term's helpers.

    The paper trains the paraphraser first (stage 1) and then the student with the paraphraser fixed; tinykd
    does the same by default: for the first ``paraphraser_epochs`` epochs (default 1, part of train.epochs
    and of its learning-rate schedule) the term trains alone (``exclusive``: the student and the other terms
    wait, logging 0) on the reconstruction loss; from then on the paraphraser is frozen (no gradient,
    BatchNorm in eval mode) and the value is the factor loss alone. ``paraphraser_epochs: 0`` trains the
    paraphraser jointly instead: the value is the factor loss plus the reconstruction loss, and the factor
    loss compares with the detached teacher factor, so the student's loss never moves the paraphraser. Its
    target then moves while the student chases it: on a small CNN pair (tests/test_losses_review.py's data,
    kd + 10·ft, 15 epochs) the joint factor loss rose again in epochs 3–4 and ended at 0.028, against 0.0074
    after one epoch of paraphraser training first, hence the paper's schedule by default. Parts: ``factor``,
    ``reconstruction``.

    Layers: ``student``/``teacher`` paths, ``pairs`` (each pair with its own modules, values summed), or
    ``pairs: auto``, the default, which pairs the last stages (num_pairs: 1 unless given). Add ce or kd.
    """

    name = "ft"
    description = ("factor transfer: match L2-normalised factors of a student translator and a teacher paraphraser "
                   "(a conv auto-encoder trained to reconstruct the teacher's map)")
    paper = ("Kim, Park & Kwak, NeurIPS 2018, Paraphrasing Complex Network: Network Compression via Factor Transfer "
             "(paraphraser, translator, Eq. 3)")
    Params = FTParams

    def __init__(self, params: FTParams):
        super().__init__(params)
        self.paraphrasers = nn.ModuleList()
        self.translators = nn.ModuleList()
        self.ranks: list[int] = []
        # While True the trainer trains with this term alone (stage 1); before the first epoch counts as stage 1.
        self.exclusive = params.paraphraser_epochs > 0
        self.frozen = False  # stage 2 of the two-stage schedule: the paraphraser is fixed

    def build(self, examples: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        paraphrasers, translators, self.ranks = [], [], []
        for i, (s_x, t_x) in enumerate(examples):
            rank = self.spatial_rank([i], examples, "ft compares maps of one spatial rank")
            s_m, t_m = as_rank(s_x, self.kinds[i][0], rank), as_rank(t_x, self.kinds[i][1], rank)
            factor = max(1, int(t_m.shape[1] * self.params.rate))
            paraphrasers.append(Paraphraser(rank, t_m.shape[1], factor, kernel_size(t_m)))
            translators.append(translator(rank, s_m.shape[1], factor, kernel_size(s_m)))
            self.ranks.append(rank)
        self.paraphrasers, self.translators = nn.ModuleList(paraphrasers), nn.ModuleList(translators)

    def start_epoch(self, epoch: int, epochs: int) -> None:
        if self.params.paraphraser_epochs >= epochs:
            raise TinyKDError(f"ft: paraphraser_epochs {self.params.paraphraser_epochs} leaves none of the {epochs} "
                              "training epochs to the student (the paraphraser trains alone in those epochs)",
                              f"use paraphraser_epochs < {epochs}, or 0 to train the paraphraser jointly")
        two_stage = self.params.paraphraser_epochs > 0
        self.exclusive = two_stage and epoch <= self.params.paraphraser_epochs
        self.frozen = two_stage and not self.exclusive
        self.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen:
            self.paraphrasers.eval()  # a fixed paraphraser keeps its BatchNorm statistics
        return self

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> torch.Tensor:
        factors, reconstructions = [], []
        for (s, t), paraphraser, translate in zip(self.map_pairs(student, teacher), self.paraphrasers,
                                                  self.translators):
            if self.frozen:
                with torch.no_grad():
                    f_t = paraphraser.encoder(t)
            else:
                f_t = paraphraser.encoder(t)
                reconstructions.append(F.mse_loss(paraphraser.decoder(f_t), t))
                if self.exclusive:
                    continue  # stage 1: the paraphraser alone
            f_s, f_t = match_spatial(translate(s), f_t.detach())
            factors.append((factor_vector(f_s) - factor_vector(f_t)).abs().pow(self.params.p).mean())
        self.parts = {}
        if factors:
            self.parts["factor"] = torch.stack(factors).sum().detach()
            if len(factors) > 1:
                self.parts.update({name: f.detach() for name, f in zip(self.part_names, factors)})
        if reconstructions:
            self.parts["reconstruction"] = torch.stack(reconstructions).sum().detach()
        return torch.stack(factors + reconstructions).sum()


# ----- Knowledge review ---------------------------------------------------------------------------
class ReviewKDParams(AutoPairParams):
    mid_channels: int = Field(64, ge=1, le=4096)  # channels of the fused residual (the authors' CIFAR setting)
    # The loss weight ramps as min(epoch / warmup_epochs, 1) (the authors' released training code: 20 epochs on
    # CIFAR); 0, the default, is the paper's constant weight.
    warmup_epochs: int = Field(0, ge=0, le=100_000)


class ABF(nn.Module):
    """Attention-based fusion of one student stage with the fused residual of the deeper stages.

    conv1 (1×1 + BN) takes the stage to ``mid`` channels; where a deeper residual exists it is upsampled
    (nearest) to the stage's size and mixed with it by two per-position attention maps (1×1 conv over
    both, sigmoid); conv2 (3×3 + BN) maps the result to the teacher's channels.
    """

    def __init__(self, rank: int, c_in: int, mid: int, c_out: int, fuse: bool, kernel: int = 3):
        super().__init__()
        self.conv1 = nn.Sequential(conv(rank, c_in, mid, 1), batch_norm(rank, mid))
        self.attention = nn.Sequential(conv(rank, 2 * mid, 2, 1, bias=True), nn.Sigmoid()) if fuse else None
        self.conv2 = nn.Sequential(conv(rank, mid, c_out, kernel), batch_norm(rank, c_out))

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None,
                out_size: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """(output at ``out_size`` with the teacher's channels, the fused residual for the next shallower stage)."""
        x = self.conv1(x)
        if self.attention is not None:
            residual = F.interpolate(residual, size=x.shape[2:], mode="nearest")
            a = self.attention(torch.cat([x, residual], dim=1))  # (B, 2, *spatial)
            x = x * a[:, :1] + residual * a[:, 1:]
        if tuple(x.shape[2:]) != tuple(out_size):
            x = F.interpolate(x, size=out_size, mode="nearest")
        return self.conv2(x), x


HCL_LEVELS = (4, 2, 1)  # pooled sizes of the hierarchical context loss, finest first


def hcl(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    """Hierarchical context loss of one stage: MSE at full resolution (weight 1) and of the maps adaptive-average-
    pooled to 4, 2, 1 (weights ½, ¼, ⅛), levels not smaller than the map skipped, divided by the weights' sum."""
    pool = F.adaptive_avg_pool1d if f_s.dim() == 3 else F.adaptive_avg_pool2d
    loss, weight, total = F.mse_loss(f_s, f_t), 1.0, 1.0
    for level in HCL_LEVELS:
        if level >= min(f_s.shape[2:]):
            continue
        weight /= 2
        loss = loss + weight * F.mse_loss(pool(f_s, level), pool(f_t, level))
        total += weight
    return loss / total


@register_loss
class ReviewKD(ReencodingTerm):
    """Σ_stages HCL(ABF_i(s_i, residual_{i+1}), t_i): each student stage, fused top-down with the deeper stages,
    against the teacher's map of the same stage.

    Chen, Liu, Zhao & Jia (CVPR 2021): the student's stages are reviewed from the deepest to the shallowest;
    stage i's map passes an attention-based fusion (ABF) module: a 1×1 conv + BN to ``mid_channels``, a
    fusion with the residual of stage i+1 (upsampled, nearest, to stage i's size) weighted by two learned
    per-position attention maps (a 1×1 conv over both, sigmoid), then a 3×3 conv + BN to the teacher stage's
    channels; the fused map (resized, nearest, to the teacher stage's size) is the residual stage i−1 fuses.
    The deepest stage has no residual. Each output is compared with the teacher's map by the hierarchical
    context loss (HCL): the MSE at full resolution plus the MSE of the maps adaptive-average-pooled to 4×4,
    2×2 and 1×1 (4, 2, 1 for 1-D maps), weighted 1, ½, ¼, ⅛ and divided by the sum of the weights used, a
    level skipped when it is not smaller than the map (as in the authors' code); summed over stages. The
    ABFs are the term's helpers; mid_channels 64 is the authors' CIFAR setting (256 on ImageNet).

    Layers: ``pairs`` from the shallowest stage to the deepest (the fusion order), ``student``/``teacher``
    for one stage (no fusion: an ABF and HCL alone), or ``pairs: auto``, the default (every stage the
    smaller network has; num_pairs for fewer). All stages must be maps of one spatial rank: a vector (the
    pooled feature, which the authors add as a last stage) is read as a map of size 1 (1×1). Add ce or kd.
    ``warmup_epochs`` scales the loss by min(epoch / warmup_epochs, 1), the warm-up of the authors' released
    training code (not in the paper's equations).
    """

    name = "reviewkd"
    description = ("knowledge review: student stages fused top-down by attention-based fusion, matched to the "
                   "teacher's stages with the hierarchical context loss")
    paper = "Chen, Liu, Zhao & Jia, CVPR 2021, Distilling Knowledge via Knowledge Review (ABF, HCL)"
    Params = ReviewKDParams

    def __init__(self, params: ReviewKDParams):
        super().__init__(params)
        self.abfs = nn.ModuleList()
        self.ranks: list[int] = []
        self.warmup = self._warmup(1)

    def _warmup(self, epoch: int) -> float:
        w = self.params.warmup_epochs
        return min(epoch / w, 1.0) if w else 1.0

    def start_epoch(self, epoch: int, epochs: int) -> None:
        self.warmup = self._warmup(epoch)

    def build(self, examples: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        rank = self.spatial_rank(list(range(len(examples))), examples,
                                 "reviewkd fuses every stage with the next deeper one")
        self.ranks = [rank] * len(examples)
        abfs = []
        for i, (s_x, t_x) in enumerate(examples):
            s_m, t_m = as_rank(s_x, self.kinds[i][0], rank), as_rank(t_x, self.kinds[i][1], rank)
            # conv2 acts at the teacher stage's size
            abfs.append(ABF(rank, s_m.shape[1], self.params.mid_channels, t_m.shape[1], fuse=i < len(examples) - 1,
                            kernel=kernel_size(t_m)))
        self.abfs = nn.ModuleList(abfs)

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> torch.Tensor:
        maps = list(self.map_pairs(student, teacher))
        losses, residual = [None] * len(maps), None
        for i in reversed(range(len(maps))):  # deepest stage first
            s, t = maps[i]
            out, residual = self.abfs[i](s, residual, t.shape[2:])
            losses[i] = hcl(out, t)
        return self.warmup * self.total(losses)

