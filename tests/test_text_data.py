"""Tests for text data: the text readers on files written here, the tokenizers, and load_dataset on text."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tinykd.data import load_dataset
from tinykd.data.text import glue_tsv, jsonl, text_csv, text_folder
from tinykd.data.tokenize import CLS, PAD, SEP, UNK, TextTokenizer, learn_merges
from tinykd.errors import DataError

SST2 = Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2"

# Two classes of short reviews; only the letters a-p and spaces (a test may then use q-z as unseen characters).
GOOD = ["a fine film", "an ideal cameo", "a glad ending", "one fine meal", "deep and fine", "a good mood",
        "enchanting and moving", "a gleaming piece", "a fine deal", "good dialogue"]
BAD = ["a bad film", "a dim ending", "bland and dead", "a bad meal", "coming off dead", "a bleak hope",
       "lame dialogue", "a dim mood", "bad pacing", "pale and bland"]


def write_tsv(file: Path, rows: list[tuple[str, object]], header: tuple[str, str] = ("sentence", "label")) -> None:
    """A GLUE-style TSV: a header, then text TAB label per line, no quoting."""
    file.write_text("\n".join("\t".join(map(str, r)) for r in [header, *rows]) + "\n", encoding="utf-8")


def labelled(texts: list[str], label: object) -> list[tuple[str, object]]:
    return [(t, label) for t in texts]


@pytest.fixture
def glue_folder(tmp_path: Path) -> Path:
    """train.tsv (16), dev.tsv (4) and test.tsv (4 with an unbalanced quote) with labels 0/1."""
    folder = tmp_path / "sst"
    folder.mkdir()
    write_tsv(folder / "train.tsv", labelled(GOOD[:8], 1) + labelled(BAD[:8], 0))
    write_tsv(folder / "dev.tsv", labelled(GOOD[8:], 1) + labelled(BAD[8:], 0))
    write_tsv(folder / "test.tsv", [('it \'s a "fine film', 1), ("a bad deal", 0), ("fine", 1), ("bad", 0)])
    return folder


# ---------- readers ----------

def test_glue_tsv_folder_defaults_train_on_train_and_dev_test_on_test(glue_folder: Path) -> None:
    b = load_dataset("glue_tsv", path=str(glue_folder), val_fraction=0.25, max_length=16)
    assert (len(b.train), len(b.val), len(b.test)) == (15, 5, 4)
    assert b.spec.modality == "text" and b.spec.shape == (16,) and b.spec.num_classes == 2
    assert b.spec.class_names == ("0", "1") and b.spec.vocab_size == b.tokenizer.vocab_size
    assert b.info["splits"]["test"] == "predefined: test.tsv"
    assert b.info["splits"]["val"] == "stratified 0.25 of train.tsv + dev.tsv"
    assert b.texts["test"][0] == 'it \'s a "fine film'  # no quoting: the quote is text
    assert sorted(b.texts["train"] + b.texts["val"]) == sorted(GOOD + BAD)
    assert b.train.x.dtype == torch.int64 and b.train.mask.dtype == torch.int64 and b.train.x.shape == (15, 16)
    assert b.info["normalize"] is None
    assert "normalize: text inputs are token ids, not standardized" in b.info["not_applied"]
    text = b.info["text"]
    assert (text["tokenizer"], text["max_length"], text["truncated_fraction"]) == ("wordpiece", 16, 0.0)
    assert text["source"] == "learnt from the 15 training texts"
    # every split keeps each text with its own label
    for split in ("train", "val", "test"):
        for t, y in zip(b.texts[split], getattr(b, split).y.tolist()):
            assert y == (1 if t in GOOD or "fine" in t else 0)


def test_glue_tsv_file_options_and_single_file(glue_folder: Path) -> None:
    b = load_dataset("glue_tsv", path=str(glue_folder), train_files=["train.tsv"], test_files="dev.tsv")
    assert len(b.train) + len(b.val) == 16 and len(b.test) == 4
    assert b.info["splits"]["test"] == "predefined: dev.tsv"
    raw = glue_tsv(glue_folder / "train.tsv", test_path=glue_folder / "test.tsv")
    assert raw.x.dtype == object and len(raw.x) == 16 and raw.y.dtype == np.int64 and len(raw.x_test) == 4
    with pytest.raises(DataError, match="train file\\(s\\) nope.tsv not found; the folder holds dev.tsv, test.tsv, "
                                        "train.tsv"):
        glue_tsv(glue_folder, train_files=["nope.tsv"])
    with pytest.raises(DataError, match="a file is named in more than one split"):
        glue_tsv(glue_folder, test_files=["dev.tsv"])


def test_text_csv_quoted_commas_int_labels_and_test_path(tmp_path: Path) -> None:
    rows = [("review", "stars")] + labelled(GOOD, 2) + labelled(BAD, 0) + [("bad, but fine, really", 1)] * 3
    with open(tmp_path / "train.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)
    with open(tmp_path / "test.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("stars", "review"), (0, "bad"), (2, "fine"), (1, "so, so")])
    raw = text_csv(tmp_path / "train.csv", text_column="review", label_column="stars", test_path=tmp_path / "test.csv")
    assert raw.spec.class_names == ("0", "1", "2") and raw.x[-1] == "bad, but fine, really"
    assert raw.x_test.tolist() == ["bad", "fine", "so, so"] and raw.y_test.tolist() == [0, 2, 1]
    b = load_dataset("text_csv", path="train.csv", base_dir=str(tmp_path), test_path="test.csv",
                     text_column="review", label_column="stars", val_fraction=0.0)
    assert len(b.train) == 23 and len(b.test) == 3 and b.info["splits"]["test"] == "predefined: test.csv"


def test_jsonl_string_labels_and_test_path(tmp_path: Path) -> None:
    lines = [json.dumps({"text": t, "label": "pos", "id": i}) for i, t in enumerate(GOOD)]
    lines += [json.dumps({"text": t, "label": "neg"}) for t in BAD] + [""]  # a blank line is skipped
    (tmp_path / "train.jsonl").write_text("\n".join(lines), encoding="utf-8")
    (tmp_path / "test.jsonl").write_text(json.dumps({"text": "fine é", "label": "pos"}) + "\n", encoding="utf-8")
    raw = jsonl(tmp_path / "train.jsonl", test_path=tmp_path / "test.jsonl")
    assert raw.spec.class_names == ("neg", "pos") and raw.y.tolist() == [1] * 10 + [0] * 10
    assert raw.x_test.tolist() == ["fine é"] and raw.y_test.tolist() == [1]
    b = load_dataset("jsonl", path=str(tmp_path / "train.jsonl"), test_path=str(tmp_path / "test.jsonl"),
                     class_names=["pos", "neg"])  # the order given becomes the class order
    assert b.spec.class_names == ("pos", "neg") and b.test.y.tolist() == [0]


def test_jsonl_integer_labels(tmp_path: Path) -> None:
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps({"t": t, "y": i % 3}) for i, t in enumerate(GOOD + BAD)))
    raw = jsonl(tmp_path / "d.jsonl", text_column="t", label_column="y")
    assert raw.spec.num_classes == 3 and raw.y.tolist() == [i % 3 for i in range(20)]


def test_text_folder_with_and_without_split_folders(tmp_path: Path) -> None:
    for split, texts in (("train", (GOOD[:6], BAD[:6])), ("test", (GOOD[6:], BAD[6:]))):
        for name, docs in zip(("pos", "neg"), texts):
            (tmp_path / "imdb" / split / name).mkdir(parents=True)
            for i, doc in enumerate(docs):
                (tmp_path / "imdb" / split / name / f"{i}.txt").write_text(doc + "\n\nsecond paragraph.",
                                                                            encoding="utf-8")
    (tmp_path / "imdb" / "train" / "pos" / "notes.md").write_text("ignored")
    b = load_dataset("text_folder", path=str(tmp_path / "imdb"), val_fraction=0.0)
    assert b.spec.class_names == ("neg", "pos") and (len(b.train), len(b.test)) == (12, 8)
    assert b.info["splits"]["test"] == "predefined: test/"
    assert all(t.endswith("\n\nsecond paragraph.") for t in b.texts["test"])
    raw = text_folder(tmp_path / "imdb" / "train")
    assert len(raw.x) == 12 and raw.x_test is None and raw.y.tolist() == [0] * 6 + [1] * 6


# ---------- reader errors ----------

def test_text_reader_errors_name_file_line_and_fix(tmp_path: Path) -> None:
    f = tmp_path / "t.tsv"
    write_tsv(f, [("fine", 1), ("   ", 0)])
    with pytest.raises(DataError, match="line 3 has an empty text") as err:
        glue_tsv(f)
    assert str(f) in str(err.value) and "fix:" in str(err.value)
    write_tsv(f, [("fine", 1)], header=("text", "label"))
    with pytest.raises(DataError, match="text column 'sentence' missing; the columns are text, label"):
        glue_tsv(f)
    with pytest.raises(DataError, match="label column 'y' missing; the columns are text, label"):
        glue_tsv(f, text_column="text", label_column="y")
    f.write_text("sentence\tlabel\n")
    with pytest.raises(DataError, match="the file has a header but no data rows"):
        glue_tsv(f)
    f.write_text("")
    with pytest.raises(DataError, match="the file is empty"):
        glue_tsv(f)
    f.write_bytes("sentence\tlabel\nfine\t1\ncaf\xe9\t0\n".encode("latin-1"))
    with pytest.raises(DataError, match="line 3 is not UTF-8 text \\(byte 0xe9\\)") as err:
        glue_tsv(f)
    assert "save the file as UTF-8" in str(err.value)
    write_tsv(f, [("fine", 1), ("bad", 0), ("odd", "x"), ("ok", 1)])
    with pytest.raises(DataError, match="line 4: label 'x' is not an integer, but the training labels are integer"):
        glue_tsv(f)
    write_tsv(f, [("fine", 1), ("bad", -1)])
    with pytest.raises(DataError, match="line 3: label -1 is negative") as err:
        glue_tsv(f)
    assert "GLUE's own test set" in str(err.value)
    write_tsv(f, [("fine", 1), ("bad", "")])
    with pytest.raises(DataError, match="line 3 has an empty label"):
        glue_tsv(f)
    f.write_text("sentence\tlabel\nfine\t1\nbad\t0\textra\n")
    with pytest.raises(DataError, match="line 3 has 3 fields, the header 2 \\(a tab inside a text\\?\\)"):
        glue_tsv(f)


def test_unknown_test_label_is_an_error(tmp_path: Path) -> None:
    write_tsv(tmp_path / "a.tsv", [("fine", "pos"), ("bad", "neg")])
    write_tsv(tmp_path / "b.tsv", [("fine", "pos"), ("meh", "neutral")])
    with pytest.raises(DataError, match="line 3: label 'neutral' is not among the training labels \\(neg, pos\\)") as e:
        glue_tsv(tmp_path / "a.tsv", test_path=tmp_path / "b.tsv")
    assert str(tmp_path / "b.tsv") in str(e.value)
    write_tsv(tmp_path / "a.tsv", [("fine", 1), ("bad", 0)])
    write_tsv(tmp_path / "b.tsv", [("fine", 1), ("meh", 2)])
    with pytest.raises(DataError, match="line 3: label 2 is not among the training labels \\(0..1\\)"):
        glue_tsv(tmp_path / "a.tsv", test_path=tmp_path / "b.tsv")


def test_jsonl_errors(tmp_path: Path) -> None:
    f = tmp_path / "d.jsonl"
    f.write_text('{"text": "fine", "label": 1}\n{"body": "bad", "label": 0}\n')
    with pytest.raises(DataError, match="line 2 has no text field 'text'; its fields are body, label"):
        jsonl(f)
    f.write_text('{"text": "fine", "label": 1}\n{"text": "bad", "label": 0.5}\n')
    with pytest.raises(DataError, match="line 2: label 0.5 is not an integer class index or a class name"):
        jsonl(f)
    f.write_text('{"text": "fine", "label": 1}\n{"text": "bad", "label": 0\n')
    with pytest.raises(DataError, match="line 2 is not valid JSON"):
        jsonl(f)
    f.write_text('{"text": "fine", "label": 1}\n{"text": "", "label": 0}\n')
    with pytest.raises(DataError, match="line 2 has an empty text"):
        jsonl(f)
    f.write_text("\n\n")
    with pytest.raises(DataError, match="the file has no records"):
        jsonl(f)
    f.write_text('[1, 2]\n')
    with pytest.raises(DataError, match="line 1 is a JSON list, not an object"):
        jsonl(f)


def test_text_folder_and_option_errors(tmp_path: Path, glue_folder: Path) -> None:
    (tmp_path / "docs" / "pos").mkdir(parents=True)
    (tmp_path / "docs" / "pos" / "a.txt").write_text("  \n")
    with pytest.raises(DataError, match="the text file is empty") as err:
        text_folder(tmp_path / "docs")
    assert "a.txt" in str(err.value)
    (tmp_path / "docs" / "pos" / "a.txt").write_bytes(b"\xff\xfe")
    with pytest.raises(DataError, match="line 1 is not UTF-8 text"):
        text_folder(tmp_path / "docs")
    with pytest.raises(DataError, match="option tokenizer must be one of wordpiece, bpe, byte_bpe, char, got 'spm'"):
        load_dataset("glue_tsv", path=str(glue_folder), tokenizer="spm")
    with pytest.raises(DataError, match="max_length must be an integer of at least 3 tokens, got 1"):
        load_dataset("glue_tsv", path=str(glue_folder), max_length=1)
    with pytest.raises(DataError, match="(?s)unknown option 'vocab' for dataset 'jsonl'.*did you mean 'vocab_size'"):
        load_dataset("jsonl", path=str(glue_folder), vocab=100)


# ---------- tokenizers ----------

def test_learn_merges_matches_the_papers_example() -> None:
    # Sennrich et al. 2016, figure 1: low 5, lower 2, newest 6, widest 3; ties go to the smaller pair of strings.
    vocab, merges = learn_merges({"low": 5, "lower": 2, "newest": 6, "widest": 3}, vocab_size=100)
    assert merges[:5] == [("e", "s"), ("es", "t"), ("l", "o"), ("lo", "w"), ("e", "w")]
    assert vocab[:4] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]"] and vocab[4:15] == sorted("lowernstid") + ["es"]
    vocab, merges = learn_merges({"low": 5, "lower": 2}, vocab_size=100, prefix="##")
    assert merges[:2] == [("##o", "##w"), ("l", "##ow")] and vocab.index("##ow") + 1 == vocab.index("low")


@pytest.mark.parametrize("kind", ["wordpiece", "bpe", "char"])
def test_tokenizer_save_load_round_trip_and_determinism(tmp_path: Path, kind: str) -> None:
    tok = TextTokenizer.train(GOOD + BAD, kind, vocab_size=60)
    assert tok.vocab[:3] == ["[PAD]", "[UNK]", "[CLS]"] and tok.vocab_size == len(tok.vocab) <= 60 + 30
    again = TextTokenizer.load(tok.save(tmp_path / "tok.json"))
    assert again == tok and again.fingerprint() == tok.fingerprint()
    assert json.loads((tmp_path / "tok.json").read_text())["kind"] == kind  # plain JSON
    texts = ["A Fine film, unseen words zzz!", "bad", "x" * 200]
    for a, b in zip(tok.encode(texts, 12), again.encode(texts, 12)):
        np.testing.assert_array_equal(a, b)
    assert TextTokenizer.train(list(reversed(GOOD + BAD)), kind, vocab_size=60) == tok  # counts decide, not order


def test_tokenizer_vocabulary_is_the_same_in_another_process() -> None:
    """Hash seeds differ between processes; the vocabulary must not (the library's own trainers fail this)."""
    code = ("import sys, json; from tinykd.data.tokenize import TextTokenizer; texts = json.loads(sys.argv[1]); "
            "print(' '.join(TextTokenizer.train(texts, k, 40).fingerprint() for k in ('wordpiece', 'bpe', 'char')))")
    texts = GOOD + BAD + ["aa bb aa bb cc dd cc dd", "ab ba ab ba cd dc"]
    here = " ".join(TextTokenizer.train(texts, k, 40).fingerprint() for k in ("wordpiece", "bpe", "char"))
    env = {**os.environ, "PYTHONHASHSEED": "12345", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code, json.dumps(texts)], capture_output=True, text=True, env=env,
                         check=True)
    assert out.stdout.split() == here.split()


@pytest.mark.parametrize("kind", ["wordpiece", "bpe"])
def test_encode_pads_right_truncates_and_keeps_sep(kind: str) -> None:
    tok = TextTokenizer.train(GOOD + BAD, kind, vocab_size=200)
    ids, mask = tok.encode(["a fine film", "a bad film and a dim ending and a bleak hope"], max_length=6)
    assert ids.shape == mask.shape == (2, 6) and ids.dtype == mask.dtype == np.int64
    whole = tok.encode(["a fine film"], max_length=40)[0][0]
    n = int((whole != PAD).sum())
    assert whole[0] == CLS and whole[n - 1] == SEP and (whole[n:] == PAD).all()
    assert mask[0].tolist() == [1] * n + [0] * (6 - n) and (ids[0, n:] == PAD).all()
    assert mask[1].tolist() == [1] * 6 and ids[1, 0] == CLS and ids[1, -1] == SEP  # cut, its [SEP] kept
    long = tok.encode(["a bad film and a dim ending and a bleak hope"], max_length=40)[0][0]
    assert ids[1, 1:5].tolist() == long[1:5].tolist()
    _, _, lengths = tok.encode_full(["a fine film", "a bad film and a dim ending and a bleak hope"], 6)
    assert lengths[0] == n and lengths[1] > 6
    assert tok.tokens("a fine film")[0] == "[CLS]" and tok.tokens("a fine film")[-1] == "[SEP]"


def test_char_tokenizer_lowercase_unk_and_truncation() -> None:
    tok = TextTokenizer.train(["abc", "aab"], "char", vocab_size=100)
    assert tok.vocab == ["[PAD]", "[UNK]", "[CLS]", "a", "b", "c"]
    ids, mask = tok.encode(["ABz", "abcabc"], max_length=4)
    assert ids.tolist() == [[CLS, 3, 4, UNK], [CLS, 3, 4, 5]] and mask.tolist() == [[1] * 4, [1] * 4]
    ids, mask = tok.encode(["b"], max_length=4)
    assert ids.tolist() == [[CLS, 4, PAD, PAD]] and mask.tolist() == [[1, 1, 0, 0]]
    top = TextTokenizer.train(["aaa bb c d e f g"], "char", vocab_size=8)  # the 5 most frequent, ties by code point
    assert top.vocab == ["[PAD]", "[UNK]", "[CLS]", " ", "a", "b", "c", "d"]
    cased = TextTokenizer.train(["Ab"], "char", vocab_size=100, lowercase=False)
    assert cased.vocab[3:] == ["A", "b"] and cased.encode(["a"], 3)[0].tolist() == [[CLS, UNK, PAD]]


# ---------- load_dataset on text ----------

def test_tokenizer_is_learnt_from_the_training_split_only(tmp_path: Path) -> None:
    write_tsv(tmp_path / "train.tsv", labelled(GOOD, 1) + labelled(BAD, 0))
    write_tsv(tmp_path / "test.tsv", [("a fine quartz", 1), ("a bad xyz", 0)])  # q-z never occur in training
    b = load_dataset("glue_tsv", path=str(tmp_path), val_fraction=0.0, vocab_size=500)
    assert not any(t in b.tokenizer.vocab for t in ("quartz", "xyz", "q", "x", "##z"))
    for row, mask in zip(b.test.x, b.test.mask):
        assert row[mask.bool()].tolist()[-2:] == [UNK, SEP]
    assert b.info["text"]["source"] == "learnt from the 20 training texts"


def test_truncation_is_recorded_and_masks_match_lengths(tmp_path: Path) -> None:
    write_tsv(tmp_path / "train.tsv", labelled(GOOD, 1) + labelled(BAD, 0) + [(" ".join(GOOD), 1)])
    b = load_dataset("glue_tsv", path=str(tmp_path / "train.tsv"), tokenizer="char", max_length=8,
                     test_fraction=0.0, val_fraction=0.0)
    lengths = np.array([len(t) + 1 for t in b.texts["train"]])
    assert b.train.mask.sum(1).tolist() == np.minimum(lengths, 8).tolist()
    assert b.info["text"]["truncated"]["train"] == round(float((lengths > 8).mean()), 6)
    assert b.info["text"]["train_tokens"]["max"] == lengths.max() and b.spec.shape == (8,)


def test_labelled_budget_keeps_the_unlabelled_texts_mask(glue_folder: Path) -> None:
    b = load_dataset("glue_tsv", path=str(glue_folder), val_fraction=0.0, labelled=6, max_length=10)
    assert len(b.train) == 6 and b.unlabelled.shape == b.unlabelled_mask.shape == (14, 10)
    assert len(b.texts["unlabelled"]) == 14 and b.info["sizes"]["unlabelled"] == 14
    again, _ = b.tokenizer.encode(b.texts["unlabelled"], 10)
    assert torch.equal(b.unlabelled, torch.from_numpy(again))
    assert torch.equal(b.unlabelled_mask, (b.unlabelled != PAD).long())
    assert b.info["text"]["source"] == "learnt from the 20 training texts"  # labelled and unlabelled inputs
    assert sorted(b.tokenizer.vocab) == sorted(load_dataset("glue_tsv", path=str(glue_folder),
                                                            val_fraction=0.0).tokenizer.vocab)


def test_limit_on_text(glue_folder: Path) -> None:
    b = load_dataset("glue_tsv", path=str(glue_folder), limit=12, val_fraction=0.0)
    assert len(b.train) + len(b.test) == 12 and len(b.texts["train"]) == len(b.train)
    assert b.info["splits"]["train"].startswith("the rest of train.tsv + dev.tsv (limit: 10 of its 20 samples")


def test_saved_or_given_tokenizer_is_used_as_is(tmp_path: Path, glue_folder: Path) -> None:
    first = load_dataset("glue_tsv", path=str(glue_folder), vocab_size=50, tokenizer="bpe")
    first.tokenizer.save(tmp_path / "tok.json")
    for given in ({"tokenizer_path": str(tmp_path / "tok.json")}, {"tokenizer": first.tokenizer}):
        again = load_dataset("glue_tsv", path=str(glue_folder), **given)
        assert again.tokenizer == first.tokenizer and again.spec == first.spec
        for split in ("train", "val", "test"):
            assert torch.equal(getattr(again, split).x, getattr(first, split).x)
    assert again.info["text"]["source"] == "given" and "TextTokenizer(bpe" in again.info["options"]["tokenizer"]
    moved = load_dataset("glue_tsv", path=str(glue_folder), tokenizer_path=str(tmp_path / "tok.json"),
                         vocab_size=99)
    assert moved.info["text"]["source"] == "saved: tok.json"
    assert "vocab_size 99: the saved: tok.json tokenizer has vocab_size 50" in moved.info["not_applied"]
    (tmp_path / "bad.json").write_text('{"format": "other"}')
    with pytest.raises(DataError, match="not a tinykd tokenizer file"):
        load_dataset("glue_tsv", path=str(glue_folder), tokenizer_path=str(tmp_path / "bad.json"))
    with pytest.raises(DataError, match="both a tokenizer object and tokenizer_path are given"):
        load_dataset("glue_tsv", path=str(glue_folder), tokenizer=first.tokenizer,
                     tokenizer_path=str(tmp_path / "tok.json"))


@pytest.mark.skipif(not SST2.exists(), reason=f"{SST2} not present")
def test_sst2_shared_copy_with_limit() -> None:
    b = load_dataset("glue_tsv", path=str(SST2), limit=2000, class_names=["negative", "positive"])
    assert len(b.train) + len(b.val) + len(b.test) == 2000
    assert b.info["splits"]["test"] == "predefined: test.tsv (limit: 26 of its 872 samples, stratified)"
    assert b.spec.class_names == ("negative", "positive") and b.spec.shape == (64,)
    assert b.info["text"]["truncated_fraction"] < 0.01 and 1000 < b.spec.vocab_size <= 8000
    assert set(b.test.y.tolist()) == {0, 1} and len(b.texts["test"]) == len(b.test)
