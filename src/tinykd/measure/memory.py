"""Peak activation memory (what an MCU's SRAM tensor arena must hold) from an exported ONNX graph.

Nodes run one at a time in the graph's order (ONNX requires topological order). A tensor is live from the
step of the node that produces it to the step of its last consumer; graph inputs are live from the start
and graph outputs until the end. At each step the inputs and outputs of the executing node are both live.
Initializers and Constant outputs are weights: they stay in flash and are not counted.

In a QDQ-quantized graph, QuantizeLinear/DequantizeLinear pairs stand for one int8 buffer: a Q/DQ output
shares the buffer of its input and the group is sized at its narrowest dtype, so a ``Conv -> Q -> DQ``
chain costs one int8 tensor, as it does once an int8 runtime fuses it. By default a Relu/Clip straight
after a Conv/Gemm/MatMul/Add writes into its producer's buffer, as TFLite's fused activations do
(``fuse_activations=False`` runs the graph exactly as written). The result is a lower bound on a
TFLM arena: the runtime adds per-tensor metadata, 16-byte alignment, kernel scratch buffers and any
fragmentation left by its greedy planner.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import TinyKDError

_QDQ = {"QuantizeLinear", "DequantizeLinear"}
_FUSED_ACTIVATIONS = {"Relu", "Clip"}  # TFLite fuses RELU / RELU6 / RELU_N1_TO_1 into the producing op
_FUSING_PRODUCERS = {"Conv", "ConvTranspose", "Gemm", "MatMul", "Add"}


@dataclass(frozen=True)
class PeakMemory:
    """Peak live activation bytes and where it happens.

    ``step`` indexes ``per_step`` (one entry per executed node, Q/DQ nodes folded away); ``tensors`` maps
    each tensor live at the peak to its bytes.
    """

    peak_bytes: int
    step: int
    node: str
    op_type: str
    tensors: dict[str, int]
    per_step: list[int] = field(repr=False)


@dataclass(frozen=True)
class _Tensor:
    name: str
    nbytes: int
    start: int  # first step it is live
    end: int  # last step it is live
    reads: int  # number of consuming nodes


def peak_activation_memory(model, *, activation_bytes: int | None = None, batch: int = 1,
                           fuse_activations: bool = True) -> PeakMemory:
    """Peak SRAM bytes of live activations when running ``model`` (an ONNX path or ModelProto) at ``batch``.

    ``activation_bytes`` sizes every activation element at that many bytes (1 to assume an int8 deployment
    of an fp32 graph); None takes each tensor's dtype from the graph. ``fuse_activations`` folds a Relu/Clip
    into the Conv/Gemm/MatMul/Add before it, as the TFLite converter does; False runs the graph as written.
    """
    tensors, steps = _lifetimes(model, activation_bytes=activation_bytes, batch=batch,
                                fuse_activations=fuse_activations)
    if not steps:
        raise TinyKDError("the ONNX graph has no compute nodes", "export a model with at least one layer")
    per_step = [0] * len(steps)
    for t in tensors.values():
        for s in range(t.start, t.end + 1):
            per_step[s] += t.nbytes
    peak_step = int(np.argmax(per_step))
    live = {t.name: t.nbytes for t in tensors.values() if t.start <= peak_step <= t.end}
    node = steps[peak_step]
    return PeakMemory(peak_bytes=per_step[peak_step], step=peak_step, node=node.name or f"#{peak_step}",
                      op_type=node.op_type, tensors=live, per_step=per_step)


def activation_traffic(model, *, activation_bytes: int | None = None, batch: int = 1,
                       fuse_activations: bool = True) -> dict:
    """Bytes of weights and of activations moved by one inference.

    Each activation is written once by its producer (the input by the caller) and read once per consuming
    node; each weight byte is read once. Weights are sized at their stored dtype (int8 in a QDQ graph).
    """
    proto = _load(model)
    tensors, _ = _lifetimes(proto, activation_bytes=activation_bytes, batch=batch,
                            fuse_activations=fuse_activations)
    return {"weight_bytes": _initializer_bytes(proto),
            "activation_read_bytes": sum(t.nbytes * t.reads for t in tensors.values()),
            "activation_write_bytes": sum(t.nbytes for t in tensors.values())}


def _lifetimes(model, *, activation_bytes: int | None, batch: int, fuse_activations: bool):
    """Every activation buffer's size and live interval, and the executed nodes in order."""
    if activation_bytes is not None and activation_bytes < 1:
        raise TinyKDError(f"activation_bytes must be ≥ 1, got {activation_bytes}",
                          "use 1 for int8, 2 for fp16, 4 for fp32, or None to read dtypes from the graph")
    graph = _with_shapes(_load(model), batch).graph
    weights = {init.name for init in graph.initializer}
    weights |= {out for n in graph.node if n.op_type == "Constant" for out in n.output}
    info = {vi.name: vi for vi in [*graph.input, *graph.value_info, *graph.output]}
    canon, folded = _buffers(graph, weights, fuse_activations)

    steps = [n for i, n in enumerate(graph.node) if i not in folded and n.op_type != "Constant"]
    start: dict[str, int] = {}
    end: dict[str, int] = {}
    reads: dict[str, int] = {}
    for inp in graph.input:
        if inp.name not in weights:
            start[canon.get(inp.name, inp.name)] = 0
    for i, node in enumerate(steps):
        for name in node.input:
            root = canon.get(name, name)
            if name and root not in weights:
                start.setdefault(root, i)
                end[root] = i
                reads[root] = reads.get(root, 0) + 1
        for name in node.output:
            root = canon.get(name, name)
            if name and root not in weights:
                start.setdefault(root, i)
                end[root] = max(end.get(root, i), i)
    for out in graph.output:
        root = canon.get(out.name, out.name)
        if root in start:
            end[root] = len(steps) - 1

    members: dict[str, list[str]] = {}  # a buffer's root -> every tensor name stored in it, root first
    for name, root in canon.items():
        members.setdefault(root, [root]).append(name)
    tensors = {}
    for root in start:
        nbytes = min(_nbytes(info, n, activation_bytes) for n in members.get(root, [root]))
        tensors[root] = _Tensor(root, nbytes, start[root], end.get(root, start[root]), reads.get(root, 0))
    return tensors, steps


def _buffers(graph, weights: set[str], fuse_activations: bool) -> tuple[dict[str, str], set[int]]:
    """Which tensors share one buffer (name -> root name) and which nodes fold away (their indices).

    A Q/DQ output joins its input's buffer, unless the input also feeds a float consumer (then both exist).
    A DQ of a weight is a weight. With ``fuse_activations`` a Relu/Clip whose input comes only from a
    Conv/Gemm/MatMul/Add writes into that producer's buffer, as TFLite's fused activations do.
    Groups are sized at their narrowest member, so a ``Conv -> Q -> DQ`` chain costs one int8 buffer.
    """
    consumers: dict[str, list] = {}
    producer: dict[str, object] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
        for name in node.output:
            producer[name] = node
    outputs = {o.name for o in graph.output}
    canon: dict[str, str] = {}
    folded: set[int] = set()

    def root(name: str) -> str:
        while name in canon:
            name = canon[name]
        return name

    for i, node in enumerate(graph.node):
        if not node.input or not node.output:
            continue
        src = root(node.input[0])
        if node.op_type in _QDQ:
            folded.add(i)
            feeds_float = any(c.op_type not in _QDQ for c in consumers.get(node.input[0], []))
            if node.op_type == "DequantizeLinear" or not feeds_float or src in weights:
                canon[node.output[0]] = src
                if src in weights:
                    weights.add(node.output[0])
        elif fuse_activations and node.op_type in _FUSED_ACTIVATIONS and src not in weights:
            # Every consumer of the producer's buffer (Q/DQ aside) must be this activation.
            readers = [c for n in [src, *(k for k, v in canon.items() if root(v) == src)]
                       for c in consumers.get(n, []) if c.op_type not in _QDQ]
            made_by = producer.get(src)
            if (made_by is not None and made_by.op_type in _FUSING_PRODUCERS and src not in outputs
                    and all(r is node for r in readers)):
                folded.add(i)
                canon[node.output[0]] = src
    return {name: root(name) for name in canon}, folded


def _with_shapes(proto, batch: int):
    """A copy of ``proto`` with symbolic input dims fixed to ``batch`` and every tensor's shape inferred."""
    import onnx

    proto = onnx.ModelProto.FromString(proto.SerializeToString())
    graph = proto.graph
    # The batch axis is the first axis of an input; other symbolic dims stay symbolic and fail loudly later.
    symbols = {inp.type.tensor_type.shape.dim[0].dim_param for inp in graph.input
               if inp.type.tensor_type.shape.dim and inp.type.tensor_type.shape.dim[0].dim_param}
    for vi in [*graph.input, *graph.output]:
        for d in vi.type.tensor_type.shape.dim:
            if d.dim_param and d.dim_param in symbols:
                d.dim_value = batch
    del graph.value_info[:]  # re-infer from the fixed inputs, not the exporter's symbolic shapes
    try:
        return onnx.shape_inference.infer_shapes(proto, strict_mode=False, data_prop=True)
    except Exception as err:  # noqa: BLE001 - onnx raises several error types for the same problem
        raise TinyKDError(f"ONNX shape inference failed: {err}",
                          "export the model with static shapes (e.g. tinykd.deploy.onnx.export_onnx)") from None


def _nbytes(info: dict, name: str, activation_bytes: int | None) -> int:
    """Bytes of one tensor from its inferred shape and dtype (or ``activation_bytes`` per element)."""
    from onnx import helper

    vi = info.get(name)
    if vi is None or not vi.type.tensor_type.HasField("shape"):
        raise TinyKDError(f"cannot size tensor '{name}': shape inference gave it no shape",
                          "export the model with static shapes (e.g. tinykd.deploy.onnx.export_onnx)")
    dims = vi.type.tensor_type.shape.dim
    if any(not d.HasField("dim_value") for d in dims):
        raise TinyKDError(f"cannot size tensor '{name}': a dimension is symbolic ({_shape(dims)})",
                          "export the model with static shapes apart from the batch axis")
    numel = int(np.prod([d.dim_value for d in dims], dtype=np.int64))
    if activation_bytes is not None:
        return numel * activation_bytes
    return numel * helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type).itemsize


def _initializer_bytes(proto) -> int:
    """Bytes of all initializers and Constant tensors at their stored dtype."""
    from onnx import helper

    def sizes() -> Iterator[int]:
        for init in proto.graph.initializer:
            yield int(np.prod(init.dims, dtype=np.int64)) * helper.tensor_dtype_to_np_dtype(init.data_type).itemsize
        for node in proto.graph.node:
            if node.op_type == "Constant":
                for attr in node.attribute:
                    if attr.name == "value":
                        t = attr.t
                        yield int(np.prod(t.dims, dtype=np.int64)) * helper.tensor_dtype_to_np_dtype(
                            t.data_type).itemsize
    return int(sum(sizes()))


def _shape(dims) -> str:
    return "x".join(str(d.dim_value) if d.HasField("dim_value") else (d.dim_param or "?") for d in dims)


def _load(model):
    """A ModelProto from a path or a ModelProto."""
    import onnx

    if isinstance(model, onnx.ModelProto):
        return model
    path = Path(model)
    if not path.exists():
        raise TinyKDError(f"ONNX file '{path}' not found", "export the model first (tinykd.deploy.onnx.export_onnx)")
    try:
        return onnx.load(str(path))
    except Exception as err:  # noqa: BLE001
        raise TinyKDError(f"could not read ONNX file '{path}': {err}", "re-export the model") from None
