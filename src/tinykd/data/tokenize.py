"""``TextTokenizer``: sentences to token ids, learnt offline from the training texts and saved with the run as JSON.

Four kinds:

- ``wordpiece``: BERT's normalisation and pre-tokenisation, sub-words continued with ``##``;
- ``bpe``: byte-pair encoding (NFKC, words split on whitespace and punctuation; the whitespace is dropped);
- ``byte_bpe``: GPT-2's byte-level byte-pair encoding: the text's UTF-8 bytes as 256 base symbols, words keep their
  leading space, nothing is dropped, so ``decode(ids)`` gives the text back exactly (what a language model needs);
- ``char``: one token per character.

The sub-word kinds run Hugging Face ``tokenizers`` models, but their vocabulary is learnt here by a byte-pair merge
loop whose ties are broken by the token strings: the library's own trainers break count ties in hash order, so the
same texts could give a different vocabulary in another process. Ids: ``[PAD]`` 0, ``[UNK]`` 1, ``[CLS]`` 2 (first
token of every text), ``[SEP]`` 3 (last token, sub-word kinds only); then the characters, then the merges in order.
"""
from __future__ import annotations

import hashlib
import heapq
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from tinykd.errors import DataError

KINDS = ("wordpiece", "bpe", "byte_bpe", "char")
LOSSLESS = ("byte_bpe", "char")  # the kinds whose ids decode to the text itself (language models need one)
SPECIAL = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")
PAD, UNK, CLS, SEP = 0, 1, 2, 3
MIN_FREQUENCY = 2  # a pair seen once is not merged: it would only memorise a word
FORMAT = "tinykd.text_tokenizer"
PREFIX = "##"  # WordPiece's mark of a piece that continues a word


def _tokenizers():
    """The Hugging Face ``tokenizers`` package (the text extra), imported when a text dataset is read, so the core
    install needs it only for text."""
    try:
        import tokenizers
    except ImportError:
        raise DataError("text datasets need the Hugging Face tokenizers package, which is not installed",
                        "install the text extra: pip install 'tinykd[text]'") from None
    return tokenizers


def _normalizer(kind: str, lowercase: bool):
    normalizers = _tokenizers().normalizers
    if kind == "wordpiece":  # accents are stripped when lowercasing, as in BERT's uncased models
        return normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, lowercase=lowercase)
    if kind == "byte_bpe":  # the bytes as they are: decoding gives the text back
        return normalizers.Sequence([normalizers.Lowercase()] if lowercase else [])
    return normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()]) if lowercase else normalizers.NFKC()


def _pre_tokenizer(kind: str):
    pre_tokenizers = _tokenizers().pre_tokenizers
    if kind == "byte_bpe":
        return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    return pre_tokenizers.BertPreTokenizer() if kind == "wordpiece" else pre_tokenizers.Whitespace()


def _backend(kind: str, lowercase: bool, vocab: Sequence[str], merges: Sequence[tuple[str, str]]):
    """The Hugging Face tokenizer of a learnt vocabulary (special tokens are not matched in the text itself)."""
    models, Tokenizer = _tokenizers().models, _tokenizers().Tokenizer
    index = {token: i for i, token in enumerate(vocab)}
    if kind == "wordpiece":
        model = models.WordPiece(index, unk_token=SPECIAL[UNK], continuing_subword_prefix=PREFIX,
                                 max_input_chars_per_word=100)
    else:
        model = models.BPE(index, [tuple(m) for m in merges], unk_token=SPECIAL[UNK])
    backend = Tokenizer(model)
    backend.normalizer = _normalizer(kind, lowercase)
    backend.pre_tokenizer = _pre_tokenizer(kind)
    if kind == "byte_bpe":
        backend.decoder = _tokenizers().decoders.ByteLevel()
    return backend


def _word_counts(texts: Iterable[str], kind: str, lowercase: bool) -> Counter:
    """How often each pre-tokenised word occurs in ``texts``, after normalisation."""
    norm, pre = _normalizer(kind, lowercase), _pre_tokenizer(kind)
    return Counter(word for text in texts for word, _ in pre.pre_tokenize_str(norm.normalize_str(text)))


def learn_merges(word_counts: dict[str, int], vocab_size: int, prefix: str = "", alphabet: Iterable[str] = ()
                 ) -> tuple[list[str], list[tuple[str, str]]]:
    """Byte-pair encoding (Sennrich et al. 2016) on word counts: the vocabulary (special tokens, sorted characters,
    then each merge's token) and the merges in order. The most frequent adjacent pair is merged first; equal counts
    go to the smaller pair of strings, so the result depends on the counts alone. ``prefix`` marks the symbols that
    continue a word (WordPiece's ``##``); ``alphabet`` joins the base symbols even when unseen (byte-level BPE's 256
bytes). Stops at ``vocab_size`` tokens or when no pair occurs twice."""
    words = [[w[0]] + [prefix + c for c in w[1:]] for w in word_counts]
    counts = list(word_counts.values())
    vocab = list(SPECIAL) + sorted({s for w in words for s in w} | set(alphabet))
    known = set(vocab)
    pairs: Counter = Counter()
    where: dict[tuple[str, str], set[int]] = {}
    for i, (w, n) in enumerate(zip(words, counts)):
        for pair in zip(w, w[1:]):
            pairs[pair] += n
            where.setdefault(pair, set()).add(i)
    heap = [(-n, pair) for pair, n in pairs.items()]
    heapq.heapify(heap)
    merges: list[tuple[str, str]] = []
    while len(vocab) < vocab_size and heap:
        n, pair = heapq.heappop(heap)
        if -n != pairs[pair]:  # stale: the pair's count fell since it was pushed (counts only fall)
            if pairs[pair] >= MIN_FREQUENCY:
                heapq.heappush(heap, (-pairs[pair], pair))
            continue
        if -n < MIN_FREQUENCY:
            break
        a, b = pair
        token = a + (b[len(prefix):] if prefix else b)
        merges.append(pair)
        if token not in known:  # two merges can make one string ("a"+"bc", "ab"+"c"): one token
            vocab.append(token)
            known.add(token)
        fresh = set()
        for i in where.pop(pair):
            old, new = words[i], _merge(words[i], a, b, token)
            for p in zip(old, old[1:]):
                pairs[p] -= counts[i]
            for p in zip(new, new[1:]):
                pairs[p] += counts[i]
                where.setdefault(p, set()).add(i)
                if token in p:
                    fresh.add(p)
            words[i] = new
        del pairs[pair]
        for p in sorted(fresh):
            heapq.heappush(heap, (-pairs[p], p))
    return vocab, merges


def _merge(symbols: list[str], a: str, b: str, token: str) -> list[str]:
    """``symbols`` with every non-overlapping ``a b`` (left to right) replaced by ``token``."""
    out, i = [], 0
    while i < len(symbols):
        if i + 1 < len(symbols) and symbols[i] == a and symbols[i + 1] == b:
            out.append(token)
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return out


def _char_vocab(texts: Iterable[str], vocab_size: int, lowercase: bool) -> list[str]:
    """[PAD], [UNK], [CLS], then the most frequent characters (ties by code point) up to ``vocab_size`` tokens."""
    counts = Counter(c for text in texts for c in (text.lower() if lowercase else text))
    ranked = sorted(counts, key=lambda c: (-counts[c], c))[:max(vocab_size - 3, 0)]
    return list(SPECIAL[:3]) + sorted(ranked)


def check_settings(kind: object, vocab_size: object, lowercase: object, where: str = "option") -> None:
    """Reject an unknown kind, a vocabulary too small for the special tokens and a non-boolean ``lowercase``."""
    if kind not in KINDS:
        raise DataError(f"{where} tokenizer must be one of {', '.join(KINDS)}, got {kind!r}",
                        "set tokenizer to wordpiece (the default), bpe, byte_bpe or char")
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 8:
        raise DataError(f"{where} vocab_size must be an integer of at least 8, got {vocab_size!r}",
                        "set vocab_size to e.g. 8000 (wordpiece/bpe) or 256 (char)")
    if not isinstance(lowercase, bool):
        raise DataError(f"{where} lowercase must be true or false, got {lowercase!r}", "set lowercase: true")


def check_max_length(max_length: object, where: str = "option") -> None:
    """A maximum length must hold [CLS], one token and [SEP]."""
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 3:
        raise DataError(f"{where} max_length must be an integer of at least 3 tokens, got {max_length!r}",
                        "set max_length to e.g. 64 (longer texts are cut, shorter ones padded)")


class TextTokenizer:
    """A learnt vocabulary and the rules that split a text into it; ``encode`` gives padded id and mask arrays."""

    def __init__(self, kind: str, vocab: Sequence[str], merges: Sequence[tuple[str, str]] = (),
                 lowercase: bool = True, vocab_size_target: int | None = None):
        self.kind, self.lowercase = kind, lowercase
        self.vocab = list(vocab)
        self.merges = [tuple(m) for m in merges]
        self.vocab_size_target = vocab_size_target  # the vocab_size asked for; the vocabulary may be smaller
        if kind == "char":
            self._index = {c: i for i, c in enumerate(self.vocab)}
            self._backend = None
        else:
            self._backend = _backend(kind, lowercase, self.vocab, self.merges)

    @classmethod
    def train(cls, texts: Sequence[str], kind: str = "wordpiece", vocab_size: int = 8000,
              lowercase: bool = True) -> TextTokenizer:
        """Learn a vocabulary of at most ``vocab_size`` tokens from ``texts`` (the training texts only)."""
        check_settings(kind, vocab_size, lowercase, where="TextTokenizer.train:")
        if kind == "char":
            return cls(kind, _char_vocab(texts, vocab_size, lowercase), (), lowercase, vocab_size)
        prefix = PREFIX if kind == "wordpiece" else ""
        alphabet = _tokenizers().pre_tokenizers.ByteLevel.alphabet() if kind == "byte_bpe" else ()
        if kind == "byte_bpe" and vocab_size < len(SPECIAL) + len(alphabet):
            raise DataError(f"TextTokenizer.train: byte_bpe needs a vocab_size of at least {len(SPECIAL) + len(alphabet)} "
                            f"(4 special tokens and the 256 bytes), got {vocab_size}",
                            "set vocab_size to e.g. 1024, or use tokenizer: char")
        vocab, merges = learn_merges(_word_counts(texts, kind, lowercase), vocab_size, prefix, alphabet)
        return cls(kind, vocab, merges if kind in ("bpe", "byte_bpe") else (), lowercase, vocab_size)

    @property
    def vocab_size(self) -> int:
        """Number of token ids (special tokens included): an embedding table needs this many rows."""
        return len(self.vocab)

    def _pieces(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, without special tokens and untruncated."""
        if self._backend is None:
            return [[self._index.get(c, UNK) for c in (t.lower() if self.lowercase else t)] for t in texts]
        return [e.ids for e in self._backend.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        """The text of token ids, special tokens dropped: exact for ``char`` and ``byte_bpe``; ``wordpiece`` and
        ``bpe`` pieces are joined by spaces (their pre-tokenisation dropped the whitespace), WordPiece's ``##``
        continuations glued back."""
        special = 3 if self.kind == "char" else len(SPECIAL)  # char vocabularies have no [SEP]
        ids = [int(i) for i in ids if special <= int(i) < len(self.vocab)]
        if self.kind == "char":
            return "".join(self.vocab[i] for i in ids)
        if self.kind == "byte_bpe":
            return self._backend.decode(ids, skip_special_tokens=False)
        text = " ".join(self.vocab[i] for i in ids)
        return text.replace(" " + PREFIX, "") if self.kind == "wordpiece" else text

    def tokens(self, text: str) -> list[str]:
        """The tokens of one text as strings, [CLS] and [SEP] included: what a model sees, for reports."""
        ids = [CLS, *self._pieces([text])[0], *([] if self.kind == "char" else [SEP])]
        return [self.vocab[i] for i in ids]

    def encode_full(self, texts: Sequence[str], max_length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``encode``, plus each text's length in tokens before truncation (N,)."""
        check_max_length(max_length, where="encode:")
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise TypeError("encode takes a sequence of strings")
        pieces = self._pieces(texts)
        end = [] if self.kind == "char" else [SEP]
        keep = max_length - 1 - len(end)
        ids = np.zeros((len(pieces), max_length), dtype=np.int64)  # right padding with [PAD] = 0
        mask = np.zeros((len(pieces), max_length), dtype=np.int64)
        for i, p in enumerate(pieces):
            row = [CLS, *p[:keep], *end]
            ids[i, :len(row)] = row
            mask[i, :len(row)] = 1
        lengths = np.array([len(p) + 1 + len(end) for p in pieces], dtype=np.int64)
        return ids, mask, lengths

    def encode(self, texts: Sequence[str], max_length: int) -> tuple[np.ndarray, np.ndarray]:
        """Token ids and padding mask (int64, N x ``max_length``): [CLS], the text's tokens, [SEP] (sub-word kinds),
        then [PAD] = 0; a longer text is cut to ``max_length`` tokens (its [SEP] kept). Mask 1 marks a token."""
        ids, mask, _ = self.encode_full(texts, max_length)
        return ids, mask

    def to_dict(self) -> dict:
        return {"format": FORMAT, "version": 1, "kind": self.kind, "lowercase": self.lowercase,
                "vocab_size_target": self.vocab_size_target, "vocab": self.vocab,
                "merges": [list(m) for m in self.merges]}

    def fingerprint(self) -> str:
        """A short hash of the vocabulary and rules: equal fingerprints give equal ids."""
        text = json.dumps(self.to_dict(), sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]

    def save(self, path: str | Path) -> Path:
        """Write the tokenizer as one UTF-8 JSON file (no pickle); ``load`` gives identical ids."""
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), ensure_ascii=False), encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> TextTokenizer:
        """The tokenizer ``save`` wrote to ``path``."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as err:
            raise DataError(f"cannot read the tokenizer file ({err})",
                            "give a file written by TextTokenizer.save, or leave tokenizer_path out to learn one "
                            "from the training texts", where=str(path)) from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise DataError("not a tinykd tokenizer file (no \"format\": \"tinykd.text_tokenizer\")",
                            "give a file written by TextTokenizer.save", where=str(path))
        vocab = data.get("vocab")
        if (data.get("kind") not in KINDS or not isinstance(vocab, list) or vocab[:3] != list(SPECIAL[:3])
                or not isinstance(data.get("lowercase"), bool)):
            raise DataError("the tokenizer file is damaged (kind, lowercase or vocabulary missing)",
                            "write it again with TextTokenizer.save", where=str(path))
        return cls(data["kind"], vocab, [tuple(m) for m in data.get("merges", [])], data["lowercase"],
                   data.get("vocab_size_target"))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TextTokenizer) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"TextTokenizer({self.kind}, {self.vocab_size} tokens, lowercase={self.lowercase}, {self.fingerprint()})"
