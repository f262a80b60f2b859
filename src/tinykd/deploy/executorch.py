"""ExecuTorch export (.pte) with the XNNPACK delegate, and the ExecuTorch runtime to run it.

torch.export -> to_edge_transform_and_lower(partitioner=[XnnpackPartitioner()]) -> to_executorch. The
program is exported at batch 1 (static shapes, as on a device); ``pte_predict`` loops over samples.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import TinyKDError
from .quiet import quiet

EXTRA_FIX = "pip install 'tinykd[executorch]'"


def export_pte(model: nn.Module, in_shape: tuple[int, ...], path: str | Path) -> Path:
    """Write ``model`` (eval mode, batch 1) to ``path`` as an ExecuTorch program lowered to XNNPACK."""
    _import("executorch.exir", "exporting to ExecuTorch")
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    was_training = model.training
    model.eval()
    try:
        with _quiet():
            program = torch.export.export(model, (torch.zeros(1, *in_shape),))
            edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
            tmp.write_bytes(edge.to_executorch().buffer)
    except Exception as err:  # noqa: BLE001 - export failures surface as many exception types
        raise TinyKDError(f"could not export {type(model).__name__} to ExecuTorch: {err}",
                          "make the forward traceable by torch.export (no data-dependent Python control flow)"
                          ) from None
    finally:
        model.train(was_training)
    os.replace(tmp, path)
    return path


def pte_predict(path: str | Path, x: np.ndarray | torch.Tensor, *, method: str = "forward") -> np.ndarray:
    """Outputs of an ExecuTorch program for every sample of ``x`` (run one at a time, as exported)."""
    runtime = _import("executorch.runtime", "running an ExecuTorch program")
    path = Path(path)
    if not path.is_file():
        raise TinyKDError(f"ExecuTorch file '{path}' not found", "export it first with export_pte")
    program = runtime.Runtime.get().load_program(str(path), verification=runtime.Verification.Minimal)
    fn = program.load_method(method)
    x = torch.as_tensor(x.detach().cpu() if isinstance(x, torch.Tensor) else np.asarray(x)).float()
    out = []
    for i in range(len(x)):
        try:
            result = fn.execute([x[i:i + 1].contiguous()])
        except RuntimeError as err:
            raise TinyKDError(f"ExecuTorch could not run '{path.name}' on input of shape {tuple(x[i:i + 1].shape)}: "
                              f"{err}", "pass samples with the shape the program was exported with") from None
        out.append(result[0].detach().numpy().copy())
    return np.concatenate(out) if out else np.empty((0,), dtype=np.float32)


def _import(module: str, purpose: str):
    """Import an optional ExecuTorch module or say which extra installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise TinyKDError(f"{purpose} needs the executorch extra, which is not installed", EXTRA_FIX) from None


def _quiet():
    """Silence export warnings and progress logging (errors still propagate)."""
    return quiet(("torch.export", "torch._dynamo", "executorch"))


def pte_timer(path: str | Path, in_shape: tuple[int, ...]):
    """One ExecuTorch method call at batch 1 (the exported shape), as a call for the latency harness."""
    runtime = _import("executorch.runtime", "running an ExecuTorch program")
    program = runtime.Runtime.get().load_program(str(path), verification=runtime.Verification.Minimal)
    fn = program.load_method("forward")
    x = torch.randn(1, *in_shape)
    return lambda: fn.execute([x])


def pte_latency(path: str | Path, in_shape: tuple[int, ...], *, warmup: int, repeats: int) -> dict:
    """{"b1": {median_ms, p90_ms, repeats}} of ``pte_timer``, timed by the same harness as PyTorch and ORT."""
    from ..measure.latency import time_calls

    return {"b1": time_calls(pte_timer(path, in_shape), warmup=warmup, repeats=repeats)}
