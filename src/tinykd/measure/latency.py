"""Latency harness: warm-up, then median and p90 of repeated timed calls, on a fixed number of threads.

PyTorch modules and ONNX Runtime sessions are timed the same way, in one process, so ratios compare like
with like.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn


@contextmanager
def torch_threads(n: int):
    """Temporarily run PyTorch ops on ``n`` intra-op threads."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def time_calls(fn: Callable[[], object], *, warmup: int, repeats: int) -> dict:
    """Median and p90 wall time in milliseconds of ``repeats`` calls after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = np.empty(repeats)
    for i in range(repeats):
        t0 = time.perf_counter()
        fn()
        times[i] = time.perf_counter() - t0
    return {"median_ms": float(np.median(times) * 1e3), "p90_ms": float(np.percentile(times, 90) * 1e3),
            "repeats": repeats}


def torch_latency(model: nn.Module, in_shape: tuple[int, ...], batch_sizes: list[int], *, threads: int,
                  warmup: int, repeats: int) -> dict:
    """{"b1": {...}, "b32": {...}} for a PyTorch module in eval mode under inference_mode."""
    model.eval()
    out = {}
    with torch_threads(threads), torch.inference_mode():
        for b in batch_sizes:
            x = torch.randn(b, *in_shape)
            out[f"b{b}"] = time_calls(lambda: model(x), warmup=warmup, repeats=_repeats_for(b, repeats))
    return out


def ort_latency(session, in_shape: tuple[int, ...], batch_sizes: list[int], *, warmup: int, repeats: int) -> dict:
    """The same harness for an onnxruntime.InferenceSession (its thread count is set when it is created)."""
    name = session.get_inputs()[0].name
    out = {}
    for b in batch_sizes:
        feed = {name: np.random.default_rng(0).standard_normal((b, *in_shape), dtype=np.float32)}
        out[f"b{b}"] = time_calls(lambda: session.run(None, feed), warmup=warmup, repeats=_repeats_for(b, repeats))
    return out


def _repeats_for(batch: int, repeats: int) -> int:
    """Fewer repeats for large batches keep the harness quick; never fewer than 5."""
    return max(5, repeats // max(1, batch // 8))
