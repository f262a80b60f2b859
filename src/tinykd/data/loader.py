"""``load_dataset``: resolve the path, run the registered reader, then name the classes, limit, split, normalize
and wrap.

All randomness comes from one ``numpy.random.default_rng(seed)``, used in a fixed order (limit, test split,
val split, labelling budget), so the same arguments always give the same bundle.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tinykd.data.classes import apply_class_names, read_class_names
from tinykd.data.registry import DatasetEntry, RawData, check_options, get_dataset
from tinykd.data.spec import DataBundle, InputSpec, Split
from tinykd.data.splits import Arrays, allocate, limit_split, standardize, stratified_pick, stratified_split
from tinykd.data.text import tokenize_splits, tokenizer_settings
from tinykd.data.tokenize import TextTokenizer
from tinykd.errors import DataError


def resolve_path(path: str | Path, base_dir: str | Path | None = None, what: str = "data path") -> Path:
    """An existing path: as given if absolute, else relative to the working directory, then to ``base_dir``."""
    given = Path(path).expanduser()
    tried = [given if given.is_absolute() else Path.cwd() / given]
    if base_dir is not None and not given.is_absolute():
        tried.append(Path(base_dir).expanduser() / given)
    for candidate in tried:
        if candidate.exists():
            return candidate.resolve()
    raise DataError(f"{what} '{path}' not found; tried {' and '.join(str(t) for t in tried)}",
                    "check the spelling, or give an absolute path, or a path relative to the recipe file's folder")


def _check_settings(seed: int, val_fraction: float, test_fraction: float, limit: int | None) -> None:
    """Reject a seed that is not a non-negative integer, fractions outside [0, 1) and a non-positive limit."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise DataError(f"seed must be a non-negative integer, got {seed!r}", "set seed to e.g. 0")
    for label, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not isinstance(value, (int, float)) or not 0 <= value < 1:
            raise DataError(f"{label} must be a number in [0, 1), got {value!r}", f"set {label} to e.g. 0.1")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise DataError(f"limit must be a positive integer, got {limit!r}",
                        "set limit to e.g. 1000, or leave it out")


def _run_reader(entry: DatasetEntry, path: str | None, base_dir: str | None,
                options: dict[str, Any]) -> tuple[RawData, Path | None]:
    """Call the dataset function with its resolved path (if it needs one) and options."""
    if not entry.needs_path:
        if path is not None:
            raise DataError(f"dataset '{entry.name}' is bundled and takes no path", "remove 'path'")
        return entry.fn(**options), None
    if path is None:
        raise DataError(f"dataset '{entry.name}' needs a path to its files",
                        f"set 'path' to the {entry.name} data (a file or folder); {entry.description}")
    resolved = resolve_path(path, base_dir)
    return entry.fn(resolved, **options), resolved


def _arrays(x: np.ndarray, y: np.ndarray, raw: RawData, split: str) -> Arrays:
    """Writable float32 inputs and int64 labels of one split, checked against the spec (texts: an object array of
    str, tokenized after splitting)."""
    if raw.spec.modality == "text":
        return _text_arrays(x, y, raw, split)
    x = np.asarray(x, dtype=np.float32)
    if not (x.flags.writeable and x.flags.c_contiguous):  # standardize() works in place
        x = np.array(x, order="C")
    y = np.asarray(y)
    spec = raw.spec
    if x.shape[1:] != tuple(spec.shape) or len(x) != len(y):
        raise DataError(f"{split} split has inputs {x.shape} and labels {y.shape}; expected (N, "
                        f"{', '.join(map(str, spec.shape))}) inputs and N labels",
                        "make every sample the same shape and give exactly one label per sample")
    _check_labels(y, spec, split)
    if not np.isfinite(x).all():
        raise DataError(f"{split} inputs hold {np.count_nonzero(~np.isfinite(x))} NaN/inf values",
                        "remove or fill in the missing values in the data files")
    return x, y.astype(np.int64, copy=False)


def _check_labels(y: np.ndarray, spec: InputSpec, split: str) -> None:
    """Labels must be integer class indices 0..K-1."""
    if len(y) and (not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= spec.num_classes):
        raise DataError(f"{split} labels must be integers in 0..{spec.num_classes - 1}, "
                        f"got {y.dtype} values {y.min()}..{y.max()}",
                        "store class indices as integer labels starting at 0")


def _text_arrays(x: np.ndarray, y: np.ndarray, raw: RawData, split: str) -> Arrays:
    """The texts (an object array of str, N) and int64 labels of one split of a text reader."""
    texts = np.empty(len(x), dtype=object)
    texts[:] = list(x)
    y = np.asarray(y)
    if np.ndim(x) != 1 or len(texts) != len(y) or not all(isinstance(t, str) for t in texts):
        raise DataError(f"{split} split of a text reader has {len(texts)} inputs and {len(y)} labels; expected N "
                        "texts (str) and N labels", "return one string and one label per sample")
    _check_labels(y, raw.spec, split)
    return texts, y.astype(np.int64, copy=False)


def _check_classes(raw: RawData, where: str) -> None:
    """Every class index 0..K-1 must have samples: one stray label (a 200 among digits) would otherwise make K-1
    empty classes, a model head of the wrong size and a student scored against classes it can never learn."""
    labels = [y for y in (raw.y, raw.y_val, raw.y_test) if y is not None and len(y)]
    if not labels or not all(np.issubdtype(np.asarray(y).dtype, np.integer) for y in labels):
        return  # _arrays explains labels that are not integers
    counts = np.bincount(np.concatenate([np.asarray(y).ravel() for y in labels]).clip(0),
                         minlength=raw.spec.num_classes)[:raw.spec.num_classes]
    empty = np.flatnonzero(counts == 0)
    if len(empty):
        top = int(max(int(np.max(y)) for y in labels))
        raise DataError(f"labels run up to {top}, but {len(empty)} of the {raw.spec.num_classes} classes 0..{top} "
                        f"have no sample (e.g. {', '.join(map(str, empty[:5]))}); label {top} appears "
                        f"{int(counts[top]) if top < len(counts) else 0} time(s)",
                        "fix the stray labels in the data files, or number the classes 0..K-1 without gaps",
                        where=where)


def _source_names(raw: RawData, parts: dict[str, Arrays]) -> dict[str, str]:
    """What each part of the source is, for the split records: the reader's words, else the files read."""
    files = " + ".join(Path(f).name for f in raw.info.get("files") or []) or "the source"
    fallback = {"train": files, "val": "the source's own validation split", "test": "the source's own test split"}
    return {k: raw.sources.get(k) or fallback[k] for k in parts}


def _limit_parts(parts: dict[str, Arrays], limit: int, rng: np.random.Generator) -> dict[str, tuple[int, int]]:
    """Cut the source's parts (train and its own val/test files) in place to ``limit`` samples in all, each in
    proportion to its size and stratified within it; returns {part: (kept, of)} for the parts that were cut."""
    sizes = np.array([len(y) for _, y in parts.values()])
    if limit >= sizes.sum():
        return {}
    take = allocate(sizes, limit)
    for (name, (_, y)), n in zip(parts.items(), take):
        classes = len(np.unique(y))
        if n < classes:
            need = max(int(np.ceil(len(np.unique(y_)) * sizes.sum() / len(y_))) for _, y_ in parts.values() if len(y_))
            raise DataError(f"limit = {limit} draws {n} sample(s) from the {name} part of the data "
                            f"({len(y):,} samples), fewer than its {classes} classes",
                            f"set data.limit to at least {need}, or leave it out")
    drawn = {}
    for (name, (x, y)), n in zip(list(parts.items()), take):
        if n < len(y):
            parts[name] = limit_split(x, y, int(n), rng)
            drawn[name] = (int(n), len(y))
    return drawn


def _make_splits(raw: RawData, rng: np.random.Generator, val_fraction: float, test_fraction: float,
                 limit: int | None) -> tuple[dict[str, Arrays], dict[str, str], list[str]]:
    """Train/val/test arrays, a sentence per split saying where it came from, and the settings that did not apply.

    The source's own val/test parts are used as they are; otherwise the test split, then the val split, is drawn
    stratified from the training part. ``limit`` first cuts the whole source to that many samples."""
    parts = {"train": _arrays(raw.x, raw.y, raw, "train")}
    if raw.x_test is not None:
        parts["test"] = _arrays(raw.x_test, raw.y_test, raw, "test")
    if raw.x_val is not None:
        parts["val"] = _arrays(raw.x_val, raw.y_val, raw, "val")
    names, unused = _source_names(raw, parts), []
    total = sum(len(y) for _, y in parts.values())
    drawn = _limit_parts(parts, limit, rng) if limit is not None else {}
    if limit is not None and not drawn:
        unused.append(f"limit {limit}: the data has {total:,} samples, all used")
    pool = {k: f"{v} (limit: {drawn[k][0]:,} of its {drawn[k][1]:,} samples, stratified)" if k in drawn else v
            for k, v in names.items()}
    train, made, rest = parts["train"], {}, ""
    if "test" in parts:
        test, made["test"] = parts["test"], f"predefined: {pool['test']}"
        unused.append(f"test_fraction {test_fraction}: the test split is the data's own ({names['test']})")
    else:
        train, test = stratified_split(*train, test_fraction, rng)
        made["test"], rest = f"stratified {test_fraction} of {pool['train']}", "the rest of "
    if "val" in parts:
        val, made["val"] = parts["val"], f"predefined: {pool['val']}"
        unused.append(f"val_fraction {val_fraction}: the validation split is the data's own ({names['val']})")
    else:
        train, val = stratified_split(*train, val_fraction, rng)
        made["val"], rest = f"stratified {val_fraction} of {rest}{pool['train']}", "the rest of "
    made = {"train": f"{rest or 'all of '}{pool['train']}", "val": made["val"], "test": made["test"]}
    if len(train[1]) == 0:
        raise DataError("no training samples left after splitting",
                        "lower val_fraction/test_fraction or add data")
    return {"train": train, "val": val, "test": test}, made, unused


def _options_info(entry: DatasetEntry, options: dict[str, Any]) -> dict[str, Any]:
    """The reader options in effect (defaults filled in), with paths as strings for JSON reports."""
    merged = {**entry.defaults(), **options}
    return {k: str(v) if isinstance(v, (Path, TextTokenizer)) else v for k, v in merged.items()}


def _resolve_path_options(options: dict[str, Any], base_dir: str | None) -> dict[str, Any]:
    """Resolve every option named ``*_path`` (e.g. csv ``test_path``) like ``path`` itself."""
    return {k: resolve_path(v, base_dir) if k.endswith("_path") and v is not None else v
            for k, v in options.items()}


def load_dataset(name: str, *, path: str | None = None, seed: int = 0, val_fraction: float = 0.1,
                 test_fraction: float = 0.2, normalize: bool = True, limit: int | None = None,
                 labelled: int | None = None, class_names: Sequence[str] | str | Path | None = None,
                 base_dir: str | None = None, **options: Any) -> DataBundle:
    """Load dataset ``name`` as seed-deterministic, stratified train/val/test splits (float32 x, int64 y).

    ``path`` (and any ``*_path`` option) is tried relative to the working directory, then to
    ``base_dir`` (the recipe's folder). ``limit`` is the number of samples used in all: drawn stratified from the
    source before it is split (from its own test/val files too, each in proportion to its size), so train + val +
    test = ``limit``. ``normalize`` standardizes all splits with the train split's scalar mean/std. ``labelled``
    keeps the labels of that many training samples (stratified; a budget of the whole split or more labels every
    sample) and moves the other training inputs to ``bundle.unlabelled`` (inputs only, for the teacher to label).
    ``class_names``: a list, or a file of one name per line (see ``classes.apply_class_names``). ``options`` are the
    dataset's own options. ``info["splits"]`` says where each split came from, ``info["not_applied"]`` which
    settings had no effect.

    Text readers (spec modality "text") return texts: after splitting (and ``limit``/``labelled``) a tokenizer is
    learnt from the training texts, or taken from the ``tokenizer``/``tokenizer_path`` option, and every split becomes
    int64 token ids with a padding mask (``text.TOKENIZER_OPTIONS``; ``normalize`` does not apply). The bundle then
    also holds the tokenizer, the raw texts of every split and ``unlabelled_mask``.
    """
    entry = get_dataset(name)
    check_options(entry, options)
    _check_settings(seed, val_fraction, test_fraction, limit)
    raw, resolved = _run_reader(entry, path, base_dir, _resolve_path_options(options, base_dir))
    if entry.task == "causal_lm":
        from tinykd.data.corpus import corpus_bundle

        merged = {**entry.defaults(), **_resolve_path_options(options, base_dir)}
        if labelled is not None or class_names is not None:
            raise DataError("a language-model corpus has no labels: data.labelled and data.class_names do not apply",
                            "remove them from the data section")
        return corpus_bundle(name, raw, resolved, merged, seed=seed, val_fraction=val_fraction,
                             test_fraction=test_fraction, limit=limit)
    _check_classes(raw, str(resolved) if resolved else name)
    if class_names is not None:
        file = resolve_path(class_names, base_dir, "class_names file") if isinstance(class_names, (str, Path)) else None
        raw = apply_class_names(raw, read_class_names(file or class_names), where=str(file) if file else None)
    rng = np.random.default_rng(seed)
    splits, made, unused = _make_splits(raw, rng, val_fraction, test_fraction, limit)
    if labelled is not None and labelled < len(splits["train"][1]):  # a budget of all samples or more: no budget
        splits["train"], splits["unlabelled"] = _label_budget(*splits["train"], labelled, rng)
        made["train"] += f", of which a stratified {labelled:,} keep their labels (labelled)"
        made["unlabelled"] = "the other training samples, their labels dropped (labelled)"
    elif labelled is not None:
        unused.append(f"labelled {labelled}: the training split has {len(splits['train'][1]):,} samples, "
                      "all keep their labels")
    if raw.spec.modality == "text":
        return _text_bundle(entry, raw, resolved, splits, made, unused, normalize, limit, seed, options)
    norm = standardize(splits) if normalize else None
    info = {"dataset": name, "path": str(resolved) if resolved else None, **raw.info,
            "options": _options_info(entry, options), "seed": seed, "splits": made, "not_applied": unused,
            "limit": limit, "sizes": {k: len(v[1]) for k, v in splits.items()}, "normalize": norm}
    bundle_name = f"{name}:{resolved.name}" if resolved else name
    unlabelled = splits.pop("unlabelled", None)
    tensors = {k: Split(torch.from_numpy(x), torch.from_numpy(y)) for k, (x, y) in splits.items()}
    return DataBundle(name=bundle_name, spec=raw.spec, info=info,
                      unlabelled=None if unlabelled is None else torch.from_numpy(unlabelled[0]), **tensors)


def _text_bundle(entry: DatasetEntry, raw: RawData, resolved: Path | None, splits: dict[str, Arrays],
                 made: dict[str, str], unused: list[str], normalize: bool, limit: int | None, seed: int,
                 options: dict[str, Any]) -> DataBundle:
    """The bundle of a text reader: a tokenizer learnt from the training texts (or the one the options give) turns
    every split into token ids with a padding mask; token ids are not standardized."""
    settings = tokenizer_settings({**entry.defaults(), **options})
    encoded, tokenizer, text_info, notes = tokenize_splits(splits, settings)
    if normalize:
        notes.append("normalize: text inputs are token ids, not standardized")
    spec = InputSpec((settings["max_length"],), raw.spec.num_classes, "text", raw.spec.class_names,
                     tokenizer.vocab_size)
    info = {"dataset": entry.name, "path": str(resolved) if resolved else None, **raw.info,
            "options": _options_info(entry, options), "seed": seed, "splits": made, "not_applied": unused + notes,
            "limit": limit, "sizes": {k: len(v[1]) for k, v in splits.items()}, "normalize": None, "text": text_info}
    unlabelled = encoded.pop("unlabelled", None)
    return DataBundle(name=f"{entry.name}:{resolved.name}" if resolved else entry.name, spec=spec, info=info,
                      unlabelled=None if unlabelled is None else unlabelled.x,
                      unlabelled_mask=None if unlabelled is None else unlabelled.mask, tokenizer=tokenizer,
                      texts={k: v[0].tolist() for k, v in splits.items()}, **encoded)


def _label_budget(x: np.ndarray, y: np.ndarray, labelled: int, rng: np.random.Generator) -> tuple[Arrays, Arrays]:
    """(labelled part, unlabelled part) of a training split: ``labelled`` samples drawn within each class."""
    if isinstance(labelled, bool) or not isinstance(labelled, int) or labelled < 1:
        raise DataError(f"labelled must be a positive number of training samples, got {labelled!r}",
                        "set data.labelled to e.g. 1000, or leave it out to label every training sample")
    if labelled < len(np.unique(y)):
        raise DataError(f"labelled = {labelled} is fewer than the {len(np.unique(y))} classes",
                        "label at least one sample per class")
    keep = np.zeros(len(y), dtype=bool)
    keep[stratified_pick(y, labelled, rng)] = True
    order = np.flatnonzero(keep)
    return (x[order], y[order]), (x[~keep], y[~keep])
