"""Post-training quantization with ONNX Runtime: static int8 (QDQ format, per-channel weights, calibrated),
dynamic int8 (weights only, activations quantized at run time) and float16.

The fp32 ONNX graph is first pre-processed (shape inference and graph optimisation, which folds
BatchNorm into the preceding convolution); static quantization then calibrates activations on training samples.
"""
from __future__ import annotations

import contextlib
import io
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..errors import TinyKDError


class _Calibration:
    """An onnxruntime CalibrationDataReader over an in-memory array (or a dict of arrays by graph input name, e.g.
    token ids and their mask), one mini-batch at a time."""

    def __init__(self, name: str, x: np.ndarray | dict[str, np.ndarray], batch_size: int = 32):
        # Equal-sized batches only: the histogram calibrators (entropy, percentile) stack the per-batch outputs and
        # fail on a shorter last batch, so a remainder is dropped (all of ``x`` is one batch when it is smaller).
        feeds = dict(x) if isinstance(x, dict) else {name: x}
        n = _count(feeds)
        batch_size = min(batch_size, n)
        usable = n - n % batch_size
        self.batches = iter([{k: v[i:i + batch_size] for k, v in feeds.items()} for i in range(0, usable, batch_size)])

    def get_next(self):
        return next(self.batches, None)

    def rewind(self):  # some onnxruntime versions call it between passes
        pass


def _count(x: np.ndarray | dict[str, np.ndarray]) -> int:
    """Number of samples in an array or in a dict of arrays (one per graph input)."""
    return len(next(iter(x.values()))) if isinstance(x, dict) else len(x)


def calibration_subset(x: torch.Tensor, y: torch.Tensor, n: int, seed: int, *,
                       mask: torch.Tensor | None = None) -> np.ndarray | dict[str, np.ndarray]:
    """``n`` training samples, class-balanced where possible, in a seeded order: float32 inputs, or for token ids
    (``mask`` given) {"input_ids", "attention_mask"} int64 arrays, as ``quantize_onnx_static`` takes them."""
    picks = _calibration_picks(y, n, seed)
    if mask is not None:
        return {"input_ids": np.ascontiguousarray(x[picks].numpy(), dtype=np.int64),
                "attention_mask": np.ascontiguousarray(mask[picks].numpy(), dtype=np.int64)}
    return np.ascontiguousarray(x[picks].numpy(), dtype=np.float32)


def _calibration_picks(y: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(y), generator=g)
    classes = y[order].unique()
    per = max(1, n // max(1, len(classes)))
    picks = torch.cat([order[y[order] == c][:per] for c in classes])
    if len(picks) < n:
        rest = order[~torch.isin(order, picks)][: n - len(picks)]
        picks = torch.cat([picks, rest])
    return picks[:n]


TOKEN_OPS = ("MatMul", "Gemm")  # what static quantization touches in a graph of token inputs (see quantize_onnx_static)


def quantize_onnx_static(fp32_path: str | Path, int8_path: str | Path, calib: np.ndarray | dict[str, np.ndarray], *,
                         per_channel: bool = True, activation_type: str = "uint8", calibrate_method: str = "minmax",
                         nodes_to_exclude: list[str] | None = None,
                         op_types: tuple[str, ...] | str | None = "auto") -> Path:
    """Write a static int8 QDQ model calibrated on ``calib`` (N x input shape, float32; or a dict of arrays by input
    name, e.g. int64 ``input_ids`` and ``attention_mask``). ``nodes_to_exclude``: names of nodes of the
    pre-processed graph (see ``quantizable_nodes``) left in fp32. ``op_types``: the operators to quantize (None: all
    ONNX Runtime supports); "auto" is all for dense inputs and only MatMul and Gemm for a graph with integer inputs
    (token ids), whose attention mask adds a huge negative number to the attention scores: calibrated ranges of the
    Add and Softmax it feeds would leave no int8 step for the real scores."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if _count(calib) == 0:
        raise TinyKDError("no calibration samples for int8 quantization", "set quantize.calibration_samples ≥ 1")
    int8_path = Path(int8_path)
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[calibrate_method]
    act = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8, "uint16": QuantType.QUInt16,
           "int16": QuantType.QInt16}[activation_type]
    # 16-bit activations (A16W8) need Q/DQ of 16-bit integers: ONNX Runtime's contrib ops at opset < 21
    extra = {"UseQDQContribOps": True} if activation_type.endswith("16") else {}
    import onnx

    inputs = onnx.load(str(fp32_path), load_external_data=False).graph.input
    name = inputs[0].name
    if op_types == "auto":
        ints = {onnx.TensorProto.INT64, onnx.TensorProto.INT32}
        op_types = TOKEN_OPS if any(i.type.tensor_type.elem_type in ints for i in inputs) else None
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        out = Path(tmp) / "int8.onnx"
        with contextlib.redirect_stdout(io.StringIO()), _quiet_root_logger():  # calibrators print progress
            quantize_static(str(pre), str(out), _Calibration(name, calib), quant_format=QuantFormat.QDQ,
                            per_channel=per_channel, activation_type=act, weight_type=QuantType.QInt8,
                            calibrate_method=method, nodes_to_exclude=list(nodes_to_exclude or []),
                            op_types_to_quantize=list(op_types) if op_types else None, extra_options=extra)
        int8_path.parent.mkdir(parents=True, exist_ok=True)
        out.replace(int8_path)
    return int8_path


@contextlib.contextmanager
def _quiet_root_logger():
    """ONNX Runtime's quantizer warns through the root logger (e.g. the opset update for 16-bit activations)."""
    import logging

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


SENSITIVE_OPS = ("Conv", "Gemm", "MatMul", "ConvTranspose")
WIDE = {"uint8": "uint16", "int8": "int16"}  # the 16-bit activations tried when 8-bit ones fall short


def quantizable_nodes(fp32_path: str | Path) -> list[str]:
    """Names of the weight-carrying nodes (Conv, Gemm, MatMul) of the graph static quantization works on, in order."""
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        graph = onnx.load(str(pre)).graph
    return [n.name for n in graph.node if n.op_type in SENSITIVE_OPS and n.name]


def quantize_with_parity(fp32_path: str | Path, int8_path: str | Path, calib: np.ndarray | dict[str, np.ndarray],
                         check: np.ndarray | dict[str, np.ndarray], *,
                         target: float = 0.99, keep_fp32: str | list[str] = "auto", activation_type: str = "uint8",
                         **options) -> tuple[Path, dict]:
    """Static int8 that agrees with its fp32 model on at least ``target`` of the ``check`` inputs' predictions.

    Quantizes every layer first (int8 weights, ``activation_type`` activations). If agreement falls short and
    ``keep_fp32`` is ``"auto"``: 16-bit activations with int8 weights (A16W8: the weights stay int8, the file stays
    small); then, with 8-bit activations, the weight layers are kept in fp32 in order of sensitivity (agreement with
    only that layer kept in fp32) until the target is met. At least one layer always stays quantized; when nothing
    meets the target, the attempt that agrees most is kept and ``met`` is False. A list keeps exactly those nodes in
    fp32. Returns the path and {agreement, met, target, checked_on, activation_type, kept_fp32, attempts, ...}.
    Token-id models take ``calib`` and ``check`` as dicts of int64 arrays by input name (``calibration_subset``
    with ``mask``).
    """
    from ..deploy.onnx import ort_predict, ort_session
    from ..measure import agreement

    ref = ort_predict(ort_session(fp32_path), check).argmax(1)
    attempts: list[dict] = []

    def attempt(exclude: list[str], act: str) -> dict:
        quantize_onnx_static(fp32_path, int8_path, calib, nodes_to_exclude=exclude, activation_type=act, **options)
        row = {"kept_fp32": list(exclude), "activation_type": act,
               "agreement": agreement(ort_predict(ort_session(int8_path), check).argmax(1), ref)}
        attempts.append(row)
        return row

    kept = list(keep_fp32) if isinstance(keep_fp32, (list, tuple)) else []
    nodes = quantizable_nodes(fp32_path)
    best = attempt(kept, activation_type)
    if best["agreement"] < target and keep_fp32 == "auto":
        candidates = [attempt([], WIDE[activation_type])] if activation_type in WIDE else []
        if candidates[-1:] and candidates[-1]["agreement"] >= target:
            best = candidates[-1]
        else:
            alone = {n: attempt([n], activation_type)["agreement"] for n in nodes} if len(nodes) > 1 else {}
            for node in sorted(alone, key=lambda n: -alone[n])[: len(nodes) - 1]:
                kept.append(node)
                row = attempt(kept, activation_type)
                if row["agreement"] >= target:
                    break
            met = [a for a in attempts if a["agreement"] >= target]
            # the first attempt that meets the target (the fewest layers in fp32 / the narrowest activations), else
            # the one that agrees most
            best = met[0] if met else max(attempts, key=lambda a: a["agreement"])
        if attempts[-1] is not best:  # leave the chosen model on disk
            quantize_onnx_static(fp32_path, int8_path, calib, nodes_to_exclude=best["kept_fp32"],
                                 activation_type=best["activation_type"], **options)
    return Path(int8_path), {"agreement": float(best["agreement"]), "met": bool(best["agreement"] >= target),
                             "target": target, "checked_on": _count(check),
                             "activation_type": best["activation_type"], "kept_fp32": best["kept_fp32"],
                             "quantized_nodes": len(nodes) - len(best["kept_fp32"]), "attempts": attempts,
                             "calibration_samples": _count(calib)}


def quantize_onnx_dynamic(fp32_path: str | Path, out_path: str | Path, *, op_types: tuple[str, ...] | None = ("MatMul",),
                          per_channel: bool = False) -> Path:
    """Write a dynamic int8 model: int8 weights, activations quantized on the fly per batch (no calibration).

    Suits Linear-heavy models (MLPs, transformers) where the matrix multiplies dominate. ONNX Runtime rewrites
    each Gemm (a PyTorch Linear) as MatMul + Add, so the default ``op_types=("MatMul",)`` quantizes every Linear;
    ``("MatMul", "Conv")`` or None (all supported ops) also turns convolutions into ConvInteger.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out_path = Path(out_path)
    if not Path(fp32_path).is_file():
        raise TinyKDError(f"no ONNX model at {fp32_path}", "export the fp32 model first (tinykd.deploy.onnx.export_onnx)")
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        out = Path(tmp) / "int8.onnx"
        quantize_dynamic(str(pre), str(out), op_types_to_quantize=list(op_types) if op_types else None,
                         per_channel=per_channel, weight_type=QuantType.QInt8)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out.replace(out_path)
    return out_path


def convert_onnx_fp16(fp32_path: str | Path, out_path: str | Path, *, keep_io_types: bool = True) -> Path:
    """Write a float16 copy of an fp32 ONNX model (weights and compute in fp16: half the bytes).

    With ``keep_io_types`` the graph still takes and returns float32 (Cast nodes at the edges), so callers need
    not change their inputs. Values outside fp16's range are clamped to ±65504 (onnxruntime's converter).
    """
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    out_path = Path(out_path)
    if not Path(fp32_path).is_file():
        raise TinyKDError(f"no ONNX model at {fp32_path}", "export the fp32 model first (tinykd.deploy.onnx.export_onnx)")
    model = convert_float_to_float16(onnx.load(str(fp32_path)), keep_io_types=keep_io_types)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.tmp")
    onnx.save(model, str(tmp))
    tmp.replace(out_path)
    return out_path
