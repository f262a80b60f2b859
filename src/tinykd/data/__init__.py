"""Datasets for tinykd: bundled sets and readers of standard on-disk formats, all loaded as a DataBundle.

``load_dataset(name, path=..., **options)`` returns deterministic stratified train/val/test splits;
``list_datasets()`` names what is available; ``register_dataset`` adds a new source.
"""
from __future__ import annotations

# Importing the dataset modules registers their datasets.
from tinykd.data import arithmetic, bundled, corpus, csv_table, idx, image_folder, npz, wav_folder  # noqa: F401
from tinykd.data.audio import LogMelFrontEnd, log_mel
from tinykd.data.idx import read_idx
from tinykd.data.loader import load_dataset, resolve_path
from tinykd.data.registry import RawData, list_datasets, register_dataset
from tinykd.data.spec import DataBundle, InputSpec, Split

__all__ = ["DataBundle", "InputSpec", "LogMelFrontEnd", "RawData", "Split", "list_datasets", "load_dataset",
           "log_mel", "read_idx", "register_dataset", "resolve_path"]
