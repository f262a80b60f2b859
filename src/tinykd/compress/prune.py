"""Pruning: unstructured magnitude pruning, structural channel pruning, and gradual pruning with KD fine-tuning.

- ``prune_unstructured``: global L1 magnitude pruning (``torch.nn.utils.prune``; Han et al. 2015, "Learning both
  Weights and Connections for Efficient Neural Networks"). Zeros shrink a compressed file, not dense MACs.
- ``prune_structured``: removes whole channels with Torch-Pruning's dependency graph (Fang et al. 2023, "DepGraph:
  Towards Any Structural Pruning"), so parameters and MACs really fall and the model stays a plain nn.Module;
  importance is the L1 norm of each channel's weights (Li et al. 2017, "Pruning Filters for Efficient ConvNets").
- ``iterative_prune``: prune a little, fine-tune with distillation from the teacher, repeat (Zhu & Gupta 2017,
  "To prune, or not to prune"; their cubic sparsity schedule), each fine-tune run by the one Trainer.
"""
from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import prune as tprune

from ..data.spec import Split
from ..distill.losses import LossTerm, build_loss
from ..distill.trainer import Trainer, TrainResult
from ..errors import TinyKDError, closest
from ..inference import predict_logits
from ..measure.cost import count_macs
from ..models import count_params
from ..recipe import LossSpec, TrainConfig

PRUNABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
DEFAULT_LOSSES = ({"name": "kd", "temperature": 4.0, "alpha": 0.9},)
_SEARCH_STEPS = 50  # resolution of the MACs-target search: the channel ratio grows in steps of max_ratio / 50
_MAX_RATIO = 0.95  # never remove more than 95% of a layer's channels in a MACs-target search


# ----- unstructured ----------------------------------------------------------------------------------
def _prunable(model: nn.Module, layer_types: tuple[type[nn.Module], ...]) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, layer_types) and hasattr(m, "weight")]


def bake_masks(model: nn.Module) -> None:
    """Make pruning masks permanent (``prune.remove``): ``weight`` becomes a plain parameter with its zeros."""
    for module in model.modules():
        if tprune.is_pruned(module):
            for name in [h._tensor_name for h in module._forward_pre_hooks.values()
                         if isinstance(h, tprune.BasePruningMethod)]:
                tprune.remove(module, name)


def sparsity_report(model: nn.Module, layer_types: tuple[type[nn.Module], ...] = PRUNABLE) -> dict:
    """Fraction of zero weights per prunable layer and overall (biases excluded; masked weights count as zero)."""
    layers, zeros, total = {}, 0, 0
    for name, module in _prunable(model, layer_types):
        # with a mask attached, ``weight`` is only refreshed by a forward pass: recompute it from orig * mask
        w = module.weight_orig * module.weight_mask if hasattr(module, "weight_mask") else module.weight
        z, n = int((w == 0).sum()), w.numel()
        layers[name] = {"zeros": z, "weights": n, "sparsity": z / n}
        zeros, total = zeros + z, total + n
    return {"layers": layers, "zeros": zeros, "weights": total, "sparsity": zeros / total if total else 0.0}


def prune_unstructured(model: nn.Module, sparsity: float, *, scope: str = "global",
                       layer_types: tuple[type[nn.Module], ...] = PRUNABLE, remove: bool = True) -> dict:
    """Zero the ``sparsity`` fraction of smallest-magnitude weights of ``layer_types`` (in place); the report.

    ``scope="global"`` ranks all layers' weights together (layers keep different sparsities), ``"layer"`` prunes
    each layer by the same fraction. Weights that are already zero rank first, so calling it again with a higher
    ``sparsity`` grows the same mask. ``remove=False`` keeps the masks attached (``weight_orig``/``weight_mask``)
    so fine-tuning cannot regrow pruned weights; ``bake_masks`` makes them permanent afterwards.
    """
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0 <= sparsity < 1:
        raise TinyKDError(f"sparsity must be a fraction in [0, 1), got {sparsity!r}",
                          "e.g. sparsity=0.5 zeroes half of the weights")
    if scope not in ("global", "layer"):
        raise TinyKDError(f"unknown pruning scope '{scope}'", "use scope='global' or scope='layer'")
    layers = _prunable(model, layer_types)
    if not layers:
        names = ", ".join(t.__name__ for t in layer_types)
        raise TinyKDError(f"{type(model).__name__} has no layers of type {names} to prune",
                          "pass layer_types that the model contains, e.g. (nn.Conv2d, nn.Linear)")
    bake_masks(model)  # start from plain weights: existing zeros are the smallest magnitudes and are pruned first
    params = [(m, "weight") for _, m in layers]
    if scope == "global":
        tprune.global_unstructured(params, pruning_method=tprune.L1Unstructured, amount=float(sparsity))
    else:
        for module, name in params:
            tprune.l1_unstructured(module, name, amount=float(sparsity))
    if remove:
        bake_masks(model)
    return sparsity_report(model, layer_types)


# ----- structured ------------------------------------------------------------------------------------
def _classifier(model: nn.Module, example_input: torch.Tensor) -> str:
    """Path of the last Linear/Conv layer to run: the classifier, whose outputs (the classes) must stay."""
    order: list[str] = []
    hooks = [m.register_forward_hook(lambda *_, name=n: order.append(name))
             for n, m in model.named_modules() if isinstance(m, PRUNABLE)]
    try:
        with torch.no_grad():
            model(example_input)
    finally:
        for h in hooks:
            h.remove()
    if not order:
        raise TinyKDError(f"{type(model).__name__} has no Conv or Linear layer to prune",
                          "structured pruning removes channels of Conv/Linear layers")
    return order[-1]


def _layer_names(model: nn.Module, layers: Sequence[str | nn.Module]) -> list[str]:
    by_id = {id(m): n for n, m in model.named_modules()}
    names = dict(model.named_modules())
    out = []
    for layer in layers:
        name = by_id.get(id(layer)) if isinstance(layer, nn.Module) else layer
        if name is None:
            raise TinyKDError("an ignored layer is not a submodule of the model being pruned",
                              "pass module paths (e.g. 'fc') or modules of this model in ignored_layers")
        if name not in names:
            guess = closest(name, [n for n in names if n])
            raise TinyKDError(f"ignored_layers: the model has no module at path '{name}'",
                              (f"did you mean '{guess}'? " if guess else "") + "run `tinykd layers MODEL` to list paths")
        out.append(name)
    return out


def _importance(importance: str):
    import torch_pruning as tp

    kinds = {"l1": lambda: tp.importance.MagnitudeImportance(p=1),
             "l2": lambda: tp.importance.MagnitudeImportance(p=2),
             "bn_scale": tp.importance.BNScaleImportance,  # Network Slimming (Liu et al. 2017)
             "lamp": tp.importance.LAMPImportance,         # Lee et al. 2021
             "random": tp.importance.RandomImportance}
    if importance not in kinds:
        raise TinyKDError(f"unknown channel importance '{importance}'", f"use one of: {', '.join(kinds)}")
    return kinds[importance]()


def _pruner(model: nn.Module, example_input: torch.Tensor, ratio: float, steps: int, importance: str,
            ignored: list[str], global_pruning: bool):
    import torch_pruning as tp

    modules = dict(model.named_modules())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tp.pruner.MetaPruner(model, example_input, importance=_importance(importance), pruning_ratio=ratio,
                                    iterative_steps=steps, ignored_layers=[modules[n] for n in ignored],
                                    global_pruning=global_pruning)


def _step(pruner) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("torch_pruning").setLevel(logging.ERROR)
        pruner.step()


def prune_structured(model: nn.Module, example_input: torch.Tensor, *, ratio: float | None = None,
                     macs_target: int | None = None, importance: str = "l1",
                     ignored_layers: Sequence[str | nn.Module] | None = None, iterative_steps: int = 1,
                     global_pruning: bool = False) -> nn.Module:
    """A copy of ``model`` with whole channels removed (the input model is left unchanged).

    Give either ``ratio``, the fraction of channels removed from every prunable layer (all layers coupled by a
    residual add or a depthwise conv lose the same channels), or ``macs_target``, the batch-1 MACs
    (``tinykd.measure.cost.count_macs``) to get at or below: the ratio then grows in small steps until it fits.
    ``example_input`` is one batch (e.g. ``torch.randn(1, *in_shape)``) used to trace the layer dependencies.
    ``ignored_layers`` (paths or modules) keep their output channels; by default the final classifier.
    ``iterative_steps`` > 1 reaches ``ratio`` in that many pruning steps, re-ranking channels between them.
    """
    if (ratio is None) == (macs_target is None):
        raise TinyKDError("give exactly one of ratio and macs_target for structured pruning",
                          "e.g. ratio=0.5 (remove half of each layer's channels) or macs_target=100_000")
    if not isinstance(iterative_steps, int) or iterative_steps < 1:
        raise TinyKDError(f"iterative_steps must be a positive int, got {iterative_steps!r}", "e.g. iterative_steps=1")
    if ratio is not None and (isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio < 1):
        raise TinyKDError(f"channel pruning ratio must be in [0, 1), got {ratio!r}",
                          "e.g. ratio=0.5 removes half of each layer's channels")
    in_shape = tuple(example_input.shape[1:])
    was_training = model.training
    pruned = copy.deepcopy(model).eval()  # trace with BatchNorm in eval mode, so a batch of 1 works
    ignored = _layer_names(model, ignored_layers) if ignored_layers is not None else [_classifier(pruned, example_input)]
    if macs_target is not None:
        current = count_macs(pruned, in_shape)
        if isinstance(macs_target, bool) or not isinstance(macs_target, int) or macs_target < 1:
            raise TinyKDError(f"macs_target must be a positive int, got {macs_target!r}",
                              f"the model has {current:,} MACs now; e.g. macs_target={current // 2}")
        if macs_target >= current:
            raise TinyKDError(f"macs_target {macs_target:,} is not below the model's current {current:,} MACs",
                              f"give a target below {current:,}, e.g. {current // 2:,}")
        pruner = _pruner(pruned, example_input, _MAX_RATIO, _SEARCH_STEPS, importance, ignored, global_pruning)
        macs = current
        for _ in range(_SEARCH_STEPS):
            _step(pruner)
            macs = count_macs(pruned, in_shape)
            if macs <= macs_target:
                break
        else:
            raise TinyKDError(f"macs_target {macs_target:,} is unreachable: removing {_MAX_RATIO:.0%} of every prunable "
                              f"layer's channels leaves {macs:,} MACs (the ignored layers {ignored} keep theirs)",
                              f"use a target of at least {macs:,} MACs, a smaller student, or fewer ignored_layers")
    elif ratio > 0:
        pruner = _pruner(pruned, example_input, float(ratio), iterative_steps, importance, ignored, global_pruning)
        for _ in range(iterative_steps):
            _step(pruner)
    return pruned.train(was_training)


# ----- gradual pruning with distillation --------------------------------------------------------------
def loss_terms(losses: Sequence[dict | LossSpec]) -> list[tuple[float, LossTerm]]:
    """Weighted loss terms from recipe-style specs, e.g. ``[{"name": "kd", "temperature": 4, "weight": 1}]``."""
    terms = []
    for i, spec in enumerate(losses):
        spec = spec if isinstance(spec, LossSpec) else LossSpec.model_validate(spec)
        terms.append((spec.weight, build_loss(spec.name, spec.params(), where=f"losses[{i}]")))
    if not terms:
        raise TinyKDError("no loss terms for fine-tuning", "e.g. losses=[{'name': 'kd', 'temperature': 4}]")
    return terms


def finetune(model: nn.Module, teacher: nn.Module | None, train: Split, val: Split, cfg: TrainConfig,
             losses: Sequence[dict | LossSpec], out_dir: str | Path, *, label: str, seed: int = 0,
             progress: bool = False) -> TrainResult:
    """Fine-tune ``model`` (in place) on the weighted ``losses`` with the teacher frozen, through the Trainer."""
    if teacher is not None:
        teacher.eval()
    return Trainer(model, loss_terms(losses), cfg, out_dir=Path(out_dir), label=label, seed=seed, teacher=teacher,
                   progress=progress).fit(train, val)


def _accuracy(model: nn.Module, split: Split) -> float:
    if len(split) == 0:
        return float("nan")
    return (predict_logits(model, split.x).argmax(1) == split.y).float().mean().item()


def _row(step: int, model: nn.Module, in_shape: tuple[int, ...], val: Split, **extra) -> dict:
    report = sparsity_report(model)
    nonzero = count_params(model) - report["zeros"]
    return {"step": step, "sparsity": report["sparsity"], "macs": count_macs(model, in_shape),
            "params": count_params(model), "nonzero_params": nonzero, **extra,
            "val_accuracy": _accuracy(model, val)}


def cubic_schedule(start: float, end: float, steps: int) -> list[float]:
    """Zhu & Gupta 2017: s_k = s_f + (s_i - s_f)(1 - k/n)^3 for k = 1..n; prunes fast first, gently at the end."""
    return [end + (start - end) * (1 - k / steps) ** 3 for k in range(1, steps + 1)]


def iterative_prune(model: nn.Module, teacher: nn.Module | None, train: Split, val: Split, *,
                    target_sparsity: float | None = None, macs_target: int | None = None, steps: int = 3,
                    finetune_cfg: TrainConfig, losses: Sequence[dict | LossSpec] = DEFAULT_LOSSES,
                    structured: bool = False, out_dir: str | Path, importance: str = "l1",
                    ignored_layers: Sequence[str] | None = None, seed: int = 0,
                    progress: bool = False) -> tuple[nn.Module, list[dict]]:
    """Gradual pruning: ``steps`` times prune a little more, then fine-tune with ``losses`` (KD from ``teacher``).

    Unstructured (``structured=False``): the overall weight sparsity follows Zhu & Gupta's cubic schedule up to
    ``target_sparsity``; masks stay attached while fine-tuning, so pruned weights stay zero, and are baked in at
    the end. Structured: channels are removed (a new, smaller model each step) until ``macs_target`` MACs, the
    MACs falling geometrically per step; or, with ``target_sparsity``, until that fraction of every layer's
    channels is gone. Each fine-tune writes to ``out_dir/step<k>`` (the Trainer resumes a finished step from
    there). Returns the pruned model and one row per step (0 = before pruning): step, sparsity, macs, params,
    nonzero_params, val_accuracy (after fine-tuning) and val_accuracy_pruned (before it).
    """
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise TinyKDError(f"steps must be a positive int, got {steps!r}", "e.g. steps=3")
    if (target_sparsity is None) == (macs_target is None):
        raise TinyKDError("give exactly one of target_sparsity and macs_target",
                          "target_sparsity for unstructured or channel pruning, macs_target for structured pruning")
    if macs_target is not None and not structured:
        raise TinyKDError("macs_target needs structured=True: unstructured zeros do not reduce dense MACs",
                          "set structured=True, or give target_sparsity instead")
    if target_sparsity is not None and (isinstance(target_sparsity, bool) or not 0 <= target_sparsity < 1):
        raise TinyKDError(f"target_sparsity must be a fraction in [0, 1), got {target_sparsity!r}", "e.g. 0.8")
    out_dir = Path(out_dir)
    in_shape = tuple(train.x.shape[1:])
    example = train.x[:1].clone()
    rows = [_row(0, model, in_shape, val)]
    if structured and macs_target is not None:
        start = rows[0]["macs"]
        if macs_target >= start:
            raise TinyKDError(f"macs_target {macs_target:,} is not below the model's current {start:,} MACs",
                              f"give a target below {start:,}")
        targets = [round(start * (macs_target / start) ** (k / steps)) for k in range(1, steps + 1)]
    else:
        current = sparsity_report(model)["sparsity"] if not structured else 0.0
        targets = cubic_schedule(current, float(target_sparsity), steps)
    kept = 1.0  # structured + target_sparsity: fraction of channels still there, relative to the original
    for k, target in enumerate(targets, start=1):
        if structured and macs_target is not None:
            if target < count_macs(model, in_shape):
                model = prune_structured(model, example, macs_target=int(target), importance=importance,
                                         ignored_layers=ignored_layers)
        elif structured:
            # the ratio is relative to the current (already pruned) model: keep (1 - target) of the original
            ratio = 1 - (1 - target) / kept
            if ratio > 0:
                model = prune_structured(model, example, ratio=ratio, importance=importance,
                                         ignored_layers=ignored_layers)
            kept = 1 - target
        else:
            prune_unstructured(model, target, remove=False)
        pruned_acc = _accuracy(model, val)
        finetune(model, teacher, train, val, finetune_cfg, losses, out_dir / f"step{k}", label=f"prune step {k}",
                 seed=seed, progress=progress)
        rows.append(_row(k, model, in_shape, val, target=target, val_accuracy_pruned=pruned_acc))
    bake_masks(model)
    return model, rows


__all__ = ["bake_masks", "cubic_schedule", "finetune", "iterative_prune", "loss_terms", "prune_structured",
           "prune_unstructured", "sparsity_report"]
