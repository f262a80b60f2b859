"""Many processes (torchrun): the rank, the process group, and the few collective steps tinykd needs.

One process is the default, and then every function here is the identity or does nothing. Under torchrun (RANK,
WORLD_SIZE and LOCAL_RANK in the environment) ``init`` joins the process group: gloo for CPU tensors, NCCL for CUDA
tensors. Rank 0 alone writes files. ``from_main`` sends what rank 0 decides (the run folder) to the others;
``together`` turns an error on one rank into an error on every rank, so that no rank waits forever in the next
collective and the user reads the failing rank's message.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import contextmanager
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn

from . import errors
from .errors import TinyKDError, TrainingError

T = TypeVar("T")


def launched() -> bool:
    """Whether a launcher (torchrun) started this process as one of several: WORLD_SIZE above 1."""
    return "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def active() -> bool:
    """Whether this process is one of several in an initialised process group."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def local_rank() -> int:
    """This process's index on its machine (torchrun's LOCAL_RANK): the GPU it takes."""
    return int(os.environ.get("LOCAL_RANK", "0")) if active() else 0


def is_main() -> bool:
    """Rank 0: the process that writes the run's files and prints its progress."""
    return rank() == 0


def init() -> bool:
    """Join the process group torchrun describes (nothing to do in one process, or when joined already); whether this
    process is now one of several. With CUDA, each process takes the GPU of its LOCAL_RANK as its current device."""
    if not launched() or active():
        return active()
    backend = "gloo"
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local < torch.cuda.device_count():
            torch.cuda.set_device(local)
        backend = "cpu:gloo,cuda:nccl"  # CPU tensors (flags, objects) over gloo, gradients on the GPU over NCCL
    dist.init_process_group(backend)
    return True


def shutdown() -> None:
    """Leave the process group (after the last collective of this process)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def wrap(module: nn.Module, device: torch.device) -> nn.Module:
    """``module`` in DistributedDataParallel when there are several processes, else ``module`` itself.

    ``find_unused_parameters``: a step may leave parameters out of the loss (a two-stage term's first stage, an
    exclusive term, a teacher-free term's helpers), and those must still be reduced, as zeros. ``broadcast_buffers``
    off: buffers (BatchNorm statistics) stay each rank's own, as with one process per slice; rank 0's are saved. With
    both, the forward pass holds no collective, so ``together`` may surround it."""
    if not active():
        return module
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None,
                                   find_unused_parameters=True, broadcast_buffers=False)


def all_gather(obj: T) -> list[T]:
    """``obj`` of every rank, in rank order (a list of one in one process)."""
    if not active():
        return [obj]
    out: list = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def sum_over_ranks(values: dict[str, float]) -> dict[str, float]:
    """The per-key sums of ``values`` over all ranks (a key a rank lacks counts as 0)."""
    total: dict[str, float] = {}
    for part in all_gather(values):
        for k, v in part.items():
            total[k] = total.get(k, 0.0) + v
    return total


def _describe(exc: BaseException) -> tuple[str, str, str | None]:
    """An error as (kind, what, fix), to send to the other ranks."""
    if isinstance(exc, TinyKDError):
        head = f"{exc.where}: {exc.what}" if exc.where else exc.what
        return type(exc).__name__, head, exc.fix
    return "", f"{type(exc).__name__}: {exc}", f"see the traceback that rank {rank()} printed"


def _relayed(source: int, failure: tuple[str, str, str | None]) -> TinyKDError:
    """The error of rank ``source`` as raised on another rank: the same kind of TinyKDError, naming the rank."""
    kind, what, fix = failure
    cls = getattr(errors, kind, None)
    cls = cls if isinstance(cls, type) and issubclass(cls, TinyKDError) else TrainingError
    err = cls(f"rank {source} of {world_size()} failed: {what}", fix)
    _mark_reported(err)
    return err


def _mark_reported(exc: BaseException) -> None:
    """On a rank other than 0: rank 0 has the error too and prints it (the CLI prints it once)."""
    if not is_main():
        try:
            exc.printed_by_rank_0 = True
        except AttributeError:
            pass


@contextmanager
def together():
    """Run the block on every rank and agree on its outcome: when it raises on any rank it raises on all of them, the
    failing rank's own error there and the same error naming that rank elsewhere. The block must hold no collective
    (one rank would wait in it for a rank that failed before it). In one process, just the block."""
    if not active():
        yield
        return
    failure: Exception | None = None
    try:
        yield
    except Exception as exc:  # noqa: BLE001 (every failure must reach the other ranks)
        failure = exc
    flag = torch.tensor([0 if failure is None else 1], dtype=torch.int32)
    dist.all_reduce(flag)
    if not int(flag.item()):
        return
    failures = all_gather(None if failure is None else _describe(failure))
    if failure is not None:
        _mark_reported(failure)
        raise failure
    source = next(r for r, f in enumerate(failures) if f is not None)
    raise _relayed(source, failures[source])


def from_main(fn: Callable[..., T], *args, **kwargs) -> T:
    """``fn(*args, **kwargs)`` run on rank 0 alone and its (picklable) result sent to every rank: what one process
    decides for all, such as the run folder. An error in ``fn`` is raised on every rank."""
    if not active():
        return fn(*args, **kwargs)
    box: list = [None]
    failure: Exception | None = None
    if is_main():
        try:
            box[0] = ("ok", fn(*args, **kwargs))
        except Exception as exc:  # noqa: BLE001
            failure = exc
            box[0] = ("error", _describe(exc))
    dist.broadcast_object_list(box, src=0)
    if failure is not None:
        raise failure
    status, value = box[0]
    if status == "error":
        raise _relayed(0, value)
    return value
