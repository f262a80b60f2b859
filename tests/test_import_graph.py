"""The import structure: every subpackage imports on its own, and no tinykd modules import each other in a cycle
(imports inside functions count: a lazy import hides a cycle, it does not remove it)."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import tinykd

SRC = Path(tinykd.__file__).resolve().parent.parent


def modules() -> dict[str, tuple[Path, bool]]:
    """Every tinykd module by dotted name: (file, is it a package's __init__)."""
    found = {}
    for path in sorted((SRC / "tinykd").rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return found


def imports(name: str, mods: dict[str, tuple[Path, bool]]) -> set[str]:
    """The tinykd modules ``name`` imports anywhere in its file: ``from a import b`` means module a.b when there
    is one, else a. Importing a submodule also runs its parents' __init__, which is not counted as an edge."""
    path, is_package = mods[name]
    package = name if is_package else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in mods)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                if sub in mods:
                    found.add(sub)
                elif target in mods:
                    found.add(target)
    found.discard(name)
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle():
    mods = modules()
    graph = {m: imports(m, mods) for m in mods}
    assert "tinykd.distill.sources" in graph["tinykd.distill.cache"]  # the parser sees relative imports
    found = cycles(graph)
    assert not found, "import cycles among tinykd modules:\n" + "\n".join(
        f"  {len(c)} modules: " + "; ".join(f"{m} -> {', '.join(sorted(graph[m] & set(c)))}" for m in c)
        for c in found)


def test_cycle_finder_reports_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]


SUBPACKAGES = sorted(m for m, (_, is_package) in modules().items() if is_package) + ["tinykd.types"]


def test_every_subpackage_imports_alone():
    # One fresh interpreter per subpackage, so none relies on another having been imported first.
    def run(name: str) -> tuple[str, subprocess.CompletedProcess]:
        return name, subprocess.run([sys.executable, "-c", f"import {name}"], capture_output=True, text=True,
                                    env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(SRC)}, timeout=120)

    with ThreadPoolExecutor(max_workers=4) as pool:
        failed = [f"{name}:\n{proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}"
                  for name, proc in pool.map(run, SUBPACKAGES) if proc.returncode]
    assert not failed, "subpackages that fail to import alone:\n" + "\n".join(failed)


def test_types_imports_only_torch_and_the_standard_library():
    path, _ = modules()["tinykd.types"]
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert not node.level, "tinykd.types imports nothing of tinykd"
            roots.add(node.module.split(".")[0])
    assert roots - {"torch"} <= set(sys.stdlib_module_names), roots


@pytest.mark.parametrize("old, name", [("tinykd.distill.losses.base", "Batch"), ("tinykd.distill.losses", "Batch"),
                                       ("tinykd.distill.capture", "Outputs")])
def test_types_still_importable_from_their_old_modules(old, name):
    import importlib

    import tinykd.types

    assert getattr(importlib.import_module(old), name) is getattr(tinykd.types, name)
