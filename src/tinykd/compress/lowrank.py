"""Low-rank factorisation by truncated SVD (Denton et al. 2014, "Exploiting Linear Structure Within Convolutional
Networks for Efficient Evaluation"; Jaderberg et al. 2014; Sainath et al. 2013 for fully connected layers).

A Linear weight W (out x in) = U S V^T is replaced by two Linears, x -> V_r^T x -> (U_r S_r) (.) + b, and a
k x k convolution (groups=1) by a k x k convolution with r output channels followed by a 1 x 1 convolution,
from the SVD of its weight reshaped (out, in*k*k). At full rank both are exact; keeping the r largest singular
values is the best rank-r approximation of W (Eckart-Young). Fine-tune afterwards with KD through the Trainer.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import TinyKDError, closest
from ..models import count_params

_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d)


@dataclass
class _Candidate:
    name: str
    module: nn.Module
    u: torch.Tensor  # (out, full) float64
    s: torch.Tensor  # (full,) singular values, descending
    vh: torch.Tensor  # (full, in*k*k)

    @property
    def full(self) -> int:
        return len(self.s)

    def params_before(self) -> int:
        return sum(p.numel() for p in self.module.parameters())

    def params_after(self, rank: int) -> int:
        out, fan_in = self.u.shape[0], self.vh.shape[1]
        bias = self.module.bias.numel() if self.module.bias is not None else 0
        return rank * (fan_in + out) + bias

    def rank_for(self, energy: float, min_rank: int) -> int:
        """The smallest r whose singular values keep ``energy`` of sum(sigma^2), at least ``min_rank``."""
        if energy >= 1.0:
            return self.full
        kept = torch.cumsum(self.s**2, 0) / (self.s**2).sum().clamp_min(1e-300)
        rank = int(torch.searchsorted(kept, torch.tensor(energy, dtype=kept.dtype)).item()) + 1
        return max(min(min_rank, self.full), min(rank, self.full))


def _candidates(model: nn.Module, skip: Sequence[str]) -> list[_Candidate]:
    names = [n for n, _ in model.named_modules() if n]
    for s in skip:
        if s not in names:
            guess = closest(s, names)
            raise TinyKDError(f"skip: the model has no module at path '{s}'",
                              (f"did you mean '{guess}'? " if guess else "") + "run `tinykd layers MODEL` to list paths")
    out = []
    for name, module in model.named_modules():
        if not isinstance(module, _LAYERS) or any(name == s or name.startswith(f"{s}.") for s in skip):
            continue
        if isinstance(module, (nn.Conv1d, nn.Conv2d)) and module.groups != 1:
            continue  # a grouped/depthwise conv has no single (out, in*k*k) matrix
        out.append(_svd(name, module))
    return out


def _svd(name: str, module: nn.Module) -> _Candidate:
    w = module.weight.detach().to(torch.float64).reshape(module.weight.shape[0], -1)  # (out, in*k*k)
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    return _Candidate(name, module, u, s, vh)


def factorize_layer(layer: nn.Module, rank: int) -> nn.Sequential:
    """The two-layer rank-``rank`` factorisation of one Linear or Conv1d/Conv2d (groups=1) layer.

    At ``rank`` = min(out, in*k*k) it computes the same function as ``layer``.
    """
    if not isinstance(layer, _LAYERS) or getattr(layer, "groups", 1) != 1:
        raise TinyKDError(f"cannot factorise a {type(layer).__name__}",
                          "low-rank factorisation takes nn.Linear, nn.Conv1d or nn.Conv2d with groups=1")
    c = _svd("", layer)
    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= c.full:
        raise TinyKDError(f"rank must be an int in [1, {c.full}] for this layer, got {rank!r}",
                          f"use a rank of at most min(out, in*k*k) = {c.full}")
    return _factor(c, rank)


def _factor(c: _Candidate, rank: int) -> nn.Sequential:
    """Two layers computing W_r x + b with W_r = (U_r S_r) V_r^T, in the weight's dtype and device."""
    m = c.module
    dtype, device = m.weight.dtype, m.weight.device
    first_w = c.vh[:rank]  # (r, in*k*k)
    second_w = c.u[:, :rank] * c.s[:rank]  # (out, r)
    if isinstance(m, nn.Linear):
        first = nn.Linear(m.in_features, rank, bias=False)
        second = nn.Linear(rank, m.out_features, bias=m.bias is not None)
        first.weight.data = first_w.to(device, dtype).contiguous()
        second.weight.data = second_w.to(device, dtype).contiguous()
    else:
        conv = type(m)
        first = conv(m.in_channels, rank, m.kernel_size, m.stride, m.padding, m.dilation, bias=False,
                     padding_mode=m.padding_mode)
        second = conv(rank, m.out_channels, 1, bias=m.bias is not None)
        first.weight.data = first_w.reshape(rank, *m.weight.shape[1:]).to(device, dtype).contiguous()
        second.weight.data = second_w.reshape(m.out_channels, rank, *([1] * (m.weight.dim() - 2))).to(device, dtype).contiguous()
    if m.bias is not None:
        second.bias.data = m.bias.detach().clone()
    return nn.Sequential(first, second).train(m.training)


def _plan(cands: list[_Candidate], energy: float, min_rank: int) -> dict[str, int]:
    """Rank per layer for ``energy``; layers where two factors would not save parameters are left out."""
    plan = {}
    for c in cands:
        r = c.rank_for(energy, min_rank)
        if c.params_after(r) < c.params_before():
            plan[c.name] = r
    return plan


def _total_after(model_params: int, cands: list[_Candidate], plan: dict[str, int]) -> int:
    return model_params - sum(c.params_before() - c.params_after(plan[c.name]) for c in cands if c.name in plan)


def lowrank_factorize(model: nn.Module, *, energy: float | None = None, param_budget: int | None = None,
                      min_rank: int = 1, skip: Sequence[str] = ()) -> dict:
    """Replace Linear and Conv1d/Conv2d (groups=1) layers of ``model`` in place by two low-rank factors.

    Each layer keeps the smallest rank r whose singular values hold ``energy`` (default 0.9) of sum(sigma^2);
    or, with ``param_budget``, one energy level shared by all layers is chosen, the highest at which the whole
    model has at most ``param_budget`` parameters. A layer is only factorised where r (in + out) + bias is below
    its current parameter count. ``skip`` lists module paths (and their children) to leave alone.
    Returns ``{"layers": [{layer, type, shape, rank, full_rank, energy, params_before, params_after,
    factorized}], "params_before", "params_after", "energy"}``.
    """
    if energy is not None and param_budget is not None:
        raise TinyKDError("give energy or param_budget, not both", "energy=0.9 keeps 90% of each layer's sum(sigma^2); "
                          "param_budget=N fits the whole model in N parameters")
    if energy is None and param_budget is None:
        energy = 0.9
    if energy is not None and (isinstance(energy, bool) or not isinstance(energy, (int, float)) or not 0 < energy <= 1):
        raise TinyKDError(f"energy must be in (0, 1], got {energy!r}", "e.g. energy=0.9 keeps 90% of sum(sigma^2)")
    if isinstance(min_rank, bool) or not isinstance(min_rank, int) or min_rank < 1:
        raise TinyKDError(f"min_rank must be a positive int, got {min_rank!r}", "e.g. min_rank=1")
    before = count_params(model)
    cands = _candidates(model, list(skip))
    if not cands:
        raise TinyKDError(f"{type(model).__name__} has no Linear or Conv1d/Conv2d (groups=1) layer to factorise",
                          "low-rank factorisation applies to dense layers; check skip")
    if param_budget is not None:
        if isinstance(param_budget, bool) or not isinstance(param_budget, int) or param_budget < 1:
            raise TinyKDError(f"param_budget must be a positive int, got {param_budget!r}",
                              f"the model has {before:,} parameters; e.g. param_budget={before // 2}")
        if param_budget >= before:
            raise TinyKDError(f"param_budget {param_budget:,} is not below the model's {before:,} parameters",
                              f"give a budget below {before:,}")
        smallest = _total_after(before, cands, _plan(cands, 1e-12, min_rank))
        if smallest > param_budget:
            raise TinyKDError(f"param_budget {param_budget:,} is unreachable: factorising every layer at rank "
                              f"{min_rank} leaves {smallest:,} parameters",
                              f"use a budget of at least {smallest:,}, a lower min_rank, or fewer skipped layers")
        lo, hi = 0.0, 1.0  # fits at lo (rank min_rank), find the highest energy that still fits
        for _ in range(40):
            mid = (lo + hi) / 2
            if _total_after(before, cands, _plan(cands, mid, min_rank)) <= param_budget:
                lo = mid
            else:
                hi = mid
        energy = lo
    plan = _plan(cands, energy, min_rank)
    rows = []
    for c in cands:
        r = plan.get(c.name, c.full)
        kept = float((c.s[:r] ** 2).sum() / (c.s**2).sum().clamp_min(1e-300))
        rows.append({"layer": c.name, "type": type(c.module).__name__, "shape": list(c.module.weight.shape),
                     "rank": r, "full_rank": c.full, "energy": kept, "params_before": c.params_before(),
                     "params_after": c.params_after(r) if c.name in plan else c.params_before(),
                     "factorized": c.name in plan})
        if c.name in plan:
            model.set_submodule(c.name, _factor(c, r))
    return {"layers": rows, "params_before": before, "params_after": count_params(model), "energy": energy}


__all__ = ["factorize_layer", "lowrank_factorize"]
