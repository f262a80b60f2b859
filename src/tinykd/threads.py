"""How many CPU threads this process may use, and the training default derived from it."""
from __future__ import annotations

import os

AUTO_MAX = 4  # tiny models gain nothing from more intra-op threads; more only contend with other work


def available_cores() -> int:
    """Cores this process may run on: its CPU affinity mask (what taskset, cgroups and schedulers set), capped by
    ``OMP_NUM_THREADS`` when that is set to a positive number."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cores = os.cpu_count() or 1
    omp = os.environ.get("OMP_NUM_THREADS", "").strip()
    if omp.isdigit() and int(omp) > 0:
        cores = min(cores, int(omp))
    return max(1, cores)


def resolve_threads(setting: int | str) -> int:
    """A ``threads`` setting as a number: ``"auto"`` is ``min(available_cores(), AUTO_MAX)``."""
    if setting == "auto":
        return min(available_cores(), AUTO_MAX)
    return int(setting)
