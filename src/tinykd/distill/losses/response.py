"""Response-based terms: the student learns from the teacher's outputs (and from labels)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import nn

from ...errors import RecipeError, TinyKDError
from ...types import Batch, Outputs
from .adversarial import grad_reverse
from .base import MAX_TEMPERATURE, LossTerm, Params, register_loss


def hard_label_ce(logits: torch.Tensor, y: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy over the labelled rows only (label -1 marks an unlabelled sample or an unscored token).

    Rows are logits (N, C) with labels (N,); sequence logits (B, T, V) with targets (B, T) are read as B·T rows
    (give ``token_rows``' rows instead where a padding mask must be honoured)."""
    if logits.dim() == 3:
        logits, y = logits.flatten(0, 1), y.flatten()
    mask = y >= 0
    if not bool(mask.any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits[mask], y[mask], label_smoothing=label_smoothing)


def soft_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float | torch.Tensor) -> torch.Tensor:
    """KL(p_teacher^T || p_student^T) averaged over the batch and scaled by T².

    Hinton et al. (2015, §2): the gradients of the soft term scale as 1/T², so multiplying by T² keeps
    its contribution comparable to the hard term when the temperature changes.
    """
    log_p_s = F.log_softmax(student_logits / temperature, dim=-1)
    log_p_t = F.log_softmax(teacher_logits / temperature, dim=-1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * temperature**2


def standardize(logits: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Z-score of each sample's logits, (z − mean(z)) / std(z) over the classes.

    Sun et al. (CVPR 2024), Algorithm 1: the teacher's and the student's logits are standardised separately
    before the (base) temperature, so the student matches the teacher's logit *relations* rather than its
    logit range and variance. std is the population one (1/K), as the paper's definition of σ; the eps keeps
    constant logits finite.
    """
    mean = logits.mean(dim=-1, keepdim=True)
    std = logits.std(dim=-1, keepdim=True, unbiased=False)
    return (logits - mean) / (std + eps)


def _float32(logits: torch.Tensor) -> torch.Tensor:
    """Half-precision logits cast up: a softmax over a large vocabulary, and the divergences, lose too much in
    fp16/bf16. float32 and float64 logits are returned as they are."""
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


def scored_positions(logits: torch.Tensor, batch: Batch, mask: torch.Tensor | None = None) -> torch.Tensor:
    """(B, T) bool: the positions of sequence logits (B, T, V) that are scored, a target y >= 0 and, when a
    mask is given (the batch's, else the outputs'), mask > 0."""
    y = batch.y
    if y.shape != logits.shape[:2]:
        raise TinyKDError(f"sequence logits {tuple(logits.shape)} need targets of shape {tuple(logits.shape[:2])}; "
                          f"got {tuple(y.shape)}", "give one next-token target per position, -1 where not scored")
    keep = y >= 0
    mask = batch.mask if batch.mask is not None else mask
    if mask is not None:
        if mask.shape != y.shape:
            raise TinyKDError(f"mask {tuple(mask.shape)} does not match the targets {tuple(y.shape)}",
                              "give one mask value per position (1 scored, 0 not)")
        keep = keep & (mask > 0)
    return keep


def token_rows(student: Outputs, teacher: Outputs | None, batch: Batch,
               name: str = "") -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """(student, teacher, y) as rows of one prediction each, the teacher's detached, half precision cast up.

    Classification logits (N, C) with labels (N,) pass through unchanged: every sample is a row, labelled or not.
    Sequence logits (B, T, V) with targets (B, T) become the scored positions only (``scored_positions``),
    flattened to (N_tokens, V) and (N_tokens,): a term's mean over rows is then a mean per real token, and the
    values at padding or prompt positions (even non-finite ones) never reach it.
    """
    s = student.logits
    t = None if teacher is None else teacher.logits.detach()
    if t is not None and s.shape != t.shape:
        raise TinyKDError(f"{name}: student logits {tuple(s.shape)} and teacher logits {tuple(t.shape)} differ in shape",
                          "give the student and the teacher the same num_classes (vocabulary)")
    y = batch.y
    if s.dim() == 3:
        keep = scored_positions(s, batch, student.mask)
        s, y = s[keep], y[keep]
        t = None if t is None else t[keep]
    return _float32(s), None if t is None else _float32(t), y


def response_logits(student: Outputs, teacher: Outputs, batch: Batch, name: str,
                    logit_standardize: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``token_rows``' (student, teacher, y), the two logits optionally z-scored."""
    s, t, y = token_rows(student, teacher, batch, name)
    if logit_standardize:
        s, t = standardize(s), standardize(t)
    return s, t, y


def no_rows(logits: torch.Tensor) -> torch.Tensor:
    """The loss of a batch without a scored row: zero, still in the student's graph."""
    return logits.sum() * 0.0


class CEParams(Params):
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)


@register_loss
class CrossEntropy(LossTerm):
    name = "ce"
    description = "cross-entropy with the true labels (the from-scratch objective)"
    paper = "—"
    needs_teacher = False
    Params = CEParams

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> torch.Tensor:
        s, _, y = token_rows(student, None, batch, self.name)
        return hard_label_ce(s, y, self.params.label_smoothing)


class TemperatureSchedule(Params):
    start: float = Field(gt=0.0)
    end: float = Field(gt=0.0)


class KDParams(Params):
    temperature: float = Field(4.0, gt=0.0)
    alpha: float = Field(0.9, ge=0.0, le=1.0)
    logit_standardize: bool = False
    temperature_schedule: TemperatureSchedule | None = None  # linear from start (epoch 1) to end (last epoch)


@register_loss
class HintonKD(LossTerm):
    """alpha · T² · KL(softmax(t/T) ‖ softmax(s/T)) + (1 − alpha) · CE(s, y)."""

    name = "kd"
    description = ("Hinton KD: softened teacher probabilities at temperature T (T²-scaled) plus hard labels; "
                   "optional logit standardisation and linear temperature schedule")
    paper = ("Hinton, Vinyals & Dean 2015, Distilling the Knowledge in a Neural Network; "
             "logit_standardize: Sun et al. CVPR 2024, Logit Standardization in Knowledge Distillation")
    Params = KDParams

    def __init__(self, params: KDParams):
        super().__init__(params)
        schedule = params.temperature_schedule
        if schedule is not None and "temperature" in params.model_fields_set:
            raise RecipeError("kd: both 'temperature' and 'temperature_schedule' are set",
                              "keep one: a fixed temperature, or temperature_schedule: {start: ..., end: ...}")
        self.temperature = schedule.start if schedule else params.temperature

    def start_epoch(self, epoch: int, epochs: int) -> None:
        """A simple non-learned curriculum: T moves linearly from start at epoch 1 to end at the last epoch."""
        schedule = self.params.temperature_schedule
        if schedule is not None:
            progress = (epoch - 1) / max(1, epochs - 1)
            self.temperature = schedule.start + (schedule.end - schedule.start) * progress

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> torch.Tensor:
        p = self.params
        s, t, y = token_rows(student, teacher, batch, self.name)
        if not len(s):
            return no_rows(s)
        soft = soft_kl(*((standardize(s), standardize(t)) if p.logit_standardize else (s, t)), self.temperature)
        hard = hard_label_ce(s, y)
        self.parts = {"soft": soft.detach(), "hard": hard.detach()}
        return p.alpha * soft + (1.0 - p.alpha) * hard


class ReverseKDParams(Params):
    temperature: float = Field(1.0, gt=0.0)
    alpha: float = Field(1.0, ge=0.0, le=1.0)
    logit_standardize: bool = False


@register_loss
class ReverseKD(LossTerm):
    """alpha · T² · KL(softmax(s/T) ‖ softmax(t/T)) + (1 − alpha) · CE(s, y)."""

    name = "reverse_kd"
    description = "reverse KL KL(p_student ‖ p_teacher) at temperature T (mode-seeking), optional hard-label mix"
    paper = "Gu, Dong, Wei & Huang 2024, MiniLLM: Knowledge Distillation of Large Language Models (eq. 1)"
    Params = ReverseKDParams

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> torch.Tensor:
        p = self.params
        s, t, y = token_rows(student, teacher, batch, self.name)
        if not len(s):
            return no_rows(s)
        zs, zt = (standardize(s), standardize(t)) if p.logit_standardize else (s, t)
        # MiniLLM eq. 1: KL(q_θ ‖ p) = Σ q_θ (log q_θ − log p), with the student q_θ in front; T² as in Hinton KD.
        log_p_s = F.log_softmax(zs / p.temperature, dim=-1)
        log_p_t = F.log_softmax(zt / p.temperature, dim=-1)
        soft = F.kl_div(log_p_t, log_p_s, reduction="batchmean", log_target=True) * p.temperature**2
        hard = hard_label_ce(s, y)
        self.parts = {"soft": soft.detach(), "hard": hard.detach()}
        return p.alpha * soft + (1.0 - p.alpha) * hard


def log_mixture_ratio(beta: float, d: torch.Tensor) -> torch.Tensor:
    """log(M/p) = log(1 − β + β·e^d) for the mixture M = β·q + (1−β)·p, from d = log q − log p.

    As log1p(β·expm1(d)) it keeps its precision when it is small (β near 0, or q near p), where the difference of
    the two rounded logarithms log M − log p would not; above d = 30 it is d + log(β + (1−β)·e^(−d)), so e^d
    never overflows. Both branches see clamped inputs and stay finite, and so do their gradients.
    """
    large = d > 30.0
    near = torch.log1p(beta * torch.expm1(d.clamp(max=30.0)))
    d_far = d.clamp(min=30.0)
    far = d_far + torch.log(beta + (1.0 - beta) * torch.exp(-d_far))
    return torch.where(large, far, near)


def generalized_jsd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, beta: float,
                    temperature: float, normalized: bool = False) -> torch.Tensor:
    """GKD's JSD(β) between p_t^T and p_s^T, row-averaged and T²-scaled; β=0 / β=1 are forward / reverse KL.

    Agarwal et al. (2024), generalised JSD: with M = β·p_t + (1−β)·p_s,
        JSD(β) = β·KL(p_t ‖ M) + (1−β)·KL(p_s ‖ M).
    At the endpoints this expression vanishes (M becomes p_s or p_t), and near them it behaves like forward
    KL(p_t ‖ p_s) (β → 0) or reverse KL(p_s ‖ p_t) (β → 1) only up to the factor β or 1−β. As in TRL's
    GKDTrainer, β=0 and β=1 are therefore defined as exactly forward and reverse KL, so a β sweep spans the two.
    Mind the scale near the ends: JSD(0.01) ≈ 0.01 · KL(p_t ‖ p_s), while β=0 is the full KL.

    ``normalized`` divides by β(1−β), which makes the sweep continuous: as β → 0, M = p_s + β(p_t − p_s), so
    KL(p_t ‖ M) → KL(p_t ‖ p_s) while KL(p_s ‖ M) = β²/2 · χ²(p_t ‖ p_s) + O(β³) (its first-order term
    β·Σ(p_t − p_s) is zero); hence JSD(β)/(β(1−β)) = KL(p_t ‖ M)/(1−β) + KL(p_s ‖ M)/β → KL(p_t ‖ p_s),
    and by symmetry → KL(p_s ‖ p_t) as β → 1. The values at β = 0 and 1 are then the limits, not a jump. That form
    takes log(M/p) from ``log_mixture_ratio``, since near the ends KL(p_s ‖ M)/β is a ratio of two small numbers.
    """
    log_p_s = F.log_softmax(student_logits / temperature, dim=-1)
    log_p_t = F.log_softmax(teacher_logits / temperature, dim=-1)

    def kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
        """KL(p ‖ q) per sample from log-probabilities, (N,)."""
        return (log_p.exp() * (log_p - log_q)).sum(-1)

    if beta == 0.0:
        jsd = kl(log_p_t, log_p_s)
    elif beta == 1.0:
        jsd = kl(log_p_s, log_p_t)
    elif normalized:
        d = log_p_t - log_p_s
        kl_s_m = -(log_p_s.exp() * log_mixture_ratio(beta, d)).sum(-1)  # KL(p_s ‖ M) = −Σ p_s log(M/p_s)
        kl_t_m = -(log_p_t.exp() * log_mixture_ratio(1.0 - beta, -d)).sum(-1)  # KL(p_t ‖ M)
        jsd = kl_t_m / (1.0 - beta) + kl_s_m / beta
    else:
        # log M = log(β·p_t + (1−β)·p_s), computed stably in log space.
        log_m = torch.logaddexp(log_p_t + math.log(beta), log_p_s + math.log(1.0 - beta))
        jsd = beta * kl(log_p_t, log_m) + (1.0 - beta) * kl(log_p_s, log_m)
    return jsd.mean() * temperature**2


class JSDParams(Params):
    beta: float = Field(0.5, ge=0.0, le=1.0)
    temperature: float = Field(1.0, gt=0.0)
    logit_standardize: bool = False
    normalized: bool = False  # divide by β(1−β): continuous from forward KL (β → 0) to reverse KL (β → 1)


@register_loss
class JSD(LossTerm):
    """T² · JSD(β)(p_t^T, p_s^T): forward KL at β=0, reverse KL at β=1, a generalised JSD in between (divided
    by β(1−β) when ``normalized``, so that the sweep is continuous)."""

    name = "jsd"
    description = ("generalised Jensen-Shannon divergence JSD(β): forward KL (β=0) ... reverse KL (β=1); "
                   "normalized: JSD(β)/(β(1−β)), continuous between the two")
    paper = ("Agarwal et al. 2024, On-Policy Distillation of Language Models: Learning from Self-Generated Mistakes "
             "(GKD, JSD(β))")
    Params = JSDParams

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> torch.Tensor:
        p = self.params
        s, t, _ = response_logits(student, teacher, batch, self.name, p.logit_standardize)
        if not len(s):
            return no_rows(s)
        return generalized_jsd(s, t, p.beta, p.temperature, p.normalized)


@register_loss
class LogitMSE(LossTerm):
    """1/(2N) · Σ_n ‖z_s(x_n) − z_t(x_n)‖²: regression of the student's logits on the teacher's."""

    name = "logit_mse"
    description = "regress the student's logits on the teacher's logits (squared error, no softmax)"
    paper = "Ba & Caruana 2014, Do Deep Nets Really Need to be Deep? (mimic learning: L2 regression on logits)"

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> torch.Tensor:
        s, t, _ = response_logits(student, teacher, batch, self.name)
        if not len(s):
            return no_rows(s)
        # Ba & Caruana's L(W, β) = 1/(2T) Σ_t ‖g(x^(t); W, β) − z^(t)‖²₂ over the T training cases; here per batch.
        return 0.5 * (s - t).pow(2).sum(-1).mean()


class DKDParams(Params):
    alpha: float = Field(1.0, ge=0.0)  # weight of TCKD
    beta: float = Field(8.0, ge=0.0)  # weight of NCKD
    temperature: float = Field(4.0, gt=0.0)
    warmup_epochs: int = Field(0, ge=0)  # the DKD weight ramps linearly to 1 over these epochs (paper: 20)
    logit_standardize: bool = False


def dkd_parts(student_logits: torch.Tensor, teacher_logits: torch.Tensor, y: torch.Tensor,
              temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(TCKD, NCKD), each T²-scaled and averaged over the samples given (all must be labelled).

    Zhao et al. (CVPR 2022) rewrite KD as TCKD + (1 − p_target^T) · NCKD, where, with b = [p_target, 1 − p_target]
    the binary target/non-target probabilities and p̂ the softmax over the non-target classes only,
        TCKD = KL(b^T ‖ b^S),  NCKD = KL(p̂^T ‖ p̂^S);
    DKD drops the coupling factor and weights the two freely: α·TCKD + β·NCKD.
    """
    n, classes = student_logits.shape
    target = F.one_hot(y, classes).bool()  # (N, K)
    z_s, z_t = student_logits / temperature, teacher_logits / temperature
    log_p_s, log_p_t = F.log_softmax(z_s, dim=-1), F.log_softmax(z_t, dim=-1)

    def binary(log_p: torch.Tensor) -> torch.Tensor:
        """log b = [log p_target, log(1 − p_target)], (N, 2); the second as a log-sum-exp over the other classes."""
        return torch.stack([log_p[target], log_p.masked_fill(target, -math.inf).logsumexp(-1)], dim=-1)

    log_b_s, log_b_t = binary(log_p_s), binary(log_p_t)
    tckd = (log_b_t.exp() * (log_b_t - log_b_s)).sum(-1).mean()
    # p̂: softmax over the K−1 non-target logits, (N, K−1).
    log_q_s = F.log_softmax(z_s[~target].view(n, classes - 1), dim=-1)
    log_q_t = F.log_softmax(z_t[~target].view(n, classes - 1), dim=-1)
    nckd = (log_q_t.exp() * (log_q_t - log_q_s)).sum(-1).mean()
    return tckd * temperature**2, nckd * temperature**2


@register_loss
class DKD(LossTerm):
    """warmup · (alpha · TCKD + beta · NCKD), over the labelled samples of the batch."""

    name = "dkd"
    description = ("Decoupled KD: target-class (TCKD) and non-target-class (NCKD) KD weighted separately; "
                   "labelled samples only; add a ce term as in the paper")
    paper = "Zhao, Cui, Song, Qiu & Liang, CVPR 2022, Decoupled Knowledge Distillation (DKD = α·TCKD + β·NCKD)"
    Params = DKDParams

    def __init__(self, params: DKDParams):
        super().__init__(params)
        self.warmup = self._warmup(1)

    def _warmup(self, epoch: int) -> float:
        """min(epoch / warmup_epochs, 1), as in the authors' code (1 when there is no warm-up)."""
        return min(epoch / self.params.warmup_epochs, 1.0) if self.params.warmup_epochs else 1.0

    def start_epoch(self, epoch: int, epochs: int) -> None:
        self.warmup = self._warmup(epoch)

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> torch.Tensor:
        p = self.params
        s, t, y = response_logits(student, teacher, batch, self.name, p.logit_standardize)
        # TCKD and NCKD are defined by the target class: unlabelled samples (y = -1) take no part, and the
        # mean is over the labelled samples; a batch with none contributes zero.
        labelled = y >= 0
        if not bool(labelled.any()):
            return no_rows(s)
        y = y[labelled]
        if int(y.max()) >= s.shape[1]:
            raise TinyKDError(f"dkd: label {int(y.max())} is out of range for logits of shape {tuple(s.shape)}",
                              "check that the model's num_classes matches the dataset")
        tckd, nckd = dkd_parts(s[labelled], t[labelled], y, p.temperature)
        self.parts = {"tckd": tckd.detach(), "nckd": nckd.detach(), "warmup": torch.tensor(self.warmup)}
        return self.warmup * (p.alpha * tckd + p.beta * nckd)


class CTKDParams(Params):
    temperature_init: float = Field(4.0, gt=0.0)
    temperature_min: float = Field(1.0, gt=0.0)
    temperature_max: float = Field(21.0, gt=0.0)
    lambda_max: float = Field(1.0, ge=0.0)  # final strength of the reversed gradient on the temperature
    curriculum_epochs: int = Field(10, ge=0)  # E_loops: epochs over which λ rises from 0 to lambda_max
    alpha: float = Field(0.9, ge=0.0, le=1.0)


@register_loss
class CTKD(LossTerm):
    """Hinton KD whose global temperature is learned adversarially: the student minimises the KD loss,
    the temperature maximises it through a gradient reversal layer whose strength λ follows a curriculum."""

    name = "ctkd"
    description = ("Curriculum Temperature KD: a learnable global temperature trained adversarially (gradient "
                   "reversal) with λ rising 0 → λ_max on a cosine curriculum")
    paper = "Li et al. AAAI 2023, Curriculum Temperature for Knowledge Distillation (global temperature version)"
    Params = CTKDParams

    def __init__(self, params: CTKDParams):
        super().__init__(params)
        lo, hi, init = params.temperature_min, params.temperature_max, params.temperature_init
        if not lo < init < hi:
            raise RecipeError(f"ctkd: temperature_init {init} must lie strictly between temperature_min {lo} "
                              f"and temperature_max {hi}", "e.g. temperature_min: 1, temperature_init: 4, temperature_max: 21")
        # The authors' code parameterises T = T_min + (T_max − T_min) · sigmoid(θ), keeping T in its range
        # with smooth gradients; θ starts where T = temperature_init.
        u = (init - lo) / (hi - lo)
        self.theta = nn.Parameter(torch.tensor(math.log(u / (1.0 - u))))
        self.lam = self.curriculum(0)

    def curriculum(self, n: int) -> float:
        """CTKD's cosine curriculum λ_n = λ_min + ½(λ_max − λ_min)(1 + cos((1 + min(n, E)/E)·π)), with λ_min = 0."""
        e = self.params.curriculum_epochs
        if e == 0:
            return self.params.lambda_max
        return 0.5 * self.params.lambda_max * (1.0 + math.cos((1.0 + min(n, e) / e) * math.pi))

    @property
    def temperature(self) -> torch.Tensor:
        """The current global temperature, a scalar in (temperature_min, temperature_max)."""
        lo, hi = self.params.temperature_min, self.params.temperature_max
        return lo + (hi - lo) * torch.sigmoid(self.theta)

    def start_epoch(self, epoch: int, epochs: int) -> None:
        self.lam = self.curriculum(epoch)  # n = the 1-based epoch, as in the authors' training loop

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> torch.Tensor:
        p = self.params
        s, t, y = token_rows(student, teacher, batch, self.name)
        if not len(s):
            return no_rows(s)
        # min over the student, max over the temperature: through the GRL, T receives −λ · ∂L/∂T and ascends the loss.
        temperature = grad_reverse(self.temperature, self.lam)
        soft = soft_kl(s, t, temperature)
        hard = hard_label_ce(s, y)
        self.parts = {"soft": soft.detach(), "hard": hard.detach(), "temperature": self.temperature.detach(),
                      "lambda": torch.tensor(self.lam)}
        return p.alpha * soft + (1.0 - p.alpha) * hard


# ----- DIST -----------------------------------------------------------------------------------------
def pearson_rows(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Pearson correlation of each row of ``a`` with the same row of ``b``, (N, K) -> (N,).

    The cosine of the centred rows. The denominator is clamped at eps rather than offset by it (the authors'
    code adds 1e-8), so equal rows correlate exactly 1 even when softened probabilities vary little, and a
    constant row (no variance, correlation undefined) counts as uncorrelated, 0.
    """
    a, b = a - a.mean(-1, keepdim=True), b - b.mean(-1, keepdim=True)
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(eps)


class DISTParams(Params):
    beta: float = Field(1.0, ge=0.0)  # weight of the inter-class relation
    gamma: float = Field(1.0, ge=0.0)  # weight of the intra-class relation
    temperature: float = Field(1.0, gt=0.0)  # the paper's ImageNet setting (4 on CIFAR-100)


@register_loss
class DIST(LossTerm):
    """T² · (beta · (1 − mean_i ρ(p_s[i,:], p_t[i,:])) + gamma · (1 − mean_j ρ(p_s[:,j], p_t[:,j]))).

    Huang et al. (NeurIPS 2022): with p = softmax(z/T) over a batch (B × C) and ρ the Pearson correlation,
    the inter-class relation compares each sample's prediction over the classes, the intra-class relation
    each class's probabilities over the batch; only relations are matched, not values, so a student need not
    reproduce a much stronger teacher's exact probabilities. Defaults are the paper's (β = γ = 1, T = 1 as on
    ImageNet). The intra-class relation needs two or more samples: a class column of one sample has no
    variance and counts as uncorrelated (ρ = 0).
    """

    name = "dist"
    description = ("DIST: Pearson-correlation match of softened predictions, per sample over classes (inter-class) "
                   "and per class over the batch (intra-class)")
    paper = "Huang, You, Wang, Qian & Xu, NeurIPS 2022, Knowledge Distillation from A Stronger Teacher (DIST)"
    Params = DISTParams

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> torch.Tensor:
        p = self.params
        s, t, _ = response_logits(student, teacher, batch, self.name)
        if not len(s):
            return no_rows(s)
        p_s, p_t = F.softmax(s / p.temperature, dim=-1), F.softmax(t / p.temperature, dim=-1)  # (N, C)
        inter = p.temperature**2 * (1.0 - pearson_rows(p_s, p_t).mean())
        intra = p.temperature**2 * (1.0 - pearson_rows(p_s.T, p_t.T).mean())
        self.parts = {"inter": inter.detach(), "intra": intra.detach()}
        return p.beta * inter + p.gamma * intra


# ----- Multi-level logit distillation ---------------------------------------------------------------
class MLKDParams(Params):
    temperatures: list[float] = Field([2.0, 3.0, 4.0, 5.0, 6.0], min_length=1)  # pydantic copies the default
    instance_weight: float = Field(1.0, ge=0.0)
    batch_weight: float = Field(1.0, ge=0.0)
    class_weight: float = Field(1.0, ge=0.0)

    @field_validator("temperatures")
    @classmethod
    def _positive_and_bounded(cls, temperatures: list[float]) -> list[float]:
        for value in temperatures:
            if not 0.0 < value <= MAX_TEMPERATURE:
                raise ValueError(f"every temperature must lie in (0, {MAX_TEMPERATURE:g}]; got {value:g}")
        return temperatures


def mlkd_levels(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                temperature: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(instance, batch, class) alignment at one temperature, with p = softmax(z/T) of shape (B, C).

    instance: T² · KL(p_t ‖ p_s) averaged over the batch (Hinton KD);
    batch:    Σ (G_t − G_s)² / B with G = p pᵀ, the B × B similarity of the samples' predictions;
    class:    Σ (M_t − M_s)² / C with M = pᵀ p, the C × C correlation of the classes over the batch.
    Only the instance level is T²-scaled, as in the authors' code.
    """
    log_p_s = F.log_softmax(student_logits / temperature, dim=-1)
    log_p_t = F.log_softmax(teacher_logits / temperature, dim=-1)
    p_s, p_t = log_p_s.exp(), log_p_t.exp()
    instance = (p_t * (log_p_t - log_p_s)).sum(-1).mean() * temperature**2
    batch_level = (p_t @ p_t.T - p_s @ p_s.T).pow(2).sum() / p_s.shape[0]
    class_level = (p_t.T @ p_t - p_s.T @ p_s).pow(2).sum() / p_s.shape[1]
    return instance, batch_level, class_level


@register_loss
class MLKD(LossTerm):
    """Σ_T (instance_weight · L_ins(T) + batch_weight · L_batch(T) + class_weight · L_class(T)).

    Jin, Wang & Lin (CVPR 2023) align predictions at three levels (see ``mlkd_levels``) and over several
    temperatures, {2, 3, 4, 5, 6} as in the authors' code, which also serve as their "prediction augmentation".
    Left out: the strongly augmented second view of each input (the term sees the batch it is given), and
    the released code's masking of samples and classes by teacher confidence. Add a ce term as in the paper.
    """

    name = "mlkd"
    description = ("Multi-level logit distillation: instance-level KL, batch-level (B×B) and class-level (C×C) "
                   "prediction Gram matching, summed over several temperatures; no strong augmentation")
    paper = "Jin, Wang & Lin, CVPR 2023, Multi-Level Logit Distillation (without its strong-augmentation view)"
    Params = MLKDParams

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> torch.Tensor:
        p = self.params
        s, t, _ = response_logits(student, teacher, batch, self.name)
        if not len(s):
            return no_rows(s)
        levels = [mlkd_levels(s, t, temperature) for temperature in p.temperatures]
        instance, batch_level, class_level = (torch.stack(level).sum() for level in zip(*levels))
        self.parts = {"instance": instance.detach(), "batch": batch_level.detach(), "class": class_level.detach()}
        return p.instance_weight * instance + p.batch_weight * batch_level + p.class_weight * class_level
