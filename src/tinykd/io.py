"""Atomic file writes and safe checkpoints (safetensors for tensors, JSON for the rest)."""
from __future__ import annotations

import json
import os
import errno
import pickle
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import CheckpointError, StorageError


def storage_error(path: Path, exc: BaseException) -> StorageError:
    """A StorageError for a failed write of ``path``: what the system said, and what to free or fix."""
    code = getattr(exc, "errno", None)
    reason = getattr(exc, "strerror", None) or str(exc).splitlines()[0][:200] or type(exc).__name__
    if code in (errno.ENOSPC, errno.EDQUOT) or "No space" in reason or isinstance(exc, SafetensorError) and "space" in str(exc):
        fix = f"free disk space on the drive of {path.parent} (or raise the quota), then resume the run"
    elif code in (errno.EACCES, errno.EPERM, errno.EROFS) or "ermission" in reason or "Read-only" in reason:
        fix = f"make {path.parent} writable (e.g. chmod -R u+w on the run folder), then resume the run"
    elif code == errno.EFBIG or "too large" in reason:
        fix = "raise the file-size limit (ulimit -f) or free space, then resume the run"
    else:
        fix = f"check that {path.parent} is a writable folder with free space, then resume the run"
    return StorageError(f"could not write '{path}' ({reason})", fix)


def atomic_write(path: Path, data: bytes | str) -> Path:
    """Write ``data`` to ``path`` via a temporary file and rename, so readers never see half a file."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; artifacts should be readable like any written file
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise storage_error(path, exc) from None
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


def _unshared(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors with every later one that shares storage with an earlier one copied (safetensors refuses
    aliases)."""
    seen: set[int] = set()
    out = {}
    for key, t in tensors.items():
        ptr = t.untyped_storage().data_ptr() if t.numel() else None
        out[key] = t.clone() if ptr is not None and ptr in seen else t
        if ptr is not None:
            seen.add(ptr)
    return out


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Save a flat dict of tensors as safetensors, atomically. Tensors that share memory (tied weights: a language
    model's output layer and token embedding) are each written in full, and load back into both places."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(_unshared({k: v.detach().contiguous().cpu() for k, v in tensors.items()}), str(tmp))
        os.replace(tmp, path)
    except (OSError, SafetensorError) as exc:
        with _ignored_os_errors():
            tmp.unlink(missing_ok=True)  # the previous checkpoint at ``path`` is untouched
        raise storage_error(path, exc) from None


class _ignored_os_errors:
    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        return kind is not None and issubclass(kind, OSError)


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
        with warnings.catch_warnings():  # torch warns about old pickle protocols before refusing them
            warnings.simplefilter("ignore")
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = [line.strip() for line in str(exc).splitlines() if "GLOBAL" in line or "Unsupported" in line]
        if not any("GLOBAL" in line for line in detail) and not _pickle_like(path):  # broken bytes, not objects
            raise _unreadable(path, exc, detail[-1] if detail else None) from None
        raise CheckpointError(
            f"refused to load '{path}': it contains Python objects beyond tensors, and unpickling them could run code "
            f"({detail[0][:160]})",
            "save only the weights (torch.save(model.state_dict(), f)) or convert to .safetensors") from None
    except Exception as exc:  # noqa: BLE001  (random bytes make the weights-only unpickler raise anything)
        raise _unreadable(path, exc) from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"checkpoint '{path}' does not hold a state dict of tensors",
                              "save it with torch.save(model.state_dict(), path)")
    return obj


def _pickle_like(path: Path) -> bool:
    """Whether ``path`` starts like a pickle (protocol 2+ header, or a protocol 0/1 opcode) or a torch zip."""
    with open(path, "rb") as f:
        head = f.read(2)
    return head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05") or head[:1] in (
        b"c", b"(", b"}", b"]") or head == b"PK"


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return (lines[0][:160] if lines else "") or type(exc).__name__


def _unreadable(path: Path, exc: BaseException, detail: str | None = None) -> CheckpointError:
    detail = detail or f"{type(exc).__name__}: {_first_line(exc)}"
    return CheckpointError(f"checkpoint '{path}' is not a readable PyTorch weights file ({detail[:160]})",
                           "pass the file torch.save(model.state_dict(), path) wrote, or a .safetensors file")


def check_finite(state: dict[str, torch.Tensor], *, source: str) -> None:
    """A CheckpointError when a floating-point tensor of ``state`` holds NaN or infinity."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(f"{source} holds NaN/inf values in {len(bad)} of {len(state)} tensors (e.g. '{bad[0]}')",
                              "use weights from a run that did not diverge (retrain, or take an earlier checkpoint)")


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
