"""The ``npz`` reader: arrays saved with ``numpy.savez``, loaded without pickle."""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from tinykd.data.labels import encode_labels
from tinykd.data.registry import RawData, register_dataset
from tinykd.data.spec import InputSpec
from tinykd.errors import DataError

MODALITIES = ("image", "signal", "audio", "tabular")


def _open(path: Path) -> np.lib.npyio.NpzFile:
    """The opened .npz archive; a corrupt file or one that needs pickle raises a DataError."""
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise DataError(f"cannot read .npz file ({err})",
                        "save the arrays with numpy.savez (plain numeric arrays, no Python objects)",
                        where=str(path)) from None


def _get(archive: np.lib.npyio.NpzFile, key: str, path: Path) -> np.ndarray:
    """Array ``key`` of the archive; a missing key or an object array raises a DataError listing the keys."""
    if key not in archive.files:
        raise DataError(f"no array '{key}' in the file; it has {', '.join(archive.files)}",
                        "set x_key/y_key/x_test_key/y_test_key to the file's array names", where=str(path))
    try:
        return archive[key]
    except ValueError as err:  # object arrays need pickle, which is never allowed
        raise DataError(f"array '{key}' cannot be read without pickle ({err})",
                        "store plain numeric arrays", where=str(path)) from None


def _sample_shape(x: np.ndarray, modality: str, path: Path) -> tuple[int, ...]:
    """Per-sample shape: 1-D length L -> (1, L) ((L,) for tabular), 2-D (H, W) -> (1, H, W), 3-D kept."""
    rest = x.shape[1:]
    if not 1 <= len(rest) <= 3:
        raise DataError(f"inputs have shape {x.shape}; expected (N, L), (N, H, W) or (N, C, H, W)",
                        "reshape the inputs before saving", where=str(path))
    if len(rest) == 1 and modality == "tabular":
        return rest
    return (1, *rest) if len(rest) < 3 else rest


def _inputs(a: np.ndarray, stored: tuple[int, ...], shape: tuple[int, ...], key: str, path: Path) -> np.ndarray:
    """Array ``key`` (samples stored as ``stored``) as float32 (N, *shape); uint8 pixels are scaled to [0, 1]."""
    if a.shape[1:] != stored or not np.issubdtype(a.dtype, np.number):
        raise DataError(f"array '{key}' has shape {a.shape} and type {a.dtype}; expected numeric samples "
                        f"of shape {stored}", "store all inputs as one numeric array per split", where=str(path))
    x = a.reshape(len(a), *shape).astype(np.float32)
    if a.dtype == np.uint8:
        x /= 255
    return x


def _integral(y: np.ndarray) -> np.ndarray:
    """Float labels that hold whole numbers (e.g. 3.0) as int64; anything else unchanged."""
    if np.issubdtype(y.dtype, np.floating) and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
        return y.astype(np.int64)
    return y


def _labels(y: np.ndarray, y_test: np.ndarray | None) -> tuple[list[np.ndarray], tuple[str, ...]]:
    """Integer labels kept as class indices (K = max + 1); other labels mapped via their sorted unique values."""
    sets = [_integral(s.reshape(-1)) for s in ([y] if y_test is None else [y, y_test])]
    if all(np.issubdtype(s.dtype, np.integer) for s in sets):
        top = max((int(s.max()) for s in sets if len(s)), default=0)
        return sets, tuple(str(i) for i in range(top + 1))
    return encode_labels(*(s.tolist() for s in sets))


@register_dataset("npz", needs_path=True, description="a numpy .npz file with x/y (and optional x_test/y_test) arrays")
def npz(path: Path, *, x_key: str = "x", y_key: str = "y", x_test_key: str = "x_test",
        y_test_key: str = "y_test", modality: str | None = None) -> RawData:
    """Read inputs and labels from an .npz file; the test arrays are used when both test keys are present."""
    if modality is not None and modality not in MODALITIES:
        raise DataError(f"unknown modality '{modality}'", f"use one of {', '.join(MODALITIES)}")
    with _open(path) as archive:
        x, y = _get(archive, x_key, path), _get(archive, y_key, path)
        has_test = [k in archive.files for k in (x_test_key, y_test_key)]
        if any(has_test) and not all(has_test):
            raise DataError(f"the file has only one of '{x_test_key}' and '{y_test_key}'",
                            "store both test arrays or neither", where=str(path))
        test = (_get(archive, x_test_key, path), _get(archive, y_test_key, path)) if all(has_test) else None
    if x.ndim == 0 or len(x) == 0:
        raise DataError(f"array '{x_key}' holds no samples", "save a non-empty (N, ...) array", where=str(path))
    modality = modality or ("signal" if x.ndim == 2 else "image")
    shape = _sample_shape(x, modality, path)
    labels, names = _labels(y, None if test is None else test[1])
    spec = InputSpec(shape, len(names), modality, names)
    info = {"files": [str(path)], "keys": [x_key, y_key] + ([x_test_key, y_test_key] if test else []),
            "scale": "value / 255" if x.dtype == np.uint8 else "as stored"}
    train_x = _inputs(x, x.shape[1:], shape, x_key, path)
    sources = {"train": f"arrays {x_key}, {y_key} of {path.name}"}
    if test is None:
        return RawData(train_x, labels[0], spec, info=info, sources=sources)
    test_x = _inputs(test[0], x.shape[1:], shape, x_test_key, path)
    sources["test"] = f"arrays {x_test_key}, {y_test_key} of {path.name}"
    return RawData(train_x, labels[0], spec, x_test=test_x, y_test=labels[1], info=info, sources=sources)
