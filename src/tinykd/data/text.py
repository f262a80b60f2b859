"""Text readers (one sentence or document per sample, with a class label) and their tokenization.

``glue_tsv`` (GLUE-style TSV folders such as SST-2), ``text_csv``, ``jsonl`` and ``text_folder`` (a ``.txt`` file
per document, one sub-folder per class) return the texts as an object array of str. Every one takes the tokenizer
options of ``TOKENIZER_OPTIONS``; ``load_dataset`` reads them and, after splitting, learns the tokenizer from the
training texts and turns every split into token ids with ``tokenize_splits``.

Labels: integers must be class indices 0..K-1 (K - 1 the largest training label); any other labels are class names,
numbered in sorted order. A test or validation label the training files lack is an error.
"""
from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tinykd.data.registry import RawData, register_dataset
from tinykd.data.spec import InputSpec, Split
from tinykd.data.tokenize import TextTokenizer, check_max_length, check_settings
from tinykd.errors import DataError

# The tokenizer options every text reader takes (data.options in a recipe): what the loader tokenizes with.
TOKENIZER_OPTIONS: dict[str, Any] = {
    "tokenizer": "wordpiece",  # "wordpiece" | "bpe" | "char", or a TextTokenizer to use as it is
    "vocab_size": 8000,        # at most this many tokens, special tokens included
    "max_length": 64,          # tokens per text, [CLS] and [SEP] included: longer texts are cut, shorter padded
    "lowercase": True,
    "tokenizer_path": None,    # a JSON file of TextTokenizer.save to use instead of learning one
}

_INT = re.compile(r"[+-]?\d+")
Label = int | str
Records = list[tuple[int, str, Label]]  # (line, text, label) of one file


def check_tokenizer_options(tokenizer: object, vocab_size: object, max_length: object, lowercase: object,
                            tokenizer_path: object) -> None:
    """Reject bad tokenizer options before any file is read."""
    if not isinstance(tokenizer, TextTokenizer):
        check_settings(tokenizer, vocab_size, lowercase)
    elif tokenizer_path is not None:
        raise DataError("both a tokenizer object and tokenizer_path are given", "give one of them")
    check_max_length(max_length)


def _decode(file: Path) -> str:
    """The file's text (a UTF-8 byte-order mark dropped); bytes that are not UTF-8 are an error naming the line."""
    try:
        data = file.read_bytes()
    except OSError as err:
        raise DataError(f"cannot read the file ({err.strerror or err})", "check that it exists and is readable",
                        where=str(file)) from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise DataError(f"line {line} is not UTF-8 text (byte 0x{data[err.start]:02x})",
                        "save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)", where=str(file)) from None


def _label(cell: object, line: int, file: Path) -> Label:
    """A label read from a file: an int for integer numbers (JSON or text), else the stripped string."""
    if isinstance(cell, str):
        cell = cell.strip()
        if not cell:
            raise DataError(f"line {line} has an empty label", "fill in the label or remove the line",
                            where=str(file))
        return int(cell) if _INT.fullmatch(cell) else cell
    if isinstance(cell, int) and not isinstance(cell, bool):
        return cell
    raise DataError(f"line {line}: label {json.dumps(cell)} is not an integer class index or a class name",
                    "give labels as integers 0..K-1 or as strings", where=str(file))


def _text(cell: object, line: int, file: Path) -> str:
    """A non-empty text, surrounding white space removed."""
    if not isinstance(cell, str):
        raise DataError(f"line {line}: the text is {json.dumps(cell)}, not a string", "give every text as a string",
                        where=str(file))
    text = cell.strip()
    if not text:
        raise DataError(f"line {line} has an empty text", "fill in the text or remove the line", where=str(file))
    return text


def _table(file: Path, text_column: str, label_column: str, delimiter: str, quoting: int) -> Records:
    """(line, text, label) of every non-blank row of a table with a header row."""
    reader = csv.reader(io.StringIO(_decode(file), newline=""), delimiter=delimiter, quoting=quoting)
    try:
        rows = [(reader.line_num, row) for row in reader if any(c.strip() for c in row)]
    except csv.Error as err:
        raise DataError(f"line {reader.line_num}: cannot parse the table ({err})",
                        "check the quoting and delimiter of that line", where=str(file)) from None
    if not rows:
        raise DataError("the file is empty", f"write a header row naming the {text_column} and {label_column} "
                        "columns, then one row per sample", where=str(file))
    names = [c.strip() for c in rows[0][1]]
    at = {}
    for role, column in (("text", text_column), ("label", label_column)):
        if column not in names:
            raise DataError(f"{role} column '{column}' missing; the columns are {', '.join(names)}",
                            f"set {role}_column to the name of the column that holds the {role}s", where=str(file))
        at[role] = names.index(column)
    if len(rows) == 1:
        raise DataError("the file has a header but no data rows", "add one row per sample", where=str(file))
    out = []
    for line, row in rows[1:]:
        if len(row) != len(names):
            tab = " (a tab inside a text?)" if delimiter == "\t" and len(row) > len(names) else ""
            raise DataError(f"line {line} has {len(row)} fields, the header {len(names)}{tab}",
                            "give every row the header's columns", where=str(file))
        out.append((line, _text(row[at["text"]], line, file), _label(row[at["label"]], line, file)))
    return out


def _jsonl(file: Path, text_column: str, label_column: str) -> Records:
    """(line, text, label) of every non-blank line, each one JSON object."""
    out = []
    for line, raw in enumerate(_decode(file).splitlines(), 1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except ValueError as err:
            raise DataError(f"line {line} is not valid JSON ({err})", "write one JSON object per line",
                            where=str(file)) from None
        if not isinstance(obj, dict):
            raise DataError(f"line {line} is a JSON {type(obj).__name__}, not an object",
                            f'write one object per line, e.g. {{"{text_column}": "...", "{label_column}": 0}}',
                            where=str(file))
        for role, key in (("text", text_column), ("label", label_column)):
            if key not in obj:
                raise DataError(f"line {line} has no {role} field '{key}'; its fields are {', '.join(obj) or 'none'}",
                                f"set {role}_column to the name of the field that holds the {role}s", where=str(file))
        out.append((line, _text(obj[text_column], line, file), _label(obj[label_column], line, file)))
    if not out:
        raise DataError("the file has no records", "write one JSON object per line", where=str(file))
    return out


def _encode_labels(parts: dict[str, list[tuple[Path, Records]]]) -> tuple[dict[str, np.ndarray], tuple[str, ...]]:
    """Class indices of every split and the class names. The training labels decide: integers are class indices
    (K = the largest + 1), strings are names in sorted order; a label of the other kind, a negative one, or one the
    training labels lack is an error naming its file and line."""
    train = [label for _, records in parts["train"] for _, _, label in records]
    numbers = sum(isinstance(v, int) for v in train)
    integer = numbers * 2 >= len(train)
    if integer:
        names = tuple(str(i) for i in range(max(v for v in train if isinstance(v, int)) + 1))
    else:
        names = tuple(sorted({v for v in train if isinstance(v, str)}))
    index = {(int(n) if integer else n): i for i, n in enumerate(names)}
    shown = f"0..{len(names) - 1}" if integer else ", ".join(names[:10]) + (", …" if len(names) > 10 else "")
    out = {}
    for split, files in parts.items():
        labels = []
        for file, records in files:
            for line, _, label in records:
                if isinstance(label, int) != integer:
                    kind = "integer labels (class indices)" if integer else "class names"
                    raise DataError(f"line {line}: label {label!r} is {'not ' if integer else ''}an integer, "
                                    f"but the training labels are {kind}",
                                    "use one kind of label: integers 0..K-1 or names", where=str(file))
                if integer and label < 0:
                    raise DataError(f"line {line}: label {label} is negative",
                                    "labels must be class indices 0..K-1; an unlabelled file (e.g. GLUE's own test "
                                    "set, label -1) cannot be a split: use the dev set as the test split",
                                    where=str(file))
                if label not in index:
                    raise DataError(f"line {line}: label {label!r} is not among the training labels ({shown})",
                                    "fix the label, or add samples of that class to the training data",
                                    where=str(file))
                labels.append(index[label])
        out[split] = np.array(labels, dtype=np.int64)
    return out, names


def _raw(parts: dict[str, list[tuple[Path, Records]]], info: dict[str, Any]) -> RawData:
    """RawData of texts and labels (train, and test/val where given) with a text spec (no shape until tokenized)."""
    labels, names = _encode_labels(parts)
    texts = {split: np.array([t for _, records in files for _, t, _ in records], dtype=object)
             for split, files in parts.items()}
    spec = InputSpec((), len(names), "text", names)
    sources = {split: " + ".join(f.name for f, _ in files) for split, files in parts.items()}
    files = [str(f) for split in ("train", "val", "test") for f, _ in parts.get(split, [])]
    return RawData(texts["train"], labels["train"], spec, x_test=texts.get("test"), y_test=labels.get("test"),
                   x_val=texts.get("val"), y_val=labels.get("val"), info={"files": files, **info}, sources=sources)


def _names(option: str, value: object) -> list[str] | None:
    """A list of file names option (a name or a list of names), or None when not set."""
    if value is None:
        return None
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, (list, tuple)) or not names or not all(isinstance(n, str) and n for n in names):
        raise DataError(f"option {option} must be a file name or a list of file names, got {value!r}",
                        f"set {option} to e.g. [train.tsv]")
    return list(names)


def _glue_files(folder: Path, train_files: object, val_files: object, test_files: object,
                test_path: Path | None) -> dict[str, list[Path]]:
    """Which files of a GLUE-style folder make which split. Defaults: train = train.tsv (+ dev.tsv when present),
    test = test.tsv when present (or ``test_path``), no val (the loader draws it from train)."""
    chosen = {"train": _names("train_files", train_files), "val": _names("val_files", val_files),
              "test": _names("test_files", test_files)}
    if test_path is not None and chosen["test"] is not None:
        raise DataError("both test_files and test_path are given", "give one of them")
    if chosen["train"] is None:
        chosen["train"] = ["train.tsv"] + (["dev.tsv"] if (folder / "dev.tsv").is_file() else [])
    if chosen["test"] is None and test_path is None and (folder / "test.tsv").is_file():
        chosen["test"] = ["test.tsv"]
    files = {split: [folder / n for n in names] for split, names in chosen.items() if names}
    for split, found in files.items():
        missing = [f.name for f in found if not f.is_file()]
        if missing:
            present = sorted(f.name for f in folder.glob("*.tsv"))
            raise DataError(f"{split} file(s) {', '.join(missing)} not found; the folder holds "
                            f"{', '.join(present) or 'no .tsv files'}",
                            f"set {split}_files to files of the folder", where=str(folder))
    used = [f for found in files.values() for f in found]
    if len(set(used)) != len(used):
        raise DataError("a file is named in more than one split", "give each file to one split only",
                        where=str(folder))
    if test_path is not None:
        files["test"] = [test_path]
    return files


@register_dataset("glue_tsv", needs_path=True,
                  description="GLUE-style tab-separated sentences with a label column, a folder (train.tsv, dev.tsv, "
                              "test.tsv) or one .tsv file (text)")
def glue_tsv(path: Path, *, text_column: str = "sentence", label_column: str = "label",
             train_files: list[str] | None = None, val_files: list[str] | None = None,
             test_files: list[str] | None = None, test_path: Path | None = None,
             tokenizer: str | TextTokenizer = "wordpiece", vocab_size: int = 8000, max_length: int = 64,
             lowercase: bool = True, tokenizer_path: Path | None = None) -> RawData:
    """Read TSV files with a header row (no quoting: GLUE texts hold unbalanced quotes). For a folder, by default
    train = train.tsv + dev.tsv (when present) and test = test.tsv (when present) — the layout of a GLUE task whose
    dev set serves as test.tsv; ``train_files``/``val_files``/``test_files`` name other files of the folder."""
    check_tokenizer_options(tokenizer, vocab_size, max_length, lowercase, tokenizer_path)
    if path.is_dir():
        files = _glue_files(path, train_files, val_files, test_files, test_path)
    elif train_files is not None or val_files is not None or test_files is not None:
        raise DataError("train_files, val_files and test_files name files of a folder, but path is one file",
                        "give the folder as path, or use test_path for a test file", where=str(path))
    else:
        files = {"train": [path], **({"test": [test_path]} if test_path is not None else {})}
    parts = {split: [(f, _table(f, text_column, label_column, "\t", csv.QUOTE_NONE)) for f in found]
             for split, found in files.items()}
    return _raw(parts, {"text_column": text_column, "label_column": label_column})


@register_dataset("text_csv", needs_path=True, description="a CSV file with a text column and a label column (text)")
def text_csv(path: Path, *, text_column: str = "text", label_column: str = "label", test_path: Path | None = None,
             delimiter: str = ",", tokenizer: str | TextTokenizer = "wordpiece", vocab_size: int = 8000,
             max_length: int = 64, lowercase: bool = True, tokenizer_path: Path | None = None) -> RawData:
    """Read a CSV with a header row (quoted fields may hold commas and line breaks) and an optional test CSV."""
    check_tokenizer_options(tokenizer, vocab_size, max_length, lowercase, tokenizer_path)
    if not isinstance(delimiter, str) or len(delimiter) != 1:
        raise DataError(f"option delimiter must be one character, got {delimiter!r}", "set delimiter to e.g. ','")
    files = {"train": path, **({"test": test_path} if test_path is not None else {})}
    parts = {split: [(f, _table(f, text_column, label_column, delimiter, csv.QUOTE_MINIMAL))]
             for split, f in files.items()}
    return _raw(parts, {"text_column": text_column, "label_column": label_column})


@register_dataset("jsonl", needs_path=True, description="JSON lines, one object with a text and a label per line (text)")
def jsonl(path: Path, *, text_column: str = "text", label_column: str = "label", test_path: Path | None = None,
          tokenizer: str | TextTokenizer = "wordpiece", vocab_size: int = 8000, max_length: int = 64,
          lowercase: bool = True, tokenizer_path: Path | None = None) -> RawData:
    """Read one JSON object per line; ``text_column`` and ``label_column`` name its fields."""
    check_tokenizer_options(tokenizer, vocab_size, max_length, lowercase, tokenizer_path)
    files = {"train": path, **({"test": test_path} if test_path is not None else {})}
    parts = {split: [(f, _jsonl(f, text_column, label_column))] for split, f in files.items()}
    return _raw(parts, {"text_column": text_column, "label_column": label_column})


_FOLDER_FIX = "arrange the texts as <folder>/<class>/<name>.txt, or <folder>/train/<class>/... and test/<class>/..."


def _class_texts(folder: Path, classes: tuple[str, ...] | None) -> list[tuple[Path, Records]]:
    """(file, [(1, text, class name)]) of every .txt file of every class sub-folder, in sorted order."""
    found = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not found:
        raise DataError("no class sub-folders found", _FOLDER_FIX, where=str(folder))
    extra = sorted(set(found) - set(classes or found))
    if extra:
        raise DataError(f"classes {', '.join(extra)} in {folder.name}/ are missing from train/",
                        "use the same class folders in every split", where=str(folder))
    out = []
    for name in found:
        files = sorted(f for f in (folder / name).iterdir() if f.is_file() and f.suffix.lower() == ".txt")
        if not files:
            raise DataError(f"class folder {name} holds no .txt files", "add texts or remove the folder",
                            where=str(folder))
        for file in files:
            text = _decode(file).strip()
            if not text:
                raise DataError("the text file is empty", "fill it in or delete it", where=str(file))
            out.append((file, [(1, text, name)]))
    return out


@register_dataset("text_folder", needs_path=True,
                  description="a folder of .txt files with one sub-folder per class (optionally under train/ and "
                              "test/) (text)")
def text_folder(path: Path, *, tokenizer: str | TextTokenizer = "wordpiece", vocab_size: int = 8000,
                max_length: int = 64, lowercase: bool = True, tokenizer_path: Path | None = None) -> RawData:
    """Read one document per .txt file; the class names are the sub-folder names, sorted."""
    check_tokenizer_options(tokenizer, vocab_size, max_length, lowercase, tokenizer_path)
    if not path.is_dir():
        raise DataError("expected a folder of class sub-folders", _FOLDER_FIX, where=str(path))
    folders = ({s: path / s for s in ("train", "val", "test") if (path / s).is_dir()}
               if (path / "train").is_dir() and (path / "test").is_dir() else {"train": path})
    parts = {"train": _class_texts(folders["train"], None)}
    classes = tuple(sorted({r[0][2] for _, r in parts["train"]}))
    parts.update({s: _class_texts(f, classes) for s, f in folders.items() if s != "train"})
    raw = _raw(parts, {"num_files": {s: len(p) for s, p in parts.items()}})
    raw.info["files"] = [str(f) for f in folders.values()]
    raw.sources = {split: f"{folder.name}/" for split, folder in folders.items()}
    return raw


# ---------- tokenization, run by load_dataset after splitting ----------

def tokenizer_settings(options: dict[str, Any]) -> dict[str, Any]:
    """The tokenizer options in ``options`` (a reader's merged options), defaults filled in, checked."""
    settings = {k: options.get(k, v) for k, v in TOKENIZER_OPTIONS.items()}
    check_tokenizer_options(*settings.values())
    return settings


def tokenize_splits(splits: dict[str, tuple[np.ndarray, np.ndarray]],
                    settings: dict[str, Any]) -> tuple[dict[str, Split], TextTokenizer, dict[str, Any], list[str]]:
    """Token-id splits of text splits, the tokenizer, what to record in the bundle info, and the notes of settings
    that did not apply. The tokenizer is learnt from the training texts (the labelled and unlabelled training
    inputs, never validation or test), unless ``settings`` give one (a TextTokenizer or tokenizer_path)."""
    given, unused = settings["tokenizer"], []
    if settings["tokenizer_path"] is not None:
        given = TextTokenizer.load(settings["tokenizer_path"])
    if isinstance(given, TextTokenizer):
        tokenizer, source = given, (f"saved: {Path(settings['tokenizer_path']).name}" if settings["tokenizer_path"]
                                    else "given")
        asked = {} if isinstance(settings["tokenizer"], TextTokenizer) else {"tokenizer": settings["tokenizer"]}
        asked.update(vocab_size=settings["vocab_size"], lowercase=settings["lowercase"])
        have = {"tokenizer": tokenizer.kind, "vocab_size": tokenizer.vocab_size_target, "lowercase": tokenizer.lowercase}
        for key, value in asked.items():
            if value != have[key] and value != TOKENIZER_OPTIONS[key]:
                unused.append(f"{key} {value}: the {source} tokenizer has {key} {have[key]}")
    else:
        texts = [t for part in ("train", "unlabelled") if part in splits for t in splits[part][0]]
        tokenizer = TextTokenizer.train(texts, given, settings["vocab_size"], settings["lowercase"])
        source = f"learnt from the {len(texts):,} training texts"
    max_length = settings["max_length"]
    out, cut, train_lengths = {}, {}, None
    for split, (x, y) in splits.items():
        ids, mask, lengths = tokenizer.encode_full(list(x), max_length)
        out[split] = Split(torch.from_numpy(ids), torch.from_numpy(y), torch.from_numpy(mask))
        cut[split] = int((lengths > max_length).sum())
        if split == "train":
            train_lengths = lengths
    n = sum(len(y) for _, y in splits.values())
    info = {"tokenizer": tokenizer.kind, "vocab_size": tokenizer.vocab_size, "max_length": max_length,
            "lowercase": tokenizer.lowercase, "source": source, "fingerprint": tokenizer.fingerprint(),
            "truncated": {s: round(c / max(len(splits[s][1]), 1), 6) for s, c in cut.items()},
            "truncated_fraction": round(sum(cut.values()) / max(n, 1), 6)}
    if train_lengths is not None and len(train_lengths):
        info["train_tokens"] = {"mean": round(float(train_lengths.mean()), 2),
                                "p95": int(np.percentile(train_lengths, 95)), "max": int(train_lengths.max())}
    return out, tokenizer, info, unused
