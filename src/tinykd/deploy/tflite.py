"""TFLite (LiteRT) export through litert-torch, fp32 or full-integer int8, and a LiteRT interpreter to run it.

The int8 path quantizes the PyTorch graph with PT2E (litert-torch's PT2EQuantizer: symmetric int8 weights,
per channel by default, int8 activations calibrated with histogram observers) and converts it to a
flatbuffer whose input and output are int8 as well: what TensorFlow Lite Micro runs. The model is exported
at batch 1, the MCU case; ``tflite_predict`` loops over samples.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import TinyKDError
from .quiet import quiet

EXTRA_FIX = "pip install 'tinykd[tflite]'"


def export_tflite(model: nn.Module, in_shape: tuple[int, ...], path: str | Path, *, int8: bool = False,
                  calib: np.ndarray | torch.Tensor | None = None, per_channel: bool = True) -> Path:
    """Write ``model`` (eval mode, batch 1) to ``path`` as a .tflite flatbuffer.

    With ``int8`` the weights, activations, input and output are int8; ``calib`` (N x in_shape float
    samples from the training set) sets the activation ranges.
    """
    litert_torch = _import("litert_torch", "exporting to TFLite")
    if int8 and (calib is None or len(calib) == 0):
        raise TinyKDError("int8 TFLite export needs calibration samples (calib is empty)",
                          "pass calib=<N x input array>, e.g. tinykd.compress.quantize.calibration_subset(...)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    was_training = model.training
    model.eval()
    example = (torch.zeros(1, *in_shape),)
    try:
        with _quiet():
            if int8:
                graph, quant_config = _quantize_pt2e(model, example, _as_tensor(calib, in_shape), per_channel)
                edge = litert_torch.convert(graph, example, quant_config=quant_config)
            else:
                edge = litert_torch.convert(model, example)
            edge.export(str(tmp))
    except TinyKDError:
        raise
    except Exception as err:  # noqa: BLE001 - conversion failures surface as many exception types
        raise TinyKDError(f"could not convert {type(model).__name__} to TFLite{' int8' if int8 else ''}: {err}",
                          "use ops LiteRT supports (conv, linear, pooling, relu, add, reshape) and a forward "
                          "without data-dependent Python control flow") from None
    finally:
        model.train(was_training)
    os.replace(tmp, path)
    return path


def _quantize_pt2e(model: nn.Module, example: tuple, calib: torch.Tensor, per_channel: bool):
    """PT2E post-training quantization: export, insert observers, calibrate, fold into Q/DQ ops."""
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = PT2EQuantizer().set_global(
        get_symmetric_quantization_config(is_per_channel=per_channel, is_dynamic=False))
    graph = torch.export.export(model, example).module()
    graph = prepare_pt2e(graph, quantizer)
    move_exported_model_to_eval(graph)
    with torch.no_grad():
        for i in range(len(calib)):  # the graph is traced at batch 1
            graph(calib[i:i + 1])
    graph = convert_pt2e(graph, fold_quantize=False)
    move_exported_model_to_eval(graph)
    return graph, QuantConfig(pt2e_quantizer=quantizer)


def tflite_predict(path: str | Path, x: np.ndarray | torch.Tensor, *, threads: int = 1) -> np.ndarray:
    """Float outputs of a .tflite model for every sample of ``x``, (de)quantizing int8 inputs and outputs."""
    interpreter_mod = _import("ai_edge_litert.interpreter", "running a TFLite model")
    path = Path(path)
    if not path.is_file():
        raise TinyKDError(f"TFLite file '{path}' not found", "export it first with export_tflite")
    interp = interpreter_mod.Interpreter(model_path=str(path), num_threads=threads)
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    x = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    x = x.astype(np.float32, copy=False)
    expected = tuple(int(d) for d in inp["shape"][1:])
    if tuple(x.shape[1:]) != expected:
        raise TinyKDError(f"input of shape {tuple(x.shape)} does not match the model's (N, {expected})",
                          "pass samples with the shape the model was exported with")
    results = []
    for i in range(len(x)):
        interp.set_tensor(inp["index"], _quantize(x[i:i + 1], inp))
        interp.invoke()
        results.append(_dequantize(interp.get_tensor(out["index"]), out))
    return np.concatenate(results) if results else np.empty((0,), dtype=np.float32)


def _quantize(x: np.ndarray, detail: dict) -> np.ndarray:
    """Float to the tensor's dtype with its (scale, zero point); float tensors pass through."""
    dtype = detail["dtype"]
    if not np.issubdtype(dtype, np.integer):
        return x.astype(dtype)
    scale, zero = detail["quantization"]
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale) + zero, info.min, info.max).astype(dtype)


def _dequantize(q: np.ndarray, detail: dict) -> np.ndarray:
    if not np.issubdtype(detail["dtype"], np.integer):
        return q.astype(np.float32)
    scale, zero = detail["quantization"]
    return ((q.astype(np.float32) - zero) * scale).astype(np.float32)


def _as_tensor(calib, in_shape) -> torch.Tensor:
    calib = torch.as_tensor(np.asarray(calib) if not isinstance(calib, torch.Tensor) else calib).float()
    if tuple(calib.shape[1:]) != tuple(in_shape):
        raise TinyKDError(f"calibration samples have shape {tuple(calib.shape)}, expected (N, {tuple(in_shape)})",
                          "pass training samples shaped like the model input")
    return calib


def _import(module: str, purpose: str):
    """Import an optional LiteRT module or say which extra installs it."""
    import importlib

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter
    torchao_log = logging.getLogger("torchao")  # warns about CUDA kernels it cannot load on CPU-only torch
    level = torchao_log.level
    torchao_log.setLevel(logging.ERROR)
    try:
        return importlib.import_module(module)
    except ImportError:
        raise TinyKDError(f"{purpose} needs the tflite extra (litert-torch, ai-edge-litert), which is not installed",
                          EXTRA_FIX) from None
    finally:
        torchao_log.setLevel(level)


def _quiet():
    """Silence litert-torch's progress display, export warnings and absl/TF logging (errors propagate)."""
    return quiet(("", "absl", "torch.export", "torch._dynamo", "torch.utils._pytree", "litert_torch"),
                 {"LITERT_TORCH_SHOW_PROGRESS": "n"})


def tflite_timer(path: str | Path, *, threads: int = 1):
    """One interpreter invoke at batch 1 (set input, invoke, read output), the shape the model was exported with,
    as a call for the latency harness."""
    interpreter_mod = _import("ai_edge_litert.interpreter", "running a TFLite model")
    interp = interpreter_mod.Interpreter(model_path=str(path), num_threads=threads)
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    x = _quantize(np.random.default_rng(0).standard_normal(tuple(inp["shape"]), dtype=np.float32), inp)

    def call():
        interp.set_tensor(inp["index"], x)
        interp.invoke()
        return interp.get_tensor(out["index"])
    return call


def tflite_latency(path: str | Path, *, warmup: int, repeats: int, threads: int = 1) -> dict:
    """{"b1": {median_ms, p90_ms, repeats}} of ``tflite_timer``, timed by the same harness as PyTorch and ORT."""
    from ..measure.latency import time_calls

    return {"b1": time_calls(tflite_timer(path, threads=threads), warmup=warmup, repeats=repeats)}
