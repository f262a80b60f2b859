"""Registry of model builders, timm-style: each variant is a small function registered by name.

``create_model`` checks the requested keyword arguments against the builder's signature before
calling it, so a typo in a recipe becomes a TinyKDError that lists the valid arguments instead of
a TypeError traceback from deep inside a constructor.
"""
from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from tinykd.errors import TinyKDError, closest, unknown_name
from tinykd.models.hf import HF_KWARGS, HF_PREFIX, create_hf  # imports transformers only when a model is loaded

# The two arguments every builder takes; everything else in its signature is a tunable kwarg.
_REQUIRED = ("num_classes", "in_shape")


@dataclass(frozen=True)
class _Entry:
    build: Callable[..., nn.Module]
    description: str
    kwargs: dict[str, object]  # tunable argument -> default


_REGISTRY: dict[str, _Entry] = {}


def register_model(name: str, description: str = "") -> Callable:
    """Decorator that registers ``fn(*, num_classes, in_shape, **kwargs) -> nn.Module`` as ``name``.

    Every tunable argument must be keyword-only with a default, so ``create_model`` can list them.
    """

    def decorator(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model '{name}' is registered twice")
        params = inspect.signature(fn).parameters
        missing = [p for p in _REQUIRED if p not in params]
        bad = [p.name for p in params.values()
               if p.name not in _REQUIRED and (p.kind is not p.KEYWORD_ONLY or p.default is p.empty)]
        if missing or bad:
            raise ValueError(f"builder for '{name}' needs keyword-only {', '.join(_REQUIRED)} "
                             f"and defaults for its other arguments (missing: {missing}, bad: {bad})")
        kwargs = {p.name: p.default for p in params.values() if p.name not in _REQUIRED}
        _REGISTRY[name] = _Entry(fn, description or (fn.__doc__ or "").strip().split("\n")[0], kwargs)
        return fn

    return decorator


def list_models() -> dict[str, str]:
    """Registered model names (sorted) with their one-line descriptions."""
    return {name: _REGISTRY[name].description for name in sorted(_REGISTRY)}


def accepts(name: str, arg: str) -> bool:
    """Whether model ``name`` takes the argument ``arg`` (the pipeline passes ``vocab_size`` only to models that
    do); False for an unknown name, which ``create_model`` then reports."""
    if name.startswith(HF_PREFIX):
        return arg in HF_KWARGS
    return name in _REGISTRY and arg in _REGISTRY[name].kwargs


def create_model(name: str, *, num_classes: int, in_shape: tuple[int, ...], **kwargs) -> nn.Module:
    """Build model ``name`` for inputs shaped ``(B, *in_shape)`` that returns ``(B, num_classes)`` logits.

    ``hf:PATH`` loads the Hugging Face sequence classifier saved in the local folder PATH (``tinykd.models.hf``)."""
    hf = name.startswith(HF_PREFIX)
    if not hf and name not in _REGISTRY:
        err = unknown_name("model", name, _REGISTRY)
        raise TinyKDError(err.what, f"{err.fix}; or hf:PATH for a Hugging Face model saved in a local folder")
    entry = _hf_entry(name) if hf else _REGISTRY[name]
    where = f"model '{name}'"
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise TinyKDError(f"num_classes must be a positive int, got {num_classes!r}",
                          "take it from the dataset's InputSpec.num_classes", where=where)
    if (not isinstance(in_shape, (tuple, list)) or not in_shape
            or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in in_shape)):
        raise TinyKDError(f"in_shape must be a non-empty tuple of positive ints (one input, no batch), "
                          f"got {in_shape!r}", "e.g. in_shape=(1, 28, 28) for MNIST", where=where)
    for key in kwargs:
        if key not in entry.kwargs:
            raise TinyKDError(f"unknown argument '{key}'", _unknown_kwarg_fix(name, key), where=where)
    try:
        return entry.build(num_classes=num_classes, in_shape=tuple(in_shape), **kwargs)
    except TinyKDError as err:  # raised by the family's checks, which do not know the registered name
        raise TinyKDError(err.what, err.fix, where=where) from None


def _hf_entry(name: str) -> _Entry:
    return _Entry(functools.partial(create_hf, name), "a Hugging Face sequence classifier in a local folder", HF_KWARGS)


def _unknown_kwarg_fix(name: str, key: str) -> str:
    if name.startswith(HF_PREFIX):
        guess = closest(key, HF_KWARGS)
        return (f"did you mean '{guess}'? " if guess else "") + \
            "valid arguments for hf: models: " + ", ".join(f"{k}={v!r}" for k, v in HF_KWARGS.items())
    valid = _REGISTRY[name].kwargs
    guess = closest(key, valid)
    fix = f"did you mean '{guess}'? " if guess else ""
    fix += f"valid arguments for {name}: " + (", ".join(f"{k}={v!r}" for k, v in valid.items()) or "none")
    takers = [other for other, entry in sorted(_REGISTRY.items()) if key in entry.kwargs]
    if takers and not guess:  # e.g. 'hidden' on mlp_1200x2, whose hidden sizes are fixed: point to 'mlp'
        fix += f"; models that take '{key}': {', '.join(takers)}"
    return fix


def count_params(model: nn.Module) -> int:
    """Number of parameters, trainable or frozen (shared tensors counted once); buffers excluded."""
    return sum(p.numel() for p in model.parameters())
