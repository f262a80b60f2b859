"""The one YAML reader of recipes and overrides: ``yaml.safe_load`` semantics, bounded and strict.

Safe tags only (``!!python`` and other object tags are refused, as by ``yaml.safe_load``). On top of that:
a document whose aliases would expand to more than ``MAX_NODES`` values (a "billion laughs" bomb of a few
hundred bytes), a self-referencing alias, nesting deeper than ``MAX_DEPTH``, and a key written twice in one
mapping are errors instead of a hang, a crash or a silent "last one wins".
"""
from __future__ import annotations

import reprlib
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, SequenceNode

from .errors import RecipeError

MAX_NODES = 20_000  # values after alias expansion; the largest bundled recipe has a few hundred
MAX_DEPTH = 64  # nesting of sections and lists; recipes nest about six deep
_SYNTAX_FIX = "fix the YAML syntax (indentation, colons, quotes); tags like !!python are refused"
_MERGE = "tag:yaml.org,2002:merge"


class _Refused(yaml.YAMLError):
    """A document that is valid YAML but not an acceptable recipe (too large, too deep, a duplicate key)."""

    def __init__(self, problem: str, mark, fix: str):
        super().__init__(problem)
        self.problem, self.problem_mark, self.fix = problem, mark, fix


def _expanded_size(root: Node) -> tuple[int, int]:
    """(number of values, depth) of the document once every alias is expanded, without expanding it.

    Aliases share their node, so sizes are memoised per node (a DAG walk); a node met again while it is still
    being walked is an alias that contains itself."""
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    open_: set[int] = set()
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        children = _children(node)
        if done:
            open_.discard(key)
            size[key] = 1 + sum(size[id(c)] for c in children)
            depth[key] = 1 + max((depth[id(c)] for c in children), default=0)
            if size[key] > MAX_NODES:
                raise _Refused(f"its aliases expand to more than {MAX_NODES:,} values", node.start_mark,
                               "write the values out; a recipe needs no alias that multiplies other aliases")
            if depth[key] > MAX_DEPTH:
                raise _Refused(f"it nests more than {MAX_DEPTH} levels deep", node.start_mark,
                               f"write at most {MAX_DEPTH} levels of nested sections and lists")
            continue
        if key in size:
            continue
        if key in open_:
            raise _Refused("an alias refers to the value that contains it (a recursive alias)", node.start_mark,
                           "replace the alias by the value it should stand for")
        open_.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in children if id(c) not in size)
    return size[id(root)], depth[id(root)]


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [n for pair in node.value for n in pair]
    return []


class _Loader(yaml.SafeLoader):
    """SafeLoader that checks the composed document before building any Python value from it."""

    def compose_document(self):
        node = super().compose_document()
        _expanded_size(node)
        return node

    def construct_mapping(self, node, deep=False):
        if isinstance(node, MappingNode):
            seen: dict[Any, Any] = {}
            for key_node, _ in node.value:
                if key_node.tag == _MERGE:
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node.start_mark)
                except TypeError:  # an unhashable key: the base class explains it
                    continue
                if first is not key_node.start_mark:
                    raise _Refused(f"key {short_repr(key)} appears twice in one mapping (first at line "
                                   f"{first.line + 1})", key_node.start_mark,
                                   "keep one of the two (YAML would silently use the last)")
        return super().construct_mapping(node, deep)


def load_yaml(text: str, source: str) -> Any:
    """The value of the YAML document ``text``; a RecipeError naming ``source`` (a file, an override) and the
    line when it is not valid or not acceptable YAML."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 (_Loader is a SafeLoader)
    except RecursionError:
        raise RecipeError(f"{source} is not acceptable YAML: it nests too deeply to read",
                          f"write at most {MAX_DEPTH} levels of nested sections and lists") from None
    except _Refused as exc:
        raise RecipeError(f"{source} is not acceptable YAML{_at(exc)}: {exc.problem}", exc.fix) from None
    except yaml.YAMLError as exc:
        raise RecipeError(f"{source} is not valid YAML{_at(exc)}: {getattr(exc, 'problem', None) or exc}",
                          _SYNTAX_FIX) from None


def _at(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    return f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""


_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxdict, _SHORT.maxtuple, _SHORT.maxset = 2, 4, 4, 4, 4
_SHORT.maxstring, _SHORT.maxother, _SHORT.maxlong = 60, 60, 40


def short_repr(value: Any, limit: int = 120) -> str:
    """``repr(value)`` cut to a readable length, whatever the size or depth of ``value``."""
    text = _SHORT.repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."
