"""Stratified, seed-deterministic splitting and subsampling, and train-statistics standardization."""
from __future__ import annotations

import numpy as np

Arrays = tuple[np.ndarray, np.ndarray]  # (x, y)


def allocate(counts: np.ndarray, total: int) -> np.ndarray:
    """Per-class sample counts summing to ``total`` in proportion to ``counts`` (largest remainder method)."""
    exact = counts * (total / counts.sum())
    take = np.floor(exact).astype(np.int64)
    order = np.argsort(-(exact - take), kind="stable")
    take[order[: total - take.sum()]] += 1
    return take


def stratified_pick(y: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Shuffled indices of ``n`` samples drawn at random within each class, keeping class proportions."""
    if n <= 0 or len(y) == 0:
        return np.zeros(0, dtype=np.int64)
    _, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    take = allocate(counts, n)
    order = np.lexsort((rng.random(len(y)), inverse))  # grouped by class, random within a class
    group = inverse[order]
    rank = np.arange(len(y)) - (np.cumsum(counts) - counts)[group]
    return rng.permutation(order[rank < take[group]])


def stratified_split(x: np.ndarray, y: np.ndarray, fraction: float,
                     rng: np.random.Generator) -> tuple[Arrays, Arrays]:
    """Split off ``round(fraction * len(y))`` samples class-proportionally; returns (kept, held_out)."""
    held = stratified_pick(y, round(fraction * len(y)), rng)
    mask = np.ones(len(y), dtype=bool)
    mask[held] = False
    kept = rng.permutation(np.flatnonzero(mask))
    return (x[kept], y[kept]), (x[held], y[held])


def limit_split(x: np.ndarray, y: np.ndarray, limit: int, rng: np.random.Generator) -> Arrays:
    """At most ``limit`` samples, subsampled class-proportionally (unchanged when already small enough)."""
    if len(y) <= limit:
        return x, y
    picked = stratified_pick(y, limit, rng)
    return x[picked], y[picked]


def mean_std(x: np.ndarray, chunk: int = 8192) -> tuple[float, float]:
    """Scalar mean and std of ``x`` accumulated in float64, in chunks of samples to bound temporary memory."""
    mean = float(x.mean(dtype=np.float64))
    squares = sum(float(np.square(x[i:i + chunk] - mean).sum(dtype=np.float64))
                  for i in range(0, len(x), chunk))
    return mean, (squares / x.size) ** 0.5


def standardize(splits: dict[str, Arrays]) -> dict[str, float]:
    """Standardize every split in place with the train split's scalar mean and std; returns them."""
    mean, std = mean_std(splits["train"][0])
    std = std or 1.0  # a constant train set is only centred
    for x, _ in splits.values():
        x -= np.float32(mean)
        x /= np.float32(std)
    return {"mean": mean, "std": std}
