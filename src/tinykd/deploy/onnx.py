"""ONNX export of a PyTorch model (batch dimension dynamic, weights embedded) and ORT sessions to run it."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import TinyKDError
from ..io import storage_error
from .quiet import quiet

INPUT, OUTPUT = "input", "logits"


def export_onnx(model: nn.Module, in_shape: tuple[int, ...], path: str | Path, *, opset: int = 18) -> Path:
    """Write ``model`` (eval mode) to ``path`` as a single self-contained ONNX file with a dynamic batch axis.

    Uses the torch.export-based exporter; the TorchScript exporter is the fallback for models it cannot trace.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:  # a folder that cannot take the file is a storage problem, not a tracing one
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.touch()
    except OSError as exc:
        raise storage_error(path, exc) from None
    model = model.eval()
    example = (torch.randn(2, *in_shape),)
    try:
        with _quiet():
            batch = torch.export.Dim("batch", min=1, max=4096)
            torch.onnx.export(model, example, str(tmp), dynamo=True, external_data=False, opset_version=opset,
                              input_names=[INPUT], output_names=[OUTPUT], dynamic_shapes=({0: batch},),
                              optimize=True, verbose=False)
    except Exception as first:  # noqa: BLE001 - any tracing failure falls back to the TorchScript exporter
        try:
            with _quiet():
                torch.onnx.export(model, example, str(tmp), dynamo=False, opset_version=opset,
                                  input_names=[INPUT], output_names=[OUTPUT],
                                  dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}})
        except Exception as second:  # noqa: BLE001
            tmp.unlink(missing_ok=True)
            if isinstance(first, OSError) or isinstance(second, OSError):
                raise storage_error(path, second if isinstance(second, OSError) else first) from None
            raise TinyKDError(f"could not export {type(model).__name__} to ONNX: {first}; TorchScript exporter: {second}",
                              "make the model's forward traceable (no data-dependent Python control flow)") from None
    try:
        os.replace(tmp, path)
    except OSError as exc:
        raise storage_error(path, exc) from None
    return path


def _quiet():
    """Silence the exporters' progress chatter and deprecation noise (errors still propagate)."""
    return quiet(("torch.onnx", "torch.export", "torch._dynamo", "onnxscript"))


def ort_session(path: str | Path, *, threads: int = 1):
    """An onnxruntime CPU InferenceSession with ``threads`` intra-op threads and full graph optimisation."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def ort_predict(session, x: np.ndarray | torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """Logits of an ORT session for all of ``x``, in batches."""
    x = x.numpy() if isinstance(x, torch.Tensor) else x
    x = np.ascontiguousarray(x, dtype=np.float32)
    name = session.get_inputs()[0].name
    out = [session.run(None, {name: x[i:i + batch_size]})[0] for i in range(0, len(x), batch_size)]
    return np.concatenate(out) if out else np.empty((0,))
