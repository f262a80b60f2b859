"""Teacher-output cache: the teacher's logits and captured features, computed once per training sample and kept
in memory-mapped ``.npy`` files, are reused across epochs and across runs.

The store's folder is named by a key, the hash of the teacher (architecture, every weight and buffer), of the
training data (the bytes of the input and label tensors) and of the preprocessing. Changing any of them gives a
new key, so stale outputs are never served (and, by default, the old folders of that cache name are removed).
A sample is looked up by its dataset index; samples without one (index -1: mixup, synthetic or augmented inputs,
whose values change every epoch) cannot be cached, and the teacher runs live on them.

Under several processes (torchrun) the store is filled once, by rank 0, over the whole training split before
training; the other ranks wait, then only read it.

    cache = TeacherCache(teacher, "runs/cache", preprocessing=data.info["normalize"])
    Trainer(student, terms, cfg, teacher=cache, ...).fit(data.train, data.val)
"""
from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from numpy.lib.format import open_memmap
from rich.console import Console
from torch import nn

from .. import distributed as dist
from ..data.spec import Split
from ..errors import TrainingError
from ..inference import module_device
from ..io import read_json, write_json
from ..tasks import Classification
from ..types import Batch, Outputs
from .sources import TeacherRun, TeacherSource, as_teacher_source


def data_fingerprint(split: Split) -> str:
    """sha256 of the training inputs, labels and padding mask (dtype, shape and bytes of each tensor)."""
    h = hashlib.sha256()
    for t in (split.x, split.y) + (() if split.mask is None else (split.mask,)):
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _file_name(field: str) -> str:
    """A file-safe name for a field ("logits", or a module path such as "layer1.0.conv1")."""
    return re.sub(r"[^\w.-]", "_", field)


class _Store:
    """Per field (logits, each feature path) an (N, *shape) memory-mapped array and an (N,) 'filled' flag array.
    A store that is not ``writable`` (on a rank other than 0) only reads what is on disk."""

    def __init__(self, folder: Path, num_samples: int, dtype: str, key_parts: dict, writable: bool = True):
        self.folder, self.num_samples, self.dtype, self.writable = folder, num_samples, np.dtype(dtype), writable
        if writable:
            folder.mkdir(parents=True, exist_ok=True)
        manifest = folder / "manifest.json"
        self.manifest = read_json(manifest) if manifest.is_file() else {}
        if self.manifest.get("num_samples") != num_samples or self.manifest.get("dtype") != self.dtype.name:
            self.manifest = {"num_samples": num_samples, "dtype": self.dtype.name, "key": key_parts, "fields": {}}
        self.arrays: dict[str, tuple[np.memmap, np.memmap]] = {}

    def _field(self, name: str, shape: tuple[int, ...] | None = None) -> tuple[np.memmap, np.memmap] | None:
        """The (values, filled) arrays of ``name``; created (empty) when ``shape`` is given and none fits."""
        if name in self.arrays and (shape is None or self.arrays[name][0].shape[1:] == shape):
            return self.arrays[name]
        stem = self.folder / _file_name(name)
        values_path, filled_path = stem.with_name(stem.name + ".npy"), stem.with_name(stem.name + ".filled.npy")
        known = self.manifest["fields"].get(name)
        on_disk = known is not None and values_path.is_file() and filled_path.is_file()
        if on_disk and (shape is None or tuple(known) == shape):
            mode = "r+" if self.writable else "r"
            self.arrays[name] = (open_memmap(values_path, mode=mode), open_memmap(filled_path, mode=mode))
        elif shape is not None and self.writable:
            values = open_memmap(values_path, mode="w+", dtype=self.dtype, shape=(self.num_samples, *shape))
            filled = open_memmap(filled_path, mode="w+", dtype=np.uint8, shape=(self.num_samples,))
            self.arrays[name] = (values, filled)
            self.manifest["fields"][name] = list(shape)
        else:
            return None
        return self.arrays[name]

    def filled(self, fields: Sequence[str], rows: np.ndarray) -> np.ndarray:
        """Whether every field is stored for each row, (len(rows),) bool."""
        ok = np.ones(len(rows), dtype=bool)
        for name in fields:
            arrays = self._field(name)
            if arrays is None:
                return np.zeros(len(rows), dtype=bool)
            ok &= arrays[1][rows].astype(bool)
        return ok

    def count(self, name: str = "logits") -> int:
        arrays = self._field(name)
        return int(arrays[1].sum()) if arrays is not None else 0

    def get(self, fields: Sequence[str], rows: np.ndarray) -> dict[str, torch.Tensor]:
        return {name: torch.from_numpy(np.asarray(self._field(name)[0][rows])).float() for name in fields}

    def put(self, values: dict[str, torch.Tensor], rows: np.ndarray) -> None:
        for name, value in values.items():
            data, filled = self._field(name, tuple(value.shape[1:]))
            data[rows] = value.detach().cpu().numpy().astype(self.dtype, copy=False)
            filled[rows] = 1  # after the values: a flag never marks a row whose values were not written

    def flush(self) -> None:
        if not self.writable:
            return
        for data, filled in self.arrays.values():
            data.flush()
            filled.flush()
        write_json(self.folder / "manifest.json", self.manifest)


def cache_state(stored: int, total: int) -> str:
    """What the store holds before training, worded so an empty store (the normal first run) reads as a plan."""
    if stored == 0:
        return f"empty; the first epoch computes and stores the teacher's outputs for all {total:,} training samples"
    if stored >= total:
        return f"the teacher's outputs for all {total:,} training samples stored by an earlier run, served from it"
    return (f"{stored:,} of {total:,} training samples stored by an earlier run; the first epoch computes the "
            f"other {total - stored:,}")


class TeacherCache(TeacherSource):
    """Serves a teacher's outputs from a memory-mapped store keyed by teacher, data and preprocessing.

    ``teacher`` is a module or any TeacherSource (an ensemble is cached as one teacher). ``preprocessing`` is
    anything JSON-serialisable that describes how inputs were made (normalisation statistics, a front-end's
    settings); it is part of the key. ``dtype`` "float16" halves the disk and memory use, at a small rounding
    of the served values. ``stats`` counts samples served from the store (hits), computed and stored, and run
    live because they have no index.
    """

    def __init__(self, teacher: nn.Module | TeacherSource, cache_dir: str | Path, *, preprocessing: object = None,
                 name: str = "teacher", dtype: str = "float32", prune: bool = True):
        if dtype not in ("float32", "float16"):
            raise TrainingError(f"teacher cache dtype must be float32 or float16, got {dtype!r}", "use dtype='float32'")
        self.inner = as_teacher_source(teacher)
        self.module = self.inner.module
        self.cache_dir, self.name, self.dtype, self.prune = Path(cache_dir), name, dtype, prune
        self.preprocessing = preprocessing
        self.store: _Store | None = None
        self.train: Split | None = None
        self.folder: Path | None = None
        self.console = Console(quiet=True)
        self.stats = {"hits": 0, "computed": 0, "live": 0}
        self._told_live = False

    def key_parts(self, train: Split) -> dict[str, str]:
        prep = json.dumps(self.preprocessing, sort_keys=True, default=str)
        return {"teacher": self.inner.fingerprint(), "data": data_fingerprint(train),
                "preprocessing": hashlib.sha256(prep.encode()).hexdigest()}

    def fingerprint(self) -> str:
        return self.inner.fingerprint()

    def to(self, device: torch.device) -> TeacherCache:
        self.inner.to(device)  # the stored outputs stay on the CPU; the trainer moves each batch's
        return self

    def prepare(self, train: Split, console: Console) -> None:
        self.inner.prepare(train, console)
        self.console = console
        parts = self.key_parts(train)
        key = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()
        self.folder = self.cache_dir / f"{self.name}-{key[:20]}"
        if self.prune and self.cache_dir.is_dir() and dist.is_main():
            for stale in self.cache_dir.glob(f"{self.name}-*"):
                if stale != self.folder and (stale / "manifest.json").is_file():
                    shutil.rmtree(stale)  # outputs of another teacher, data or preprocessing: never valid again
        self.train = train
        self.store = _Store(self.folder, len(train), self.dtype, parts, writable=dist.is_main())
        console.print(f"[dim]teacher cache {self.folder}: {cache_state(self.store.count(), len(train))}[/]")

    @contextmanager
    def open(self, paths: Sequence[str]) -> Iterator[TeacherRun]:
        if self.store is None:
            raise TrainingError("the teacher cache was used before prepare()", "pass it to Trainer(teacher=...)")
        fields = ["logits", *paths]
        with self.inner.open(paths) as live:
            try:
                run = lambda batch: self._outputs(batch, fields, live)  # noqa: E731
                if dist.active():
                    self._fill(fields, run)
                yield run
            finally:
                self.store.flush()

    def _fill(self, fields: list[str], run: TeacherRun, batch_size: int = 256) -> None:
        """Several processes: rank 0 computes every row the store lacks, in one pass over the training split, and
        writes it; the other ranks wait, then re-read the store (so the teacher runs once per sample in all)."""
        with dist.together():
            if dist.is_main():
                rows = np.flatnonzero(~self.store.filled(fields, np.arange(len(self.train))))
                device = module_device(self.module)
                with torch.no_grad():
                    for i in range(0, len(rows), batch_size):
                        idx = torch.from_numpy(rows[i:i + batch_size])
                        run(Classification().collate(self.train, idx).to(device))
                self.store.flush()
        if not dist.is_main():
            self.store = _Store(self.folder, len(self.train), self.dtype, self.store.manifest.get("key", {}),
                                writable=False)

    def _outputs(self, batch: Batch, fields: list[str], live: TeacherRun) -> Outputs:
        index = batch.index.cpu().numpy()
        indexed = index >= 0
        hit = np.zeros(len(index), dtype=bool)
        hit[indexed] = self.store.filled(fields, index[indexed])
        miss = np.flatnonzero(~hit)
        values: dict[str, torch.Tensor] = {}
        if len(miss):
            sub = torch.from_numpy(miss)
            out = live(batch.take(sub))
            computed = {"logits": out.logits, **{p: out.features[p] for p in fields[1:]}}
            store = indexed[miss] & self.store.writable  # a rank other than 0 never writes
            if store.any():
                self.store.put({k: v[torch.from_numpy(store)] for k, v in computed.items()}, index[miss][store])
            self.stats["computed"] += int(store.sum())
            self.stats["live"] += int((~store).sum())
            if not store.all() and not self._told_live:
                self._told_live = True
                self.console.print(f"[yellow]teacher cache: {int((~store).sum())} of {len(index)} samples in a batch "
                                   "have no dataset index (mixup, synthetic or augmented inputs); the teacher runs "
                                   "live on those every epoch[/]")
            values = {k: v.new_empty((len(index), *v.shape[1:])) for k, v in computed.items()}
            for k, v in computed.items():
                values[k][sub] = v
        hits = np.flatnonzero(hit)
        if len(hits):
            stored = self.store.get(fields, index[hits])
            if not values:
                values = stored
            else:
                for k, v in stored.items():
                    values[k][torch.from_numpy(hits).to(values[k].device)] = v.to(values[k].device, values[k].dtype)
            self.stats["hits"] += len(hits)
        logits = values.pop("logits")
        return Outputs(logits, values)
