"""The data of a run: the recipe's dataset loaded and split, and the checks of a dataset section."""
from __future__ import annotations

from pathlib import Path

from rich.console import Console

from ..data import load_dataset
from ..data.spec import DataBundle
from ..errors import DataError, TinyKDError
from ..recipe import Recipe


def check_source(name: str, path: str | None, options: dict, recipe: Recipe, where: str) -> None:
    """A dataset section (``data``, ``distill.transfer``) names a registered dataset with valid options, and its
    files exist; errors name the section."""
    from ..data.loader import resolve_path
    from ..data.registry import check_options, get_dataset

    try:
        entry = get_dataset(name)
        check_options(entry, options)
        if entry.needs_path and path is None:
            raise DataError(f"dataset '{name}' needs a path to its files", f"set {where}.path; {entry.description}")
        if not entry.needs_path and path is not None:
            raise DataError(f"dataset '{name}' is bundled and takes no path", f"remove {where}.path")
        if path is not None:
            resolve_path(path, recipe.base_dir)
    except TinyKDError as err:
        raise type(err)(err.what, err.fix, where=err.where or where) from None


def load_data(recipe: Recipe, console: Console | None = None, *, tokenizer_path: Path | None = None) -> DataBundle:
    """The recipe's dataset, split and standardised, with a line on where each split came from. Text data is
    tokenized by the tokenizer saved at ``tokenizer_path`` when given (a resumed run's), else by one learnt from
    the training texts."""
    console = console or Console(quiet=True)
    d = recipe.data
    options = dict(d.options) | ({"tokenizer_path": str(tokenizer_path)} if tokenizer_path is not None else {})
    with console.status(f"loading dataset {d.name}"):
        bundle = load_dataset(d.name, path=d.path, seed=recipe.seed, val_fraction=d.val_fraction,
                              test_fraction=d.test_fraction, normalize=d.normalize, limit=d.limit,
                              labelled=d.labelled, class_names=d.class_names, base_dir=recipe.base_dir, **options)
    unlabelled = "" if bundle.unlabelled is None else f" (+ {len(bundle.unlabelled)} unlabelled training inputs)"
    console.print(f"data: {bundle.name} {tuple(bundle.spec.shape)} × {bundle.spec.num_classes} classes — "
                  f"train {len(bundle.train)}{unlabelled}, val {len(bundle.val)}, test {len(bundle.test)}")
    for split, made in bundle.info.get("splits", {}).items():
        console.print(f"[dim]  {split}: {made}[/]")
    for note in bundle.info.get("not_applied", []):
        console.print(f"[dim]  not applied: {note}[/]")
    return bundle
