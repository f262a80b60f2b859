"""Atomic file writes and safe checkpoints (safetensors for tensors, JSON for the rest)."""
from __future__ import annotations

import json
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import CheckpointError


def atomic_write(path: Path, data: bytes | str) -> Path:
    """Write ``data`` to ``path`` via a temporary file and rename, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; artifacts should be readable like any written file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, json.dumps(obj, indent=2, default=_jsonable) + "\n")


def _jsonable(o):
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Save a flat dict of tensors as safetensors, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, path)


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file, turning corruption into a CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist", "check the path, or retrain without it")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint '{path}' is not a readable safetensors file ({exc})",
                              "re-create it with tinykd or `safetensors.torch.save_file`") from None


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Weights from ``.safetensors`` or a PyTorch ``.pt``/``.pth`` file loaded with ``weights_only=True``.

    A pickle that would construct arbitrary Python objects (and so could run code) is refused.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist", "check the path in the recipe (teacher.checkpoint)")
    if path.suffix == ".safetensors":
        return load_tensors(path)
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"refused to load '{path}': it contains Python objects beyond tensors, and unpickling them could run code "
            f"({str(exc).splitlines()[0][:160]})",
            "save only the weights (torch.save(model.state_dict(), f)) or convert to .safetensors") from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise CheckpointError(f"checkpoint '{path}' could not be read ({exc})", "re-save the weights") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"checkpoint '{path}' does not hold a state dict of tensors",
                              "save it with torch.save(model.state_dict(), path)")
    return obj


def load_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], *, source: str) -> None:
    """Load ``state`` into ``model`` strictly, explaining mismatches instead of a raw RuntimeError."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        bits = []
        if missing:
            bits.append(f"missing {len(missing)} keys (e.g. {missing[:3]})")
        if unexpected:
            bits.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})")
        if wrong:
            k = wrong[0]
            bits.append(f"{len(wrong)} shape mismatches (e.g. {k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)})")
        raise CheckpointError(f"weights in {source} do not fit the model: " + "; ".join(bits),
                              "make the recipe's model name and kwargs match the architecture the checkpoint was saved from")
    model.load_state_dict(state)


def read_json(path: Path) -> Any:
    """Parse a JSON file written by tinykd, with a CheckpointError when it is corrupt."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"'{path}' is not readable JSON ({exc})", "delete the file to start that stage afresh") from None
