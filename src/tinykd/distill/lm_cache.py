"""Teacher top-k cache for causal language models: per training sequence and position, the teacher's k most
likely next tokens and their log-probabilities, computed once and served as dense logits.

An N × T × V array of teacher logits is never stored (at V = 50k it is 200 kB per token in float32): each token
keeps k log-probabilities (float16) and their token ids (int16 when the vocabulary fits, else int32), k · (2 + 2)
or k · (2 + 4) bytes, in shards of ``shard_size`` sequences, one safetensors file each. ``prepare`` writes them in
one pass over the training split, the teacher in eval mode; a later run with the same teacher, data,
preprocessing and k finds them (the folder is named by that key, as ``TeacherCache``'s) and computes nothing.

A batch is served as dense logits (B, T, V) rebuilt so that their softmax is the truncated teacher distribution:
the stored log-probabilities at their ids and, at every other token, log((1 − Σ_top-k p)/(V − k)) (``uniform``:
the rest mass spread evenly) or ``ZERO_LOGIT`` (``zero``: the rest dropped, the top-k renormalised). Every loss
term then works unchanged (``topk_kl`` with the same k and missing_mass reads exactly the stored values).
At a temperature T ≠ 1 the top-k keep their relative values, while the filled tail is the T = 1 one, tempered.

    cache = LMTopKCache(teacher, "runs/cache", k=16, missing_mass="uniform")
    Trainer(student, terms, cfg, teacher=cache, task=CausalLM(), ...).fit(data.train, data.val)
"""
from __future__ import annotations

import hashlib
import json
import math
import shutil
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console
from safetensors import safe_open
from torch import nn

from ..data.spec import Split
from ..errors import TrainingError
from ..inference import module_device
from ..io import read_json, save_tensors, write_json
from ..types import Batch, Outputs
from .cache import data_fingerprint
from .sources import TeacherRun, TeacherSource, as_teacher_source

ZERO_LOGIT = -1e4  # a dropped token: exp underflows to 0 against any log-probability, yet stays finite in every term


def lm_collate(split: Split, idx: torch.Tensor) -> Batch:
    """The batch of sequences ``idx`` as a causal LM reads it: ``input_ids`` alone, the full block length."""
    x = split.x[idx]
    mask = split.mask[idx] if split.mask is not None else torch.ones_like(x)
    return Batch({"input_ids": x}, split.y[idx], idx, mask)


def teacher_topk(logits: torch.Tensor, k: int, id_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-probabilities float16, token ids) of the k most likely tokens at each position, (B, T, k) each."""
    log_p = F.log_softmax(logits.float(), dim=-1)
    values, ids = log_p.topk(k, dim=-1)
    return values.half(), ids.to(id_dtype)


def rebuild_logits(log_probs: torch.Tensor, ids: torch.Tensor, vocab: int, missing_mass: str) -> torch.Tensor:
    """Dense float32 logits (B, T, V) whose softmax is the truncated teacher distribution (see the module notes).

    The rest mass 1 − Σ_top-k p is read from the float16 values, so it carries their rounding; when it rounds to
    0 or below, the other tokens are dropped as with ``zero``."""
    lp = log_probs.float()
    k = lp.shape[-1]
    fill = torch.full((*lp.shape[:-1], 1), ZERO_LOGIT, dtype=torch.float32, device=lp.device)
    if missing_mass == "uniform" and vocab > k:
        rest = 1.0 - lp.exp().sum(-1, keepdim=True)
        fill = torch.where(rest > 0, torch.log(rest.clamp_min(1e-30) / (vocab - k)), fill)
    return fill.expand(*lp.shape[:-1], vocab).clone().scatter_(-1, ids.long(), lp)


class LMTopKCache(TeacherSource):
    """A TeacherSource serving a causal LM teacher's top-k next-token distribution from safetensors shards.

    ``teacher`` is a module or any TeacherSource. ``k`` tokens are kept per position; ``missing_mass`` ("uniform"
    or "zero") says how the served logits fill the other tokens. ``preprocessing`` (JSON-serialisable) is part of
    the key, as for ``TeacherCache``. ``collate`` cuts the prepare pass's batches of ``batch_size`` sequences from
    the split (default ``lm_collate``; a task's collate may trim the block, the rest of it is then stored as
    padding). The pass runs the teacher where it is (move it to a GPU first for a large split). Batches with
    index -1 run the live teacher, truncated alike, so a row reads the same either way.
    ``stats`` counts sequences served from the store (hits), computed into it, and run live. Teacher features
    are not stored: terms that read them need the live teacher.
    """

    def __init__(self, teacher: nn.Module | TeacherSource, cache_dir: str | Path, *, k: int = 16,
                 missing_mass: str = "uniform", preprocessing: object = None, name: str = "lm-topk",
                 shard_size: int = 1024, batch_size: int = 32, prune: bool = True,
                 collate: Callable[[Split, torch.Tensor], Batch] = lm_collate):
        if missing_mass not in ("uniform", "zero"):
            raise TrainingError(f"missing_mass must be 'uniform' or 'zero', got {missing_mass!r}",
                                "use missing_mass='uniform'")
        if k < 1 or shard_size < 1 or batch_size < 1:
            raise TrainingError(f"k, shard_size and batch_size must be positive (got {k}, {shard_size}, {batch_size})",
                                "e.g. k=16, shard_size=1024, batch_size=32")
        self.inner = as_teacher_source(teacher)
        self.module = self.inner.module
        self.cache_dir, self.name, self.k, self.missing_mass = Path(cache_dir), name, k, missing_mass
        self.preprocessing, self.shard_size, self.batch_size, self.prune = preprocessing, shard_size, batch_size, prune
        self.collate = collate
        self.folder: Path | None = None
        self.manifest: dict | None = None
        self.device = torch.device("cpu")
        self.console = Console(quiet=True)
        self.stats = {"hits": 0, "computed": 0, "live": 0}
        self._shards: dict[int, object] = {}  # open safetensors handles, by shard number

    # ----- the key and the store's layout -----
    def key_parts(self, train: Split) -> dict[str, str]:
        prep = json.dumps(self.preprocessing, sort_keys=True, default=str)
        return {"teacher": self.inner.fingerprint(), "data": data_fingerprint(train),
                "preprocessing": hashlib.sha256(prep.encode()).hexdigest(), "k": str(self.k)}

    def fingerprint(self) -> str:
        return self.inner.fingerprint()

    def to(self, device: torch.device) -> LMTopKCache:
        self.inner.to(device)
        self.device = torch.device(device)  # the dense logits are rebuilt there, from the compact stored rows
        return self

    @property
    def vocab(self) -> int:
        return self._prepared()["vocab"]

    @property
    def id_bytes(self) -> int:
        """2 (int16) when every token id fits, i.e. V ≤ 32768, else 4 (int32)."""
        return 2 if self.vocab <= 32768 else 4

    @property
    def bytes_per_token(self) -> int:
        """Stored bytes per position: k float16 log-probabilities and k token ids."""
        return self._prepared()["k"] * (2 + self.id_bytes)

    def shard_path(self, shard: int) -> Path:
        return self.folder / f"shard-{shard:05d}.safetensors"

    def _prepared(self) -> dict:
        if self.manifest is None or not self.manifest.get("complete"):
            raise TrainingError("the LM top-k cache was used before prepare()", "pass it to Trainer(teacher=...)")
        return self.manifest

    # ----- writing: one pass over the training split -----
    def prepare(self, train: Split, console: Console) -> None:
        self.inner.prepare(train, console)
        self.console = console
        parts = self.key_parts(train)
        key = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()
        self.folder = self.cache_dir / f"{self.name}-{key[:20]}"
        if self.prune and self.cache_dir.is_dir():
            for stale in self.cache_dir.glob(f"{self.name}-*"):
                if stale != self.folder and (stale / "manifest.json").is_file():
                    shutil.rmtree(stale)  # the top-k of another teacher, data, preprocessing or k
        self._shards.clear()
        manifest_path = self.folder / "manifest.json"
        known = read_json(manifest_path) if manifest_path.is_file() else {}
        layout = {"num_samples": len(train), "seq_len": int(train.x.shape[1]), "shard_size": self.shard_size}
        if known.get("complete") and all(known.get(k) == v for k, v in layout.items()):
            self.manifest = known
            console.print(f"[dim]LM top-k cache {self.folder}: the teacher's top-{known['k']} of all {len(train):,} "
                          f"training sequences stored by an earlier run, served from it[/]")
            return
        if known and any(known.get(k) != v for k, v in layout.items()):
            shutil.rmtree(self.folder)  # shards of another layout (shard_size): none can be kept
            known = {}
        self.folder.mkdir(parents=True, exist_ok=True)
        shards = math.ceil(len(train) / self.shard_size)
        todo = [s for s in range(shards) if not self._readable(s, layout, known)]
        console.print(f"[dim]LM top-k cache {self.folder}: computing the teacher's top-{self.k} for "
                      f"{sum(min(self.shard_size, len(train) - s * self.shard_size) for s in todo):,} of "
                      f"{len(train):,} training sequences ({len(todo)} of {shards} shards)[/]")
        module = self.module
        was_training = module.training
        module.eval()
        vocab = known.get("vocab")
        try:
            with torch.no_grad(), self.inner.open(()) as live:
                for shard in todo:
                    vocab = self._write_shard(shard, train, live, vocab)
                    # After every shard: an interrupted pass resumes from the shards already written.
                    write_json(manifest_path, self._manifest(layout, vocab, shards, parts, complete=False))
        finally:
            module.train(was_training)
        self.manifest = self._manifest(layout, vocab or 0, shards, parts, complete=True)
        write_json(manifest_path, self.manifest)

    def _manifest(self, layout: dict, vocab: int, shards: int, parts: dict, complete: bool) -> dict:
        return {**layout, "k": min(self.k, vocab) if vocab else self.k, "vocab": vocab, "shards": shards,
                "key": parts, "complete": complete}

    def _readable(self, shard: int, layout: dict, known: dict) -> bool:
        """Whether a shard written by an interrupted earlier pass of the same layout can be kept."""
        path = self.shard_path(shard)
        if not path.is_file() or known.get("vocab") is None or known.get("seq_len") != layout["seq_len"]:
            return False
        rows = min(self.shard_size, layout["num_samples"] - shard * self.shard_size)
        shape = [rows, layout["seq_len"], min(self.k, known["vocab"])]
        try:
            with safe_open(str(path), framework="pt") as f:
                return list(f.get_slice("log_probs").get_shape()) == shape
        except Exception:  # a damaged file is recomputed
            return False

    def _write_shard(self, shard: int, train: Split, live: TeacherRun, vocab: int | None) -> int:
        start, stop = shard * self.shard_size, min((shard + 1) * self.shard_size, len(train))
        seq_len = train.x.shape[1]
        log_probs = ids = None
        device = module_device(self.module)
        for lo in range(start, stop, self.batch_size):
            idx = torch.arange(lo, min(lo + self.batch_size, stop))
            logits = live(self.collate(train, idx).to(device)).logits  # (b, t, V), t ≤ seq_len
            if vocab is None:
                vocab = int(logits.shape[-1])
            if logits.dim() != 3 or logits.shape[-1] != vocab:
                raise TrainingError(f"the LM top-k cache needs teacher logits (B, T, {vocab}); "
                                    f"got {tuple(logits.shape)}", "use it with a causal language-model teacher")
            k = min(self.k, vocab)
            if log_probs is None:
                id_dtype = torch.int16 if vocab <= 32768 else torch.int32
                log_probs = torch.zeros(stop - start, seq_len, k, dtype=torch.float16)
                ids = torch.zeros(stop - start, seq_len, k, dtype=id_dtype)
            lp, top = teacher_topk(logits, k, ids.dtype)
            rows = slice(lo - start, lo - start + len(idx))
            log_probs[rows, :lp.shape[1]], ids[rows, :lp.shape[1]] = lp.cpu(), top.cpu()
            self.stats["computed"] += len(idx)
        save_tensors(self.shard_path(shard), {"log_probs": log_probs, "ids": ids})
        return vocab

    # ----- serving -----
    @contextmanager
    def open(self, paths: Sequence[str]) -> Iterator[TeacherRun]:
        self._prepared()
        if paths:
            raise TrainingError(f"the LM top-k cache stores no teacher features (asked for {', '.join(paths)})",
                                "use the live teacher (no cache) with terms that read teacher features")
        with self.inner.open(()) as live:
            yield lambda batch: self._outputs(batch, live)

    def _rows(self, index: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Stored (log_probs, ids) of the sequences ``index``, cut to the first ``length`` positions."""
        lps, ids = [], []
        for i in index.tolist():
            shard, row = divmod(i, self.shard_size)
            if shard not in self._shards:
                self._shards[shard] = safe_open(str(self.shard_path(shard)), framework="pt")
            f = self._shards[shard]
            lps.append(f.get_slice("log_probs")[row:row + 1, :length])
            ids.append(f.get_slice("ids")[row:row + 1, :length])
        return torch.cat(lps), torch.cat(ids)

    def _outputs(self, batch: Batch, live: TeacherRun) -> Outputs:
        m = self._prepared()
        index = batch.index.cpu()
        if bool((index >= m["num_samples"]).any()):
            raise TrainingError(f"sequence index {int(index.max())} is beyond the {m['num_samples']:,} stored ones",
                                "prepare the cache on the split the batches are cut from")
        length = batch.y.shape[1]
        stored = index >= 0
        device = self.device
        log_probs = torch.zeros(len(index), length, m["k"], dtype=torch.float16, device=device)
        ids = torch.zeros(len(index), length, m["k"], dtype=torch.int32, device=device)
        if stored.any():
            lp, top = self._rows(index[stored], length)
            log_probs[stored.to(device)], ids[stored.to(device)] = lp.to(device), top.to(device, torch.int32)
            self.stats["hits"] += int(stored.sum())
        if not stored.all():
            sub = torch.nonzero(~stored).flatten()
            logits = live(batch.take(sub.to(batch.index.device))).logits
            lp, top = teacher_topk(logits, m["k"], torch.int32)
            log_probs[sub.to(device)], ids[sub.to(device)] = lp.to(device), top.to(device)
            self.stats["live"] += len(sub)
        return Outputs(rebuild_logits(log_probs, ids, m["vocab"], self.missing_mass), {}, batch.mask)
