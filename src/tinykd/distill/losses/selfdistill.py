"""Self-distillation's terms: the student teaches itself, no separate teacher (the schemes: schemes/selfdistill.py).

* ``byot`` (Be Your Own Teacher): shallow classifiers on intermediate layers learn from the labels, from the
  deepest classifier's predictions and from its feature. They are helpers of the loss term, so the exported
  student never contains them, unless ``EarlyExits`` keeps them as early exits.
* ``pskd`` (progressive self-knowledge distillation): the targets mix the label with the model's own prediction
  for that sample in the previous epoch, the mix growing over training.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ...errors import TinyKDError
from ...types import Batch, Outputs
from .base import LossTerm, Params, SetupContext, register_loss
from .feature import as_map, channels_first, conv1x1, feature_kind
from .response import hard_label_ce, soft_kl


# ----- BYOT ---------------------------------------------------------------------------------------
def pooled(x: torch.Tensor, kind: str) -> torch.Tensor:
    """(B, D): maps are globally average-pooled, tokens averaged over positions, vectors pass through."""
    if kind == "tokens":
        return x.mean(1)
    return x.flatten(2).mean(-1) if x.dim() > 2 else x


class ExitHead(nn.Module):
    """A BYOT shallow classifier: bottleneck to the deepest feature's width, global pooling, fc.

    ``forward`` returns (feature (B, D), logits (B, classes)); the feature is what the hint compares with the
    deepest one. Maps go through 1×1 conv-BN-ReLU; vectors through linear-BN-ReLU; tokens are read as maps.
    """

    def __init__(self, kind: str, example: torch.Tensor, width: int, num_classes: int):
        super().__init__()
        self.kind = kind
        x = as_map(example, kind)
        if x.dim() > 2:
            bn = nn.BatchNorm1d if x.dim() == 3 else nn.BatchNorm2d
            self.bottleneck = nn.Sequential(conv1x1(x.shape[1], width, x.dim() - 2), bn(width), nn.ReLU())
        else:
            self.bottleneck = nn.Sequential(nn.Linear(x.shape[1], width), nn.BatchNorm1d(width), nn.ReLU())
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.bottleneck(as_map(x, self.kind))
        feature = h.flatten(2).mean(-1) if h.dim() > 2 else h
        return feature, self.fc(feature)


class BYOTParams(Params):
    exits: list[str] = Field(min_length=1)  # student paths the shallow classifiers read, shallow to deep
    deepest: str  # student path of the deepest feature, e.g. the input of the final classifier
    temperature: float = Field(3.0, gt=0.0)
    alpha: float = Field(0.3, ge=0.0, le=1.0)  # shallow exits: (1 − alpha)·CE + alpha·KD from the deepest
    beta: float = Field(0.03, ge=0.0)  # weight of the feature hint


@register_loss
class BYOT(LossTerm):
    """CE(q_C, y) + Σ_i [(1 − α)·CE(q_i, y) + α·T²·KL(q_C^T ‖ q_i^T) + β·‖F_i − F_C‖²] over shallow exits i.

    Zhang et al. (ICCV 2019), eq. 1–3: the deepest classifier C learns from the labels; each shallow classifier i
    from the labels, from C's softened predictions and, through an L2 hint, from C's feature (all of C's
    outputs detached). F are globally pooled features (a shallow head's after its bottleneck); the hint is the
    squared L2 distance per sample, batch-averaged. The authors' code uses soft cross-entropy without T² and
    an unsquared distance; here KD is the T²-scaled KL of the other terms.
    """

    name = "byot"
    description = ("Be Your Own Teacher: auxiliary classifiers at chosen depths learn from labels, the deepest "
                   "exit (KD) and its feature (L2 hint); removed at export (or kept as early exits)")
    paper = "Zhang et al., ICCV 2019, Be Your Own Teacher: Improve the Performance of CNNs via Self Distillation"
    needs_teacher = False
    Params = BYOTParams

    def __init__(self, params: BYOTParams):
        super().__init__(params)
        if params.deepest in params.exits:
            raise TinyKDError(f"byot: the deepest feature '{params.deepest}' is also listed as an exit",
                              "list only shallower layers in exits")
        self.student_paths = (*params.exits, params.deepest)
        self.heads = nn.ModuleList()
        self.kinds: list[str] = []

    def setup(self, ctx: SetupContext) -> None:
        feats = ctx.student_example.features
        conv1d = channels_first(ctx.student)
        self.kinds = [feature_kind(feats[p].shape, conv1d, "student", p) for p in self.student_paths]
        width = pooled(feats[self.params.deepest], self.kinds[-1]).shape[1]
        classes = ctx.student_example.logits.shape[1]
        self.heads = nn.ModuleList(ExitHead(kind, feats[p], width, classes)
                                   for p, kind in zip(self.params.exits, self.kinds))

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> torch.Tensor:
        p = self.params
        deepest_logits = student.logits.detach()
        deepest_feature = pooled(student.features[p.deepest], self.kinds[-1]).detach()
        ce = hard_label_ce(student.logits, batch.y)
        total = ce
        parts = {"ce": ce.detach()}
        labelled = batch.y >= 0
        for i, (path, head) in enumerate(zip(p.exits, self.heads), start=1):
            feature, logits = head(student.features[path])
            ce_i = hard_label_ce(logits, batch.y)
            kd_i = soft_kl(logits, deepest_logits, p.temperature)
            hint_i = (feature - deepest_feature).pow(2).sum(1).mean()
            total = total + (1 - p.alpha) * ce_i + p.alpha * kd_i + p.beta * hint_i
            parts.update({f"exit{i}.ce": ce_i.detach(), f"exit{i}.kd": kd_i.detach(), f"exit{i}.hint": hint_i.detach()})
            if labelled.any():
                parts[f"exit{i}.acc"] = (logits[labelled].argmax(1) == batch.y[labelled]).float().mean()
        self.parts = parts
        return total


# ----- PS-KD --------------------------------------------------------------------------------------
class PSKDParams(Params):
    alpha_T: float = Field(0.8, ge=0.0, le=1.0)  # the mix at the last epoch (paper: 0.8)


@register_loss
class PSKD(LossTerm):
    """CE(z, (1 − α_t)·onehot(y) + α_t·p_{t−1}), α_t = α_T · t / T, with p_{t−1} the model's own softmax for that
    sample in the previous epoch (one-hot before it has one).

    Kim, Ji, Yoon & Hwang (ICCV 2021), eq. 5–6 and the authors' code: predictions are kept per sample by dataset
    index in a bank (a buffer of this term, so it is checkpointed and resume stays exact), written in the same
    forward pass that uses the previous value. Samples without a label or an index (transfer, mixup) are skipped.
    """

    name = "pskd"
    description = ("Progressive self-KD: targets mix the label with the model's own previous-epoch prediction, "
                   "α_t = α_T·t/T (replaces ce)")
    paper = "Kim, Ji, Yoon & Hwang, ICCV 2021, Self-Knowledge Distillation with Progressive Refinement of Targets"
    needs_teacher = False
    per_sample_state = True  # the bank of previous-epoch predictions
    Params = PSKDParams

    def __init__(self, params: PSKDParams):
        super().__init__(params)
        self.alpha = 0.0
        self.register_buffer("bank", torch.zeros(0, 0))
        self.register_buffer("seen", torch.zeros(0, dtype=torch.bool))

    def setup(self, ctx: SetupContext) -> None:
        if ctx.num_train == 0:
            raise TinyKDError("pskd keeps one prediction per training sample and needs a train split",
                              "use pskd with a dataset, not with a batch source")
        classes = ctx.student_example.logits.shape[1]
        self.bank = torch.zeros(ctx.num_train, classes)
        self.seen = torch.zeros(ctx.num_train, dtype=torch.bool)

    def start_epoch(self, epoch: int, epochs: int) -> None:
        self.alpha = self.params.alpha_T * epoch / epochs

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> torch.Tensor:
        keep = (batch.y >= 0) & (batch.index >= 0)
        if not bool(keep.any()):
            return student.logits.sum() * 0.0
        z, y, idx = student.logits[keep], batch.y[keep], batch.index[keep]
        onehot = F.one_hot(y, z.shape[1]).to(z.dtype)
        previous = torch.where(self.seen[idx, None], self.bank[idx], onehot)
        target = (1 - self.alpha) * onehot + self.alpha * previous
        loss = -(target * F.log_softmax(z, dim=1)).sum(1).mean()
        with torch.no_grad():
            self.bank[idx] = F.softmax(z, dim=1)
            self.seen[idx] = True
        self.parts = {"alpha": torch.tensor(self.alpha)}
        return loss
