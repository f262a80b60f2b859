"""Data-free distillation: the student never sees a training sample; it learns from the teacher on synthetic inputs.

* DAFL (Chen et al., ICCV 2019): a generator G(z), trained against the frozen teacher, makes every batch
  (``DAFLBatches``, a BatchSource for the trainer); the student learns KD from the teacher on G(z).
* DeepInversion (Yin et al., CVPR 2020): input batches optimised so the statistics they induce in each of the
  teacher's BatchNorm layers match the layer's running statistics, plus cross-entropy to chosen targets and
  image priors (``deep_inversion`` returns a synthetic split to distil on).

``save_grid`` writes a PNG of synthetic samples (images, or signals as line plots). The scheme: ``DataFree``.
"""
from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console
from torch import nn

from ... import distributed as dist
from ...data.augment import shift_batch
from ...data.spec import Split
from ...errors import TinyKDError
from ...inference import module_device, predict_logits
from ...io import atomic_write
from ...types import Batch
from ..capture import FeatureCapture, _first_tensor
from ..sources import BatchSource
from ..trainer import resolve_device
from .base import Prepared, Scheme, SchemeFigure, SchemeReport
from .registry import register_scheme


# ----- generator ----------------------------------------------------------------------------------
class Generator(nn.Module):
    """DAFL's generator (after DCGAN), for inputs shaped (C, H, W) or (C, L); an MLP for any other shape.

    z → linear → ``base`` channels at ¼ size → ×2 upsample, conv3-BN-LeakyReLU → upsample to full size,
    conv3-BN-LeakyReLU (base/2) → conv3 to C channels → tanh → BatchNorm without affine. The last BN keeps
    every channel near zero mean and unit variance, like the standardised data the teacher was trained on.
    ``bn_eps`` is the epsilon of the two hidden BatchNorms (the authors' code, after DCGAN's PyTorch port,
    passes 0.8 there; the first and last BatchNorms keep 1e-5).
    """

    def __init__(self, in_shape: Sequence[int], latent_dim: int = 100, base: int = 128, bn_eps: float = 0.8):
        super().__init__()
        self.in_shape, self.latent_dim = tuple(in_shape), latent_dim
        rank = len(self.in_shape) - 1
        self.rank = rank if rank in (1, 2) else 0
        if self.rank == 0:
            size = math.prod(self.in_shape)
            self.net = nn.Sequential(nn.Linear(latent_dim, base * 2), nn.BatchNorm1d(base * 2), nn.LeakyReLU(0.2),
                                     nn.Linear(base * 2, size), nn.Tanh(), nn.BatchNorm1d(size, affine=False))
            return
        conv, bn = (nn.Conv1d, nn.BatchNorm1d) if self.rank == 1 else (nn.Conv2d, nn.BatchNorm2d)
        spatial = self.in_shape[1:]
        self.sizes = [tuple(math.ceil(s / 4) for s in spatial), tuple(math.ceil(s / 2) for s in spatial), spatial]
        self.base = base
        self.l1 = nn.Linear(latent_dim, base * math.prod(self.sizes[0]))
        self.bn0 = bn(base)
        self.block1 = nn.Sequential(conv(base, base, 3, padding=1), bn(base, eps=bn_eps), nn.LeakyReLU(0.2))
        self.block2 = nn.Sequential(conv(base, base // 2, 3, padding=1), bn(base // 2, eps=bn_eps), nn.LeakyReLU(0.2),
                                    conv(base // 2, self.in_shape[0], 3, padding=1), nn.Tanh(),
                                    bn(self.in_shape[0], affine=False))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if self.rank == 0:
            return self.net(z).view(len(z), *self.in_shape)
        h = self.bn0(self.l1(z).view(len(z), self.base, *self.sizes[0]))
        h = self.block1(F.interpolate(h, size=self.sizes[1], mode="nearest"))
        return self.block2(F.interpolate(h, size=self.sizes[2], mode="nearest"))


# ----- DAFL ---------------------------------------------------------------------------------------
def dafl_losses(logits: torch.Tensor, features: torch.Tensor) -> dict[str, torch.Tensor]:
    """DAFL's three generator losses on the teacher's outputs for a generated batch (Chen et al. 2019, eq. 2–5):

    * one_hot: (1/n) Σ_i CE(y_T^i, t^i), t^i = argmax y_T^i: generated samples should look like some class;
    * activation: −(1/n) ‖f_T‖₁ per element (the authors' code: −mean |f|), f the teacher's penultimate features;
    * info_entropy: −H((1/n) Σ_i softmax(y_T^i)), natural log: classes should be balanced over the batch
      (the authors' code uses log10, so their weight 5 corresponds to 5 / ln 10 ≈ 2.2 here).
    """
    p_mean = F.softmax(logits, dim=1).mean(0)
    return {"one_hot": F.cross_entropy(logits, logits.argmax(1)),
            "activation": -features.abs().mean(),
            "info_entropy": (p_mean * torch.log(p_mean.clamp_min(1e-12))).sum()}


def last_linear(model: nn.Module) -> nn.Linear:
    """The last nn.Linear registered in ``model``, usually its classifier."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise TinyKDError("the teacher has no nn.Linear classifier whose input could serve as its penultimate feature",
                          "pass feature_path, the module path of the teacher's penultimate feature")
    return linears[-1]


class DAFLBatches(BatchSource):
    """Every training batch is G(z), z ~ N(0, I); before returning it, G takes one step on DAFL's loss
    one_hot·L_oh + activation·L_a + info_entropy·L_ie against the frozen teacher (only G's parameters get
    gradients). The student then learns from the teacher on the (detached) batch, as in DAFL's joint loop.

    ``feature_path``: the teacher module whose output is the penultimate feature; by default the input of its
    last linear layer. ``lr_schedule`` "cosine" decays G's learning rate from ``lr`` to 0 over ``total_steps``
    (computed from the trainer's epoch and step, so a resumed run continues the same curve); "constant" keeps
    it, as the authors' code. ``jitter`` > 0 shifts each generated sample by an independent random offset of up
    to that many positions (images along height and width, signals along time; the border is filled with the
    batch's mean border value) before the student and the teacher see it; G's own step uses the unshifted batch.
    ``adversarial`` > 0 adds DFAD's adversarial term to G's loss (Fang et al. 2019, "Data-Free Adversarial
    Distillation"): −adversarial · mean_i ‖softmax(t_i) − softmax(s_i)‖₁, so G also seeks inputs on which the
    bound student (``bind``; evaluated in eval mode, never updated here) still disagrees with the teacher. It
    keeps G from settling on one easy family of inputs the student has already learned. 0 is plain DAFL.
    Batches carry label -1 and index -1.
    """

    def __init__(self, teacher: nn.Module, in_shape: Sequence[int], *, steps_per_epoch: int = 50,
                 batch_size: int = 256, latent_dim: int = 100, lr: float = 1e-3, one_hot: float = 1.0,
                 activation: float = 0.1, info_entropy: float = 5.0, feature_path: str | None = None,
                 generator: nn.Module | None = None, base: int = 128, lr_schedule: str = "constant",
                 total_steps: int | None = None, jitter: int = 0, adversarial: float = 0.0):
        super().__init__()
        if adversarial < 0:
            raise TinyKDError(f"DAFL adversarial weight must be >= 0, got {adversarial}", "use 0 (plain DAFL) or e.g. 1")
        if lr_schedule not in ("constant", "cosine"):
            raise TinyKDError(f"unknown generator learning-rate schedule {lr_schedule!r}", "use 'constant' or 'cosine'")
        if lr_schedule == "cosine" and not total_steps:
            raise TinyKDError("a cosine generator schedule needs total_steps", "pass total_steps = epochs × steps_per_epoch")
        if not isinstance(jitter, int) or jitter < 0:
            raise TinyKDError(f"DAFL jitter must be a non-negative integer, got {jitter!r}", "use e.g. jitter=2")
        self.lr, self.lr_schedule, self.total_steps, self.jitter = lr, lr_schedule, total_steps, jitter
        self.__dict__["teacher"] = teacher  # not a submodule: never trained, saved or switched to train mode here
        self.in_shape, self.latent_dim, self.batch_size = tuple(in_shape), latent_dim, batch_size
        self.steps_per_epoch = steps_per_epoch
        self.weights = {"one_hot": one_hot, "activation": activation, "info_entropy": info_entropy}
        self.adversarial = adversarial
        self.__dict__["student"] = None  # bound by the trainer; not a submodule of the source
        self.feature_path = feature_path
        self.generator = generator if generator is not None else Generator(self.in_shape, latent_dim, base)
        self.optimizer = torch.optim.Adam(self.generator.parameters(), lr=lr)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"generator": self.optimizer}

    def to(self, *args, **kwargs) -> DAFLBatches:
        """Move the generator and the teacher it is trained against (not a submodule) together."""
        self.teacher.to(*args, **kwargs)
        return super().to(*args, **kwargs)

    def _noise(self, n: int) -> torch.Tensor:
        return torch.randn(n, self.latent_dim, device=module_device(self.generator))

    def bind(self, student: nn.Module) -> None:
        self.__dict__["student"] = student

    def disagreement(self, x: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        """mean_i ‖softmax(t_i) − softmax(s_i)‖₁ on ``x`` (gradients reach ``x``, the student is not updated)."""
        student = self.__dict__["student"]
        if student is None:
            raise TinyKDError("DAFL's adversarial term needs the student", "train through the Trainer (it binds the "
                              "student) or call bind(student) before the first batch")
        was_training = student.training
        student.eval()
        try:
            s_logits = _first_tensor(student(x))
        finally:
            student.train(was_training)
        return (F.softmax(teacher_logits, 1) - F.softmax(s_logits, 1)).abs().sum(1).mean()

    def sample(self, n: int) -> torch.Tensor:
        """``n`` generated inputs, without gradients, with G in eval mode."""
        was_training = self.generator.training
        self.generator.eval()
        try:
            with torch.no_grad():
                return self.generator(self._noise(n))
        finally:
            self.generator.train(was_training)

    def example(self, n: int) -> Batch:
        x = self.sample(n)
        none = torch.full((n,), -1, dtype=torch.long, device=x.device)
        return Batch(x, none, none.clone())

    def teacher_outputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The teacher's logits and penultimate features on ``x`` (with gradients to ``x``)."""
        self.teacher.eval()
        if self.feature_path is not None:
            with FeatureCapture(self.teacher, [self.feature_path], role="teacher") as cap:
                out = cap(x)
            return out.logits, out.features[self.feature_path].flatten(1)
        seen = {}
        handle = last_linear(self.teacher).register_forward_pre_hook(lambda _m, inputs: seen.setdefault("f", inputs[0]))
        try:
            logits = _first_tensor(self.teacher(x))
        finally:
            handle.remove()
        return logits, seen["f"].flatten(1)

    def lr_at(self, epoch: int, step: int) -> float:
        """G's learning rate at the trainer's ``epoch`` (from 1) and ``step`` (from 0)."""
        if self.lr_schedule == "constant":
            return self.lr
        done = min((epoch - 1) * self.steps_per_epoch + step, self.total_steps)
        return self.lr * 0.5 * (1 + math.cos(math.pi * done / self.total_steps))

    def next_batch(self, epoch: int, step: int) -> Batch:
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(epoch, step)
        x = self.generator(self._noise(self.batch_size))
        logits, features = self.teacher_outputs(x)
        losses = dafl_losses(logits, features)
        loss = sum(self.weights[k] * v for k, v in losses.items())
        if self.adversarial > 0:
            losses["disagreement"] = self.disagreement(x, logits)
            loss = loss - self.adversarial * losses["disagreement"]
        params = [p for p in self.generator.parameters() if p.requires_grad]
        grads = torch.autograd.grad(loss, params)  # the generator's only: the teacher stays untouched
        self.optimizer.zero_grad(set_to_none=True)
        for p, g in zip(params, grads):
            p.grad = g
        self.optimizer.step()
        self.parts = {**{k: float(v.detach()) for k, v in losses.items()}, "generator": float(loss.detach())}
        none = torch.full((len(x),), -1, dtype=torch.long, device=x.device)
        return Batch(shift_batch(x.detach(), self.jitter), none, none.clone())


# ----- DeepInversion ------------------------------------------------------------------------------
class BNStatistics:
    """Context manager: forward hooks on every BatchNorm of ``model`` record, per layer, DeepInversion's
    feature-distribution regulariser r_l = ‖μ_l(x) − μ_l^BN‖₂ + ‖σ²_l(x) − σ²_l^BN‖₂, with μ_l(x), σ²_l(x) the
    per-channel mean and (biased) variance of the layer's input over the batch and spatial positions."""

    def __init__(self, model: nn.Module):
        self.layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if not self.layers:
            raise TinyKDError("DeepInversion needs a teacher with BatchNorm layers (their running statistics are "
                              "what the inputs are fitted to)", "use a teacher with BatchNorm, or DAFL")
        self.values: list[torch.Tensor] = []
        self._handles = []

    def _hook(self, module: nn.modules.batchnorm._BatchNorm, inputs, _output) -> None:
        x = inputs[0]
        dims = [0, *range(2, x.dim())]
        mean = x.mean(dims)
        var = x.transpose(0, 1).reshape(x.shape[1], -1).var(1, unbiased=False)
        self.values.append(torch.norm(module.running_mean - mean, 2) + torch.norm(module.running_var - var, 2))

    def __enter__(self) -> BNStatistics:
        self._handles = [m.register_forward_hook(self._hook) for m in self.layers]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()

    def take(self) -> list[torch.Tensor]:
        """The r_l of the last forward pass, in execution order, and forget them."""
        values, self.values = self.values, []
        return values


def image_priors(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """DeepInversion's total-variation priors (tv_l1, tv_l2) over neighbouring positions, as the authors' code:
    for images the four differences (right, down and both diagonals), tv_l2 = Σ_d ‖diff_d‖₂ (whole batch),
    tv_l1 = Σ_d mean |diff_d|; for signals (B, C, L) the one difference along L."""
    if x.dim() == 4:
        diffs = [x[:, :, :, :-1] - x[:, :, :, 1:], x[:, :, :-1, :] - x[:, :, 1:, :],
                 x[:, :, 1:, :-1] - x[:, :, :-1, 1:], x[:, :, :-1, :-1] - x[:, :, 1:, 1:]]
    elif x.dim() == 3:
        diffs = [x[:, :, :-1] - x[:, :, 1:]]
    else:
        zero = x.sum() * 0.0
        return zero, zero
    return sum(d.abs().mean() for d in diffs), sum(torch.norm(d) for d in diffs)


def inversion_losses(logits: torch.Tensor, targets: torch.Tensor, x: torch.Tensor, bn: list[torch.Tensor], *,
                     bn_weight: float, first_bn_multiplier: float, tv_l1: float, tv_l2: float,
                     l2: float) -> dict[str, torch.Tensor]:
    """The DeepInversion objective and its parts:
    CE(teacher(x), targets) + bn_weight·(m·r_1 + Σ_{l>1} r_l) + tv_l1·TV₁ + tv_l2·TV₂ + l2·mean_i ‖x_i‖₂."""
    ce = F.cross_entropy(logits, targets)
    r = sum((first_bn_multiplier if i == 0 else 1.0) * v for i, v in enumerate(bn))
    prior_l1, prior_l2 = image_priors(x)
    norm = torch.norm(x.flatten(1), dim=1).mean()
    total = ce + bn_weight * r + tv_l1 * prior_l1 + tv_l2 * prior_l2 + l2 * norm
    return {"total": total, "ce": ce, "bn": r, "tv_l1": prior_l1, "tv_l2": prior_l2, "l2": norm}


def invert_batch(teacher: nn.Module, targets: torch.Tensor, in_shape: Sequence[int], *, iterations: int = 200,
                 lr: float = 0.1, bn_weight: float = 0.05, first_bn_multiplier: float = 10.0, tv_l1: float = 0.0,
                 tv_l2: float = 1e-4, l2: float = 1e-5, jitter: int = 0, flip: bool = False) -> torch.Tensor:
    """Inputs (len(targets), *in_shape) optimised by Adam (β = 0.5, 0.9; cosine learning rate, as the authors)
    on ``inversion_losses`` against the frozen teacher (in eval mode; only the inputs get gradients).
    ``jitter``: random circular shifts of up to that many positions each step; ``flip``: random mirroring."""
    teacher.eval()
    device = module_device(teacher)
    targets = targets.to(device)
    x = torch.randn(len(targets), *in_shape, device=device, requires_grad=True)
    opt = torch.optim.Adam([x], lr=lr, betas=(0.5, 0.9), eps=1e-8)
    spatial = tuple(range(2, 2 + len(in_shape) - 1))
    with BNStatistics(teacher) as stats:
        for it in range(iterations):
            for group in opt.param_groups:
                group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * it / iterations))
            view = x
            if jitter and spatial:
                shifts = tuple(int(s) for s in torch.randint(-jitter, jitter + 1, (len(spatial),)))
                view = torch.roll(view, shifts=shifts, dims=spatial)
            if flip and spatial and bool(torch.rand(()) < 0.5):
                view = torch.flip(view, dims=(spatial[-1],))
            logits = _first_tensor(teacher(view))
            loss = inversion_losses(logits, targets, view, stats.take(), bn_weight=bn_weight,
                                    first_bn_multiplier=first_bn_multiplier, tv_l1=tv_l1, tv_l2=tv_l2, l2=l2)["total"]
            (grad,) = torch.autograd.grad(loss, [x])
            x.grad = grad
            opt.step()
    return x.detach()


def deep_inversion(teacher: nn.Module, in_shape: Sequence[int], num_samples: int, *, num_classes: int | None = None,
                   batch_size: int = 64, seed: int = 0, console: Console | None = None, **options) -> Split:
    """A synthetic training split: ``num_samples`` inputs inverted from the teacher in batches, with balanced
    target classes (i mod num_classes) as labels. ``options`` go to ``invert_batch``. The global RNG is left as it was.
    Train the student on it with a teacher-based term (kd); the labels are the targets the inputs were fitted to."""
    console = console or Console(quiet=True)
    if num_classes is None:
        teacher.eval()
        with torch.no_grad():
            num_classes = _first_tensor(teacher(torch.zeros(2, *in_shape, device=module_device(teacher)))).shape[1]
    targets = torch.arange(num_samples) % num_classes
    out = []
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        targets = targets[torch.randperm(num_samples)]
        for start in range(0, num_samples, batch_size):
            out.append(invert_batch(teacher, targets[start:start + batch_size], in_shape, **options))
            console.print(f"[dim]DeepInversion: {min(start + batch_size, num_samples)}/{num_samples} samples[/]")
    x = torch.cat(out)
    with torch.no_grad():
        teacher.eval()
        agree = (_first_tensor(teacher(x)).argmax(1).cpu() == targets).float().mean().item()
    console.print(f"[dim]DeepInversion: the teacher assigns {100 * agree:.1f}% of the samples to their target class[/]")
    return Split(x.cpu(), targets)


# ----- pictures -----------------------------------------------------------------------------------
def save_grid(x: torch.Tensor, path: str | Path, *, labels: Sequence | None = None, ncol: int = 8,
              max_items: int = 64, title: str | None = None) -> Path:
    """A PNG grid of samples: (C, H, W) images (grey, or RGB when C = 3; each scaled to its own range) or
    (C, L) signals as line plots; ``labels`` are written above the cells."""
    from matplotlib.figure import Figure

    x = x[:max_items].detach().float().cpu()
    n = len(x)
    if n == 0:
        raise TinyKDError("save_grid got no samples", "pass a non-empty batch")
    ncol = min(ncol, n)
    nrow = math.ceil(n / ncol)
    fig = Figure(figsize=(1.2 * ncol, 1.25 * nrow + (0.4 if title else 0)))
    axes = fig.subplots(nrow, ncol, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i >= n:
            continue
        s = x[i]
        if s.dim() == 3:
            img = s.permute(1, 2, 0) if s.shape[0] == 3 else s.mean(0)
            img = (img - img.min()) / (img.max() - img.min() + 1e-8)
            ax.imshow(img.numpy(), cmap=None if s.shape[0] == 3 else "gray", interpolation="nearest")
        else:
            for channel in s.reshape(-1, s.shape[-1]):
                ax.plot(channel.numpy(), linewidth=0.8)
        if labels is not None:
            ax.set_title(str(labels[i]), fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return atomic_write(Path(path), buf.getvalue())


# ----- the scheme ---------------------------------------------------------------------------------
NAMES = {"dafl": "DAFL", "deepinversion": "DeepInversion"}  # also the titles of the samples figure
METHODS = {**NAMES, "dafl": "DAFL, a generator trained against the teacher"}  # as the report's intro names them


@register_scheme
class DataFree(Scheme):
    """The distilled student sees no training input, only inputs synthesised from the frozen teacher
    (``distill.data_free``): DAFL's generator makes every batch, or DeepInversion makes a synthetic split first.
    Its int8 calibration inputs are synthetic too; the real validation split still picks the best epoch."""

    name = "data_free"
    phrase = "Data-free distillation (no training input seen)"
    takes_unlabelled = False

    @classmethod
    def check_chosen(cls, d) -> None:
        if d.transfer or d.mixup or d.cache:
            raise ValueError("scheme data_free uses synthetic inputs only: remove distill.transfer, distill.mixup "
                             "and distill.cache")

    @classmethod
    def check_recipe(cls, recipe) -> None:
        c = recipe.compress
        if c.prune_student or c.lowrank or c.qat:
            raise ValueError("compress.prune_student, compress.lowrank and compress.qat fine-tune the student on the "
                             "training data, which a data_free run does not use: remove them (post-training int8 "
                             "quantization is calibrated on synthetic inputs)")

    def __init__(self, ctx):
        super().__init__(ctx)
        self.batches: DAFLBatches | None = None
        self.synthetic: Split | None = None

    def prepare(self, teacher: nn.Module, student: nn.Module) -> Prepared:
        ctx, cfg, shape = self.ctx, self.d.data_free, tuple(self.ctx.bundle.spec.shape)
        r = ctx.recipe
        self.facts["method"] = cfg.method
        if cfg.method == "dafl":
            self.facts["generator"] = {"base": cfg.generator_base, "lr": cfg.generator_lr,
                                       "schedule": cfg.generator_schedule, "jitter": cfg.jitter,
                                       "adversarial": cfg.adversarial,
                                       "batch_size": cfg.batch_size, "steps_per_epoch": cfg.steps_per_epoch}
            torch.manual_seed(r.seed)
            self.batches = DAFLBatches(teacher, shape, steps_per_epoch=cfg.steps_per_epoch, batch_size=cfg.batch_size,
                                       latent_dim=cfg.latent_dim, lr=cfg.generator_lr, base=cfg.generator_base,
                                       one_hot=cfg.one_hot, activation=cfg.activation, info_entropy=cfg.info_entropy,
                                       lr_schedule=cfg.generator_schedule, jitter=cfg.jitter,
                                       adversarial=cfg.adversarial,
                                       total_steps=cfg.steps_per_epoch * r.student.train.epochs)
            ctx.console.print(f"data-free (DAFL): {cfg.steps_per_epoch} generated batches of {cfg.batch_size} "
                              "per epoch; the student sees no training input")
            return teacher, self.batches, None
        home = module_device(teacher)
        teacher.to(resolve_device(r.student.train.device))  # inverting is training: on the student's device
        try:
            synth = deep_inversion(teacher, shape, cfg.samples, batch_size=min(256, cfg.samples),
                                   iterations=cfg.iterations, lr=cfg.inversion_lr, bn_weight=cfg.bn_weight,
                                   seed=r.seed, console=ctx.console)
        except TinyKDError as err:
            raise type(err)(err.what, err.fix, where="distill.data_free.method") from None
        finally:
            teacher.to(home)
        self.synthetic = synth
        return teacher, None, synth

    def finish(self, source, result, student: nn.Module) -> dict:
        """The facts, and the figure of synthetic samples titled with the teacher's class."""
        super().finish(source, result, student)
        if self.batches is not None:
            x = self.batches.sample(32)
            labels = predict_logits(self.batches.teacher, x).argmax(1).tolist()
        else:
            x, labels = self.synthetic.x[:32], self.synthetic.y[:32].tolist()
        path = self.ctx.run_dir / "figures" / "synthetic_samples.png"
        if dist.is_main():  # several processes: rank 0 writes the run's files
            path.parent.mkdir(parents=True, exist_ok=True)
            method = NAMES[self.d.data_free.method]
            save_grid(x, path, labels=labels, title=f"{method}: synthetic inputs, titled with the teacher's class")
        self.facts["samples_figure"] = str(path.relative_to(self.ctx.run_dir))
        return self.facts

    def calibration(self, n: int):
        """Synthetic calibration inputs, like everything the student saw."""
        if self.batches is not None:
            with torch.random.fork_rng():
                torch.manual_seed(self.ctx.recipe.seed)
                return self.batches.sample(n).numpy()
        return self.synthetic.x[:n].numpy()

    @classmethod
    def report(cls, facts: dict) -> SchemeReport:
        out = super().report(facts)
        method = facts.get("method")
        out.intro = (f"Data-free distillation ({METHODS.get(method, method)}): the distilled student saw no training "
                     "input, only inputs synthesised from the frozen teacher; the student from scratch, the reference, "
                     "trained on the real data.")
        gen = facts.get("generator")
        if gen:
            shift = f"each sample shifted by up to {gen['jitter']} positions" if gen.get("jitter") else "no shifts"
            out.notes.insert(0, f"Generator: {gen['steps_per_epoch']} batches of {gen['batch_size']} per epoch, base "
                             f"width {gen['base']}, Adam learning rate {gen['lr']:g} ({gen['schedule']}); {shift} before "
                             "the student saw it"
                             + (f"; adversarial term weight {gen['adversarial']:g} (G also sought inputs where student "
                                "and teacher disagreed)." if gen.get("adversarial") else "."))
        if facts.get("samples_figure"):
            out.figure = SchemeFigure(facts["samples_figure"], "fig-synthetic", "synthetic inputs", "Synthetic inputs.",
                                      "Samples of what the student learned from, each titled with the class the "
                                      "teacher gives it.")
        return out
