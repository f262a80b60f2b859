"""Post-training static int8 quantization with ONNX Runtime: QDQ format, per-channel weights, calibrated.

The fp32 ONNX graph is first pre-processed (shape inference and graph optimisation, which folds
BatchNorm into the preceding convolution), then activations are calibrated on training samples.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from ..errors import TinyKDError


class _Calibration:
    """An onnxruntime CalibrationDataReader over an in-memory array, one mini-batch at a time."""

    def __init__(self, name: str, x: np.ndarray, batch_size: int = 32):
        self.batches = iter([{name: x[i:i + batch_size]} for i in range(0, len(x), batch_size)])

    def get_next(self):
        return next(self.batches, None)

    def rewind(self):  # some onnxruntime versions call it between passes
        pass


def calibration_subset(x: torch.Tensor, y: torch.Tensor, n: int, seed: int) -> np.ndarray:
    """``n`` training samples, class-balanced where possible, in a seeded order."""
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(x), generator=g)
    classes = y[order].unique()
    per = max(1, n // max(1, len(classes)))
    picks = torch.cat([order[y[order] == c][:per] for c in classes])
    if len(picks) < n:
        rest = order[~torch.isin(order, picks)][: n - len(picks)]
        picks = torch.cat([picks, rest])
    return np.ascontiguousarray(x[picks[:n]].numpy(), dtype=np.float32)


def quantize_onnx_static(fp32_path: str | Path, int8_path: str | Path, calib: np.ndarray, *, per_channel: bool = True,
                         activation_type: str = "uint8", calibrate_method: str = "minmax") -> Path:
    """Write a static int8 QDQ model calibrated on ``calib`` (N x input shape, float32)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if len(calib) == 0:
        raise TinyKDError("no calibration samples for int8 quantization", "set quantize.calibration_samples ≥ 1")
    int8_path = Path(int8_path)
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[calibrate_method]
    act = QuantType.QUInt8 if activation_type == "uint8" else QuantType.QInt8
    import onnx

    name = onnx.load(str(fp32_path), load_external_data=False).graph.input[0].name
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        out = Path(tmp) / "int8.onnx"
        quantize_static(str(pre), str(out), _Calibration(name, calib), quant_format=QuantFormat.QDQ,
                        per_channel=per_channel, activation_type=act, weight_type=QuantType.QInt8,
                        calibrate_method=method)
        int8_path.parent.mkdir(parents=True, exist_ok=True)
        out.replace(int8_path)
    return int8_path
