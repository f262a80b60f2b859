"""The ``image_folder`` reader: one sub-folder of images per class, optionally under train/ and test/ (and val/)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from tinykd.data.registry import RawData, register_dataset
from tinykd.data.spec import InputSpec
from tinykd.errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
_LAYOUT_FIX = "arrange the images as <folder>/<class>/<image>.png, or <folder>/train/<class>/... and test/<class>/..."


def _class_files(folder: Path) -> dict[str, list[Path]]:
    """Sorted image files of each class sub-folder (classes in sorted order); an empty layout or class is an error."""
    classes = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DataError("no class sub-folders found", _LAYOUT_FIX, where=str(folder))
    files = {d.name: sorted(f for f in d.iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS) for d in classes}
    empty = [name for name, found in files.items() if not found]
    if empty:
        raise DataError(f"class folder(s) {', '.join(empty)} hold no {'/'.join(IMAGE_EXTENSIONS)} images",
                        "add images or remove the empty folders", where=str(folder))
    return files


def _open(file: Path, mode: str) -> Image.Image:
    """The decoded image converted to ``mode`` ("L" or "RGB"); an unreadable file raises a DataError naming it."""
    try:
        with Image.open(file) as img:
            return img.convert(mode)
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(f"cannot read image ({err})", "replace or delete the file", where=str(file)) from None


def _read_image(file: Path, mode: str, size: tuple[int, int]) -> np.ndarray:
    """One image as float32 (C, H, W) in [0, 1], converted to ``mode`` and resized (bilinear) to ``size`` (H, W)."""
    img = _open(file, mode)
    if img.size != (size[1], size[0]):
        img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    pixels = np.asarray(img, dtype=np.float32) / 255
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


def _read_split(files: dict[str, list[Path]], names: tuple[str, ...], mode: str,
                size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Stacked images and class indices of one split's class folders."""
    x = [_read_image(f, mode, size) for found in files.values() for f in found]
    y = [names.index(name) for name, found in files.items() for _ in found]
    return np.stack(x), np.array(y, dtype=np.int64)


def _size_option(size: object) -> tuple[int, int] | None:
    """``size`` as (height, width): None, an int for a square, or a [height, width] pair."""
    if size is None:
        return None
    pair = [size, size] if isinstance(size, int) else size
    if (not isinstance(pair, (list, tuple)) or len(pair) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in pair)):
        raise DataError(f"option size must be [height, width] in pixels, got {size!r}", "set size to e.g. [28, 28]")
    return int(pair[0]), int(pair[1])


def _split_folders(path: Path) -> dict[str, Path]:
    """{"train": path} for a plain class layout, or the train/test (and val) sub-folders when both exist."""
    if (path / "train").is_dir() and (path / "test").is_dir():
        return {s: path / s for s in ("train", "val", "test") if (path / s).is_dir()}
    return {"train": path}


@register_dataset("image_folder", needs_path=True,
                  description="a folder of images with one sub-folder per class (optionally under train/ and test/)")
def image_folder(path: Path, *, grayscale: bool = True, size: list[int] | int | None = None) -> RawData:
    """Read class-per-folder images, converted to grey (or RGB) and resized to ``size`` (default: the first image's)."""
    if not path.is_dir():
        raise DataError("expected a folder of class sub-folders", _LAYOUT_FIX, where=str(path))
    if not isinstance(grayscale, bool):
        raise DataError(f"option grayscale must be true or false, got {grayscale!r}", "set grayscale: true")
    folders = _split_folders(path)
    files = {split: _class_files(folder) for split, folder in folders.items()}
    names = tuple(files["train"])
    for split, found in files.items():
        extra = sorted(set(found) - set(names))
        if extra:
            raise DataError(f"classes {', '.join(extra)} in {split}/ are missing from train/",
                            "use the same class folders in every split", where=str(path))
    first = files["train"][names[0]][0]
    mode = "L" if grayscale else "RGB"
    hw = _size_option(size) or _open(first, mode).size[::-1]
    arrays = {split: _read_split(found, names, mode, hw) for split, found in files.items()}
    spec = InputSpec((1 if grayscale else 3, *hw), len(names), "image", names)
    info = {"files": [str(f) for f in folders.values()], "num_files": {k: len(v[1]) for k, v in arrays.items()},
            "image": {"mode": mode, "size": list(hw), "resample": "bilinear", "scale": "pixel / 255"}}
    test, val = arrays.get("test", (None, None)), arrays.get("val", (None, None))
    sources = {split: f"{folder.name}/" for split, folder in folders.items()}
    return RawData(*arrays["train"], spec, x_test=test[0], y_test=test[1], x_val=val[0], y_val=val[1], info=info,
                   sources=sources)
