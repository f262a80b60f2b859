"""The preprocessing a deployed model needs, carried by the model file itself.

Training sees standardised inputs, ``(x - mean) / std`` with the training split's scalar statistics. Every exported
artifact starts with that standardisation as its first operation (``Standardize``), so it takes the raw inputs a
device produces (pixels in [0, 1], a signal, log-mel features) and nothing outside the file is needed to get the
reported accuracy. What the graph cannot hold (an audio front end: wav → log-mel) is stated in the ONNX file's
``metadata_props`` (key ``tinykd.preprocess``) and in ``artifacts/preprocess.json``, in the same words.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..io import atomic_write

METADATA_KEY = "tinykd.preprocess"


class Standardize(nn.Module):
    """``(x - mean) / std`` with scalar statistics: the training-time normalisation as the model's first op."""

    def __init__(self, mean: float, std: float):
        super().__init__()
        self.register_buffer("mean", torch.tensor(float(mean)))
        self.register_buffer("std", torch.tensor(float(std)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def with_preprocessing(model: nn.Module, normalize: dict | None) -> nn.Module:
    """``model`` behind its input standardisation (``normalize``: {"mean", "std"}), or ``model`` itself."""
    if not normalize:
        return model
    return nn.Sequential(Standardize(normalize["mean"], normalize["std"]), model).eval()


def raw_inputs(x: torch.Tensor | np.ndarray, normalize: dict | None) -> np.ndarray:
    """The raw inputs behind standardised ones (what a deployed artifact is fed), float32."""
    x = x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if not normalize:
        return np.ascontiguousarray(x, dtype=np.float32)
    return np.ascontiguousarray(x * np.float32(normalize["std"]) + np.float32(normalize["mean"]), dtype=np.float32)


def preprocess_spec(info: dict, shape: tuple[int, ...], num_classes: int, class_names: list[str] | None = None) -> dict:
    """What a caller of an exported artifact must do to its inputs, as a JSON-ready dict."""
    norm = info.get("normalize")
    spec = {
        "input": {"name": "input", "dtype": "float32", "shape": ["batch", *map(int, shape)]},
        "output": {"name": "logits", "shape": ["batch", int(num_classes)], "argmax": "the predicted class index"},
        "normalize_in_graph": ({"mean": float(norm["mean"]), "std": float(norm["std"]),
                                "formula": "(x - mean) / std, done by the model's first op: feed raw inputs"}
                               if norm else None),
        "dataset": info.get("dataset"),
    }
    if info.get("front_end"):
        spec["front_end"] = {**info["front_end"], "note": "not in the graph: compute these features from the audio "
                             "first (tinykd.data.audio.log_mel_batch with these settings)"}
    if class_names:
        spec["classes"] = list(class_names)
    return spec


def attach_metadata(onnx_path: str | Path, spec: dict) -> None:
    """Write ``spec`` into an ONNX file's ``metadata_props`` (replacing an earlier tinykd entry), atomically."""
    import onnx

    path = Path(onnx_path)
    model = onnx.load(str(path))
    keep = [p for p in model.metadata_props if p.key != METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(spec, sort_keys=True)
    atomic_write(path, model.SerializeToString())


def read_metadata(onnx_path: str | Path) -> dict | None:
    """The ``tinykd.preprocess`` entry of an ONNX file, or None."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    for p in model.metadata_props:
        if p.key == METADATA_KEY:
            return json.loads(p.value)
    return None


def write_preprocess_json(path: str | Path, spec: dict) -> Path:
    path = Path(path)
    atomic_write(path, json.dumps(spec, indent=2, sort_keys=True) + "\n")
    return path
