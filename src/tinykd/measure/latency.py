"""Latency harness: warm-up, then median and p90 of repeated timed calls, on a fixed number of threads.

PyTorch modules, ONNX Runtime sessions, TFLite interpreters and ExecuTorch programs are timed the same way, in
one process. ``interleaved_latency`` times many of them round-robin (round after round, every timer once per
round in a rotating order), so a burst of load from another process hits every variant alike instead of the one
that happened to be measured then; the spread of the per-round medians and p90 / median say how noisy the machine
was, and ``noisy`` flags a measurement not to trust.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

P90_OVER_MEDIAN_MAX = 1.5  # p90 above 1.5 × the median: the calls were interrupted by other work
ROUND_SPREAD_MAX = 1.25  # slowest round's median above 1.25 × the fastest's: the load changed during the rounds

InputMaker = Callable[[int], tuple[torch.Tensor, ...]]
Timer = Callable[[], object]


@contextmanager
def torch_threads(n: int):
    """Temporarily run PyTorch ops on ``n`` intra-op threads."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def time_calls(fn: Timer, *, warmup: int, repeats: int) -> dict:
    """Median and p90 wall time in milliseconds of ``repeats`` calls after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    return _stats(_timed(fn, repeats), [])


def _timed(fn: Timer, n: int) -> np.ndarray:
    times = np.empty(n)
    for i in range(n):
        t0 = time.perf_counter()
        fn()
        times[i] = time.perf_counter() - t0
    return times


def _stats(times: np.ndarray, round_medians: list[float]) -> dict:
    median = float(np.median(times) * 1e3)
    p90 = float(np.percentile(times, 90) * 1e3)
    out = {"median_ms": median, "p90_ms": p90, "repeats": int(len(times))}
    if round_medians:
        spread = max(round_medians) / min(round_medians) if min(round_medians) > 0 else float("inf")
        out.update({"rounds": len(round_medians), "round_medians_ms": [round(m, 6) for m in round_medians],
                    "round_spread": float(spread)})
    out["noisy"] = bool(p90 > P90_OVER_MEDIAN_MAX * median or out.get("round_spread", 1.0) > ROUND_SPREAD_MAX)
    return out


def interleaved_latency(timers: dict[str, dict[str, Timer]], *, warmup: int, repeats: int, rounds: int = 5,
                        threads: int = 1) -> dict[str, dict[str, dict]]:
    """Time every ``timers[key][batch]`` call round-robin; ``{key: {batch: stats}}``.

    ``repeats`` calls per timer (fewer for large batches, see ``repeats_for``) are split over ``rounds`` rounds;
    in each round every timer of a batch size runs its share back to back, the order rotating by one each round.
    Stats: median and p90 over all calls, the median of each round, their spread (max / min) and ``noisy``.
    """
    rounds = max(1, rounds)
    out: dict[str, dict[str, dict]] = {key: {} for key in timers}
    batches = list(dict.fromkeys(b for per in timers.values() for b in per))
    with torch_threads(threads), torch.inference_mode():
        for batch in batches:
            keys = [k for k in timers if batch in timers[k]]
            per_round = max(1, -(-repeats_for(int(batch.lstrip("b")), repeats) // rounds))
            for k in keys:
                for _ in range(warmup):
                    timers[k][batch]()
            samples: dict[str, list[np.ndarray]] = {k: [] for k in keys}
            for r in range(rounds):
                shift = r % len(keys)
                for k in keys[shift:] + keys[:shift]:
                    samples[k].append(_timed(timers[k][batch], per_round))
            for k in keys:
                medians = [float(np.median(s) * 1e3) for s in samples[k]]
                out[k][batch] = _stats(np.concatenate(samples[k]), medians)
    return out


def torch_timers(model: nn.Module, in_shape: tuple[int, ...], batch_sizes: list[int], *,
                 make_inputs: InputMaker | None = None) -> dict[str, Timer]:
    """One call of a PyTorch module (eval mode) per batch size; run under ``inference_mode`` by the harness.
    ``make_inputs(b)`` gives the positional inputs of a batch of ``b`` (default: one random float tensor of
    ``in_shape``; token models get ids and a mask of a stated length, ``Task.example_inputs``)."""
    model.eval()
    make = make_inputs or (lambda b: (torch.randn(b, *in_shape),))
    out = {}
    for b in batch_sizes:
        args = make(b)
        out[f"b{b}"] = (lambda args=args: model(*args))
    return out


def ort_timers(session, in_shape: tuple[int, ...], batch_sizes: list[int], *,
               make_inputs: InputMaker | None = None) -> dict[str, Timer]:
    """One ``session.run`` per batch size (the session's thread count is set when it is created); inputs as in
    ``torch_timers``, fed to the session's inputs in order."""
    names = [i.name for i in session.get_inputs()]
    out = {}
    for b in batch_sizes:
        if make_inputs is None:
            feed = {names[0]: np.random.default_rng(0).standard_normal((b, *in_shape), dtype=np.float32)}
        else:
            feed = {n: a.numpy() for n, a in zip(names, make_inputs(b))}
        out[f"b{b}"] = (lambda feed=feed: session.run(None, feed))
    return out


def torch_latency(model: nn.Module, in_shape: tuple[int, ...], batch_sizes: list[int], *, threads: int,
                  warmup: int, repeats: int) -> dict:
    """{"b1": {...}, "b32": {...}} for a PyTorch module in eval mode under inference_mode."""
    return interleaved_latency({"m": torch_timers(model, in_shape, batch_sizes)}, warmup=warmup, repeats=repeats,
                               rounds=1, threads=threads)["m"]


def ort_latency(session, in_shape: tuple[int, ...], batch_sizes: list[int], *, warmup: int, repeats: int) -> dict:
    """The same harness for an onnxruntime.InferenceSession (its thread count is set when it is created)."""
    return interleaved_latency({"m": ort_timers(session, in_shape, batch_sizes)}, warmup=warmup, repeats=repeats,
                               rounds=1, threads=torch.get_num_threads())["m"]


def repeats_for(batch: int, repeats: int) -> int:
    """Fewer repeats for large batches keep the harness quick; never fewer than 5."""
    return max(5, repeats // max(1, batch // 8))
