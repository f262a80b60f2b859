"""Data for causal language models: a plain-text corpus cut into contiguous blocks, or prompt/response pairs.

``text_corpus`` reads one ``.txt`` file (or every ``.txt`` file of a folder, in name order, joined by a blank line)
and splits the *text* into contiguous train / validation / test parts, in that order (the test part is the end of
the text), so no block of the test text overlaps a training block. A tokenizer (``char`` by default, case kept) is
learnt from the training part only; every part becomes blocks of ``context`` input tokens, each followed by its
next tokens (stride ``context``: every training token is predicted once per epoch).

``prompt_response`` reads JSON lines ``{"prompt": ..., "response": ...}``: each sample is the prompt, the response
and the end-of-text token ``[CLS]`` (id 2); only the response and the end token are scored, and the splits are drawn
at random (seeded), or the test split is ``test_path``'s.

Both give int64 splits ``x`` (N, T), ``y`` (N, T) with -1 on unscored positions, ``mask`` (N, T), and an InputSpec
with ``task="causal_lm"`` whose classes are the vocabulary.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tinykd.data.registry import register_dataset
from tinykd.data.spec import DataBundle, InputSpec, Split
from tinykd.data.text import _decode
from tinykd.data.tokenize import CLS, LOSSLESS, TextTokenizer, check_settings
from tinykd.errors import DataError

EOT = CLS  # the end-of-text token of language-model data: [CLS], id 2 in every tinykd vocabulary
MAX_CONTEXT = 8192


@dataclass
class Corpus:
    """What a language-model reader returns: one text (split contiguously) or prompt/response pairs per part."""

    text: str | None = None
    pairs: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # "train" (and "test") -> pairs
    files: list[str] = field(default_factory=list)


def _check_lm_options(tokenizer: object, vocab_size: object, lowercase: object, context: object) -> None:
    if not isinstance(tokenizer, TextTokenizer):
        check_settings(tokenizer, vocab_size, lowercase)
    kind = tokenizer.kind if isinstance(tokenizer, TextTokenizer) else tokenizer
    if kind not in LOSSLESS:
        raise DataError(f"option tokenizer {kind!r} drops the text's whitespace, so a language model trained on its "
                        "ids could never write text back", "set tokenizer to char or byte_bpe (GPT-2's byte-level BPE, "
                        "e.g. with vocab_size: 1024)")
    if isinstance(context, bool) or not isinstance(context, int) or not 2 <= context <= MAX_CONTEXT:
        raise DataError(f"option context must be an integer from 2 to {MAX_CONTEXT} tokens, got {context!r}",
                        "set context to e.g. 128 (the tokens a block holds: the model's context window)")


def _txt_files(path: Path) -> list[Path]:
    files = sorted(path.glob("*.txt")) if path.is_dir() else [path]
    if not files:
        raise DataError("the folder holds no .txt file", "give a .txt file, or a folder of them", where=str(path))
    return files


@register_dataset("text_corpus", needs_path=True, task="causal_lm",
                  description="a plain-text corpus (a .txt file or a folder of them) for a causal language model")
def text_corpus(path: Path, *, tokenizer: str | TextTokenizer = "char", vocab_size: int = 256, lowercase: bool = False,
                context: int = 128, tokenizer_path: Path | None = None) -> Corpus:
    _check_lm_options(tokenizer, vocab_size, lowercase, context)
    files = _txt_files(path)
    text = "\n\n".join(_decode(f) for f in files)
    if not text.strip():
        raise DataError("the corpus is empty", "give a text file with the training text", where=str(path))
    return Corpus(text=text, files=[str(f) for f in files])


def read_pairs(file: Path, *, example: str = '{"prompt": "2+3=", "response": "5"}', empty_responses: bool = False,
               allow_none: bool = False) -> list[tuple[str, str]]:
    """The (prompt, response) pairs of a JSON-lines file of ``{"prompt", "response"}`` objects; a line that is not
    one is an error naming it, as are (unless allowed) an empty response and a file without pairs."""
    out = []
    for line_no, line in enumerate(_decode(file).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as err:
            raise DataError(f"line {line_no} is not JSON ({err})", "write one JSON object per line",
                            where=str(file)) from None
        if not isinstance(row, dict) or not all(isinstance(row.get(k), str) for k in ("prompt", "response")):
            raise DataError(f"line {line_no} needs string fields \"prompt\" and \"response\"",
                            f"write lines like {example}", where=str(file))
        if not row["response"] and not empty_responses:
            raise DataError(f"line {line_no} has an empty response", "give every prompt its response",
                            where=str(file))
        out.append((row["prompt"], row["response"]))
    if not out and not allow_none:
        raise DataError("the file holds no prompt/response pairs", "write one JSON object per line", where=str(file))
    return out


@register_dataset("prompt_response", needs_path=True, task="causal_lm",
                  description="JSON lines of {prompt, response} pairs for a causal language model (the response scored)")
def prompt_response(path: Path, *, tokenizer: str | TextTokenizer = "char", vocab_size: int = 256,
                    lowercase: bool = False, context: int = 128, tokenizer_path: Path | None = None,
                    test_path: Path | None = None) -> Corpus:
    _check_lm_options(tokenizer, vocab_size, lowercase, context)
    parts = {"train": read_pairs(path)}
    if test_path is not None:
        parts["test"] = read_pairs(test_path)
    return Corpus(pairs=parts, files=[str(path)] + ([str(test_path)] if test_path else []))


# ---------- splits and blocks, run by load_dataset ----------

def _blocks(ids: np.ndarray, context: int) -> Split:
    """Blocks of ``context`` inputs and their next tokens, stride ``context`` (a last partial block is dropped)."""
    n = (len(ids) - 1) // context
    x = np.stack([ids[i * context:(i + 1) * context] for i in range(n)]) if n else np.zeros((0, context), np.int64)
    y = np.stack([ids[i * context + 1:(i + 1) * context + 1] for i in range(n)]) if n else x.copy()
    x, y = torch.from_numpy(x.astype(np.int64)), torch.from_numpy(y.astype(np.int64))
    return Split(x, y, torch.ones_like(x))


def _sequences(pairs: list[tuple[str, str]], tokenizer: TextTokenizer, context: int) -> tuple[Split, int]:
    """Prompt + response + end-of-text of each pair, right-padded to the longest (at most ``context`` inputs); only
    the response and the end token are scored. Also the number of samples cut at ``context``."""
    prompts = tokenizer._pieces([p for p, _ in pairs])
    responses = tokenizer._pieces([r for _, r in pairs])
    rows, cut = [], 0
    for p, r in zip(prompts, responses):
        seq = [*p, *r, EOT]
        cut += len(seq) - 1 > context
        seq = seq[:context + 1]
        rows.append((seq, len(p)))
    width = max(len(s) - 1 for s, _ in rows)
    x = torch.zeros(len(rows), width, dtype=torch.long)
    y = torch.full((len(rows), width), -1, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, (seq, n_prompt) in enumerate(rows):
        t = torch.tensor(seq)
        x[i, :len(seq) - 1], mask[i, :len(seq) - 1] = t[:-1], 1
        y[i, :len(seq) - 1] = t[1:]
        y[i, :max(0, n_prompt - 1)] = -1  # positions that predict prompt tokens are not scored
    return Split(x, y, mask), cut


def _limit(split: Split, n: int | None) -> Split:
    return split if n is None or n >= len(split) else split.take(torch.arange(max(1, n)))


def corpus_bundle(name: str, corpus: Corpus, resolved: Path | None, options: dict[str, Any], *, seed: int,
                  val_fraction: float, test_fraction: float, limit: int | None) -> DataBundle:
    """The DataBundle of a language-model reader (see the module docstring); ``limit`` caps the blocks (or pairs)
    used in all, each split keeping its share."""
    context = options["context"]
    given = options["tokenizer"]
    if options.get("tokenizer_path") is not None:
        given = TextTokenizer.load(options["tokenizer_path"])
        _check_lm_options(given, options["vocab_size"], options["lowercase"], context)
    fractions = {"train": 1.0 - val_fraction - test_fraction, "val": val_fraction, "test": test_fraction}
    if fractions["train"] <= 0:
        raise DataError(f"val_fraction {val_fraction} + test_fraction {test_fraction} leave no training text",
                        "keep their sum below 1, e.g. 0.05 and 0.05")
    notes: list[str] = []
    if corpus.text is not None:
        text = corpus.text
        a = int(len(text) * fractions["train"])
        b = a + int(len(text) * val_fraction)
        texts = {"train": text[:a], "val": text[a:b], "test": text[b:]}
        tokenizer = given if isinstance(given, TextTokenizer) else TextTokenizer.train(
            [texts["train"]], given, options["vocab_size"], options["lowercase"])
        splits = {k: _blocks(np.array(tokenizer._pieces([t])[0], dtype=np.int64), context) for k, t in texts.items()}
        made = {"train": f"the first {fractions['train']:.0%} of the text", "val": f"the next {val_fraction:.0%}",
                "test": f"the last {test_fraction:.0%} (contiguous parts; blocks of {context} tokens)"}
        sample_texts = {"test": [texts["test"]]}
    else:
        pairs = corpus.pairs
        rng = np.random.default_rng(seed)
        train = [pairs["train"][i] for i in rng.permutation(len(pairs["train"]))]
        n_val = int(round(len(train) * val_fraction))
        if "test" in pairs:
            parts = {"train": train[n_val:], "val": train[:n_val], "test": pairs["test"]}
            notes.append(f"test_fraction {test_fraction}: the test split is the data's own")
        else:
            n_test = max(1, int(round(len(train) * test_fraction)))
            parts = {"train": train[n_val + n_test:], "val": train[:n_val], "test": train[n_val:n_val + n_test]}
        tokenizer = given if isinstance(given, TextTokenizer) else TextTokenizer.train(
            [p + r for p, r in parts["train"]], given, options["vocab_size"], options["lowercase"])
        splits, cut = {}, 0
        for k, v in parts.items():
            splits[k], c = _sequences(v, tokenizer, context) if v else (Split(torch.zeros(0, 1, dtype=torch.long),
                                                                              torch.zeros(0, 1, dtype=torch.long),
                                                                              torch.zeros(0, 1, dtype=torch.long)), 0)
            cut += c
        if cut:
            notes.append(f"{cut} samples are longer than the context of {context} tokens and were cut")
        made = {k: f"{len(v):,} prompt/response pairs" for k, v in parts.items()}
        sample_texts = {"test": [p for p, _ in parts["test"]]}
    if limit is not None:
        total = sum(len(s) for s in splits.values())
        splits = {k: _limit(s, int(round(limit * len(s) / max(1, total)))) for k, s in splits.items()}
    for k in ("train", "val", "test"):
        if len(splits[k]) == 0 and (k == "train" or fractions[k] > 0):
            raise DataError(f"the {k} split holds no block of {context + 1} tokens",
                            "use more text, a shorter context, or a larger fraction for that split", where=str(resolved))
    vocab = tokenizer.vocab_size
    spec = InputSpec((context,), vocab, "text", tuple(tokenizer.vocab), vocab, task="causal_lm")
    tokens = {k: int((s.y >= 0).sum()) for k, s in splits.items()}
    info = {"dataset": name, "path": str(resolved) if resolved else None, "files": corpus.files,
            "options": {k: str(v) if isinstance(v, (Path, TextTokenizer)) else v for k, v in options.items()},
            "seed": seed, "splits": made, "not_applied": notes, "limit": limit,
            "sizes": {k: len(s) for k, s in splits.items()}, "normalize": None,
            "text": {"tokenizer": tokenizer.kind, "vocab_size": vocab, "max_length": context, "context": context,
                     "lowercase": tokenizer.lowercase, "fingerprint": tokenizer.fingerprint(), "scored_tokens": tokens}}
    return DataBundle(name=f"{name}:{resolved.name}" if resolved else name, spec=spec, info=info, tokenizer=tokenizer,
                      texts=sample_texts, **splits)
