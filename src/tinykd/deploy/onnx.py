"""ONNX export of a PyTorch model (batch dimension dynamic, weights embedded; dense inputs, or token ids with their
mask and a dynamic sequence axis) and ORT sessions to run it."""
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


def export_onnx(model: nn.Module, in_shape: tuple[int, ...] | None, path: str | Path, *, opset: int = 18,
                example: tuple[torch.Tensor, ...] | None = None, input_names: list[str] | None = None,
                dynamic_axes: dict[str, dict[int, str]] | None = None, exporter: str = "auto") -> Path:
    """Write ``model`` (eval mode) to ``path`` as a single self-contained ONNX file with a dynamic batch axis.

    Dense inputs: ``export_onnx(model, in_shape, path)`` (one float input named "input"). Other inputs, such as the
    int64 ``input_ids`` and ``attention_mask`` of a text model: ``example`` (the positional inputs, as
    ``Task.example_inputs`` makes them), ``input_names`` and ``dynamic_axes`` ({input or "logits": {axis: name}},
    as ``Task.dynamic_axes`` gives them; by default axis 0 of every input and of the logits is the batch).
    ``exporter``: "dynamo" (torch.export), "torchscript", or "auto": torch.export first, the TorchScript exporter
    for models it cannot trace or whose graph it left with a fixed size on a dynamic axis.
    """
    if exporter not in ("auto", "dynamo", "torchscript"):
        raise ValueError(f"exporter must be 'auto', 'dynamo' or 'torchscript', got {exporter!r}")
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:  # a folder that cannot take the file is a storage problem, not a tracing one
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.touch()
    except OSError as exc:
        raise storage_error(path, exc) from None
    model = model.eval()
    if example is None:
        if in_shape is None:
            raise ValueError("export_onnx needs in_shape (dense inputs) or example (the model's inputs)")
        example = (torch.randn(2, *in_shape),)
    example = tuple(example)
    names = list(input_names or ([INPUT] if len(example) == 1 else [f"input_{i}" for i in range(len(example))]))
    if len(names) != len(example):
        raise ValueError(f"{len(names)} input names for {len(example)} example inputs")
    axes = dict(dynamic_axes or {**{n: {0: "batch"} for n in names}, OUTPUT: {0: "batch"}})
    example = _grown(example, [axes.get(n, {}) for n in names])
    errors: list[Exception | str] = []
    for kind in (("dynamo", "torchscript") if exporter == "auto" else (exporter,)):
        try:
            with _quiet():
                _export(kind, model, example, tmp, opset, names, axes)
        except Exception as exc:  # noqa: BLE001 - any tracing failure falls back to the next exporter
            errors.append(exc)
            continue
        fixed = _fixed_axes(tmp, axes)
        if fixed and kind == "dynamo" and exporter == "auto":
            errors.append(f"the torch.export graph fixed the size of {', '.join(fixed)}")
            continue
        break
    else:
        tmp.unlink(missing_ok=True)
        storage = [e for e in errors if isinstance(e, OSError)]
        if storage:
            raise storage_error(path, storage[-1]) from None
        said = [f"{'TorchScript exporter: ' if i and len(errors) > 1 else ''}{e}" for i, e in enumerate(errors)]
        raise TinyKDError(f"could not export {type(model).__name__} to ONNX: {'; '.join(said)}",
                          "make the model's forward traceable (no data-dependent Python control flow)") from None
    try:
        os.replace(tmp, path)
    except OSError as exc:
        raise storage_error(path, exc) from None
    return path


def _grown(example: tuple[torch.Tensor, ...], axes: list[dict[int, str]]) -> tuple[torch.Tensor, ...]:
    """The example with every dynamic axis of size 1 repeated to 2: torch.export fixes an axis it sees at size 1."""
    out = []
    for t, ax in zip(example, axes):
        reps = [2 if i in ax and t.shape[i] == 1 else 1 for i in range(t.dim())]
        out.append(t.repeat(*reps) if any(r > 1 for r in reps) else t)
    return tuple(out)


def _export(kind: str, model: nn.Module, example: tuple[torch.Tensor, ...], tmp: Path, opset: int,
            names: list[str], axes: dict[str, dict[int, str]]) -> None:
    if kind == "dynamo":
        dims: dict[str, torch.export.Dim] = {}  # one Dim per axis name: inputs that share "sequence" share its size

        def dim(axis_name: str):
            if axis_name not in dims:
                dims[axis_name] = torch.export.Dim(axis_name, min=1, max=4096 if axis_name == "batch" else None)
            return dims[axis_name]

        shapes = tuple({i: dim(a) for i, a in axes.get(n, {}).items()} for n in names)
        torch.onnx.export(model, example, str(tmp), dynamo=True, external_data=False, opset_version=opset,
                          input_names=names, output_names=[OUTPUT], dynamic_shapes=shapes,
                          optimize=True, verbose=False)
    else:
        torch.onnx.export(model, example, str(tmp), dynamo=False, opset_version=opset,
                          input_names=names, output_names=[OUTPUT], dynamic_axes=axes)


def _fixed_axes(path: Path, axes: dict[str, dict[int, str]]) -> list[str]:
    """The dynamic axes ("input_ids[1]") the graph at ``path`` gives a fixed size."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    fixed = []
    for value in [*graph.input, *graph.output]:
        dims = value.type.tensor_type.shape.dim
        fixed += [f"{value.name}[{i}]" for i in axes.get(value.name, {})
                  if i < len(dims) and dims[i].HasField("dim_value")]
    return fixed


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


def ort_predict(session, x, batch_size: int = 256) -> np.ndarray:
    """Logits of an ORT session for all of ``x``, in batches: one float array or tensor (a dense model), or the
    model's inputs as a tuple in the session's input order or a dict by input name (``ort_predict_inputs``)."""
    if isinstance(x, (tuple, dict)):
        return ort_predict_inputs(session, x, batch_size)
    x = x.numpy() if isinstance(x, torch.Tensor) else x
    x = np.ascontiguousarray(x, dtype=np.float32)
    name = session.get_inputs()[0].name
    out = [session.run(None, {name: x[i:i + batch_size]})[0] for i in range(0, len(x), batch_size)]
    return np.concatenate(out) if out else np.empty((0,))


_ORT_TYPES = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(int32)": np.int32,
              "tensor(float16)": np.float16, "tensor(double)": np.float64, "tensor(bool)": np.bool_}
MASK = "attention_mask"


def ort_predict_inputs(session, inputs: dict | tuple | list, batch_size: int = 256, *,
                       trim: bool = True) -> np.ndarray:
    """Logits of an ORT session for all samples of several inputs (e.g. int64 ``input_ids`` and
    ``attention_mask``, N x L each), in batches; each array is cast to the type its session input declares.

    With ``trim``, a batch is cut to its longest sequence (the last position the ``attention_mask`` marks) when the
    graph's sequence axis is dynamic, as the text Task's batches are: padding then costs no compute."""
    specs = session.get_inputs()
    if not isinstance(inputs, dict):
        if len(inputs) != len(specs):
            raise ValueError(f"{len(inputs)} inputs for a session that takes {len(specs)} "
                             f"({', '.join(s.name for s in specs)})")
        inputs = {s.name: v for s, v in zip(specs, inputs)}
    missing = [s.name for s in specs if s.name not in inputs]
    if missing:
        raise ValueError(f"no value for the session input(s) {', '.join(missing)}")
    arrays = {s.name: np.ascontiguousarray(inputs[s.name].numpy() if isinstance(inputs[s.name], torch.Tensor)
                                           else inputs[s.name], dtype=_ORT_TYPES.get(s.type, np.float32))
              for s in specs}
    mask_spec = next((s for s in specs if s.name == MASK), None)
    trim = trim and mask_spec is not None and len(mask_spec.shape) == 2 and not isinstance(mask_spec.shape[1], int)
    n = len(next(iter(arrays.values()))) if arrays else 0
    out = []
    for i in range(0, n, batch_size):
        feed = {k: v[i:i + batch_size] for k, v in arrays.items()}
        if trim:
            held = np.flatnonzero(feed[MASK].any(0))
            longest = int(held[-1]) + 1 if len(held) else 1
            feed = {k: v[:, :longest] if v.ndim >= 2 and v.shape[1] == feed[MASK].shape[1] else v
                    for k, v in feed.items()}
        out.append(session.run(None, feed)[0])
    return np.concatenate(out) if out else np.empty((0,))


def strip_node_metadata(path: str | Path) -> Path:
    """Drop the exporter's per-node debugging metadata (stack traces, module names: over 1 KB a node) from the ONNX
    file at ``path``, in place; the graph, its weights and the model-level metadata are kept. For a small model
    that metadata is most of the file, and it is nothing a runtime reads."""
    import onnx

    path = Path(path)
    model = onnx.load(str(path))
    for node in model.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    tmp = path.with_name(f".{path.name}.tmp")
    onnx.save(model, str(tmp))
    tmp.replace(path)
    return path
