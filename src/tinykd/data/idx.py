"""MNIST-style IDX files (raw or gzip): ``read_idx`` for one file and the ``idx`` folder reader.

IDX layout: a 4-byte magic number (two zero bytes, a type code, the number of dimensions), one
big-endian uint32 per dimension, then the values in C order, big-endian. MNIST images have magic
0x00000803 (uint8, 3 dims) and labels 0x00000801 (uint8, 1 dim).
"""
from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from tinykd.data.registry import RawData, register_dataset
from tinykd.data.spec import InputSpec
from tinykd.errors import DataError

_TYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"),
          0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
_CODES = {dtype: code for code, dtype in _TYPES.items()}
IMAGES_MAGIC, LABELS_MAGIC = 0x00000803, 0x00000801
_FIX = "re-download the file; MNIST IDX files come from http://yann.lecun.com/exdb/mnist/ or a mirror"


def _read_bytes(file: Path) -> bytes:
    """The file's contents, gunzipped when it starts with the gzip magic bytes."""
    try:
        data = file.read_bytes()
        return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"cannot read IDX file ({err})", _FIX, where=str(file)) from None


def read_idx(file: str | Path) -> np.ndarray:
    """The array stored in an IDX file (raw or .gz), with its header's shape and type checked against its size."""
    file = Path(file)
    data = _read_bytes(file)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _TYPES:
        raise DataError(f"bad magic number 0x{data[:4].hex()} (an IDX file starts with 0x0000 then a type code "
                        "such as 0x0803 for images or 0x0801 for labels)", _FIX, where=str(file))
    ndim, dtype = data[3], _TYPES[data[2]]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"truncated header: {len(data)} bytes, a {ndim}-D IDX header needs {header}",
                        _FIX, where=str(file))
    dims = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        raise DataError(f"size mismatch: header says shape {dims} of {dtype.name} ({expected} bytes) "
                        f"but the file has {len(data)} bytes", _FIX, where=str(file))
    return np.frombuffer(data, dtype, offset=header).reshape(dims)


def _find(folder: Path, prefix: str, kind: str) -> Path | None:
    """The IDX file ``{prefix}-{kind}`` in any accepted spelling (``-idx3-ubyte`` or ``.idx3-ubyte``, optional .gz)."""
    for sep in ("-", "."):
        for ext in ("", ".gz"):
            candidate = folder / f"{prefix}{sep}{kind}{ext}"
            if candidate.is_file():
                return candidate
    return None


def _load_pair(folder: Path, prefix: str) -> tuple[np.ndarray, np.ndarray, list[str]] | None:
    """Images as (N, 1, H, W) in [0, 1], labels and file names of ``prefix`` (train/t10k); None if both are absent."""
    images_file = _find(folder, f"{prefix}-images", "idx3-ubyte")
    labels_file = _find(folder, f"{prefix}-labels", "idx1-ubyte")
    if images_file is None and labels_file is None:
        return None
    if images_file is None or labels_file is None:
        missing = f"{prefix}-images-idx3-ubyte" if images_file is None else f"{prefix}-labels-idx1-ubyte"
        raise DataError(f"found only one of the {prefix} image/label pair; {missing}[.gz] is missing",
                        "put both files of the pair in the folder", where=str(folder))
    images, labels = read_idx(images_file), read_idx(labels_file)
    _check_magic(images_file, images, IMAGES_MAGIC, "images")
    _check_magic(labels_file, labels, LABELS_MAGIC, "labels")
    if len(images) != len(labels):
        raise DataError(f"{len(images)} images but {len(labels)} labels in {labels_file.name}",
                        "use the image and label files of the same release", where=str(folder))
    x = images[:, None].astype(np.float32)
    x /= 255
    return x, labels, [str(images_file), str(labels_file)]


def _check_magic(file: Path, array: np.ndarray, expected: int, role: str) -> None:
    """Reject a valid IDX file whose type or dimensionality is wrong for its role (uint8 images or labels)."""
    found = _CODES[array.dtype] << 8 | array.ndim
    if found != expected:
        raise DataError(f"bad magic number 0x{found:08x} for {role}: expected 0x{expected:08x}",
                        _FIX, where=str(file))


@register_dataset("idx", needs_path=True,
                  description="MNIST-style IDX files (train-/t10k- images and labels, raw or .gz) in a folder")
def idx(path: Path) -> RawData:
    """Read ``train-*`` and (optionally) ``t10k-*`` IDX image/label files from a folder."""
    if not path.is_dir():
        raise DataError("expected a folder holding train-images-idx3-ubyte[.gz] and train-labels-idx1-ubyte[.gz]",
                        "point 'path' at the folder, not at a file", where=str(path))
    train = _load_pair(path, "train")
    if train is None:
        raise DataError("no train-images-idx3-ubyte[.gz] / train-labels-idx1-ubyte[.gz] in this folder",
                        "point 'path' at the folder that holds the MNIST IDX files", where=str(path))
    test = _load_pair(path, "t10k")
    x, y, files = train
    labels = np.concatenate([y, test[1]]) if test else y
    spec = InputSpec(tuple(x.shape[1:]), int(labels.max()) + 1, "image")
    info = {"files": files + (test[2] if test else []), "scale": "pixel / 255"}
    sources = {"train": " + ".join(Path(f).name for f in files)}
    if test is None:
        return RawData(x, y, spec, info=info, sources=sources)
    sources["test"] = " + ".join(Path(f).name for f in test[2])
    return RawData(x, y, spec, x_test=test[0], y_test=test[1], info=info, sources=sources)
