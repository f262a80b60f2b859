"""Automatic (student layer, teacher layer) pairs for feature and relation terms given ``pairs: auto``.

A network's *stages* are the outputs of its top-level blocks before the classifier: ``features.0``,
``features.1`` of the cnn, ``layer1..3`` of a ResNet, ``blocks.i`` of the DS-CNN. The i-th of n chosen
student stages is paired with the teacher stage at the same relative depth, preferring one whose output
has the same spatial size (so no pooling is needed).
"""
from __future__ import annotations

import math

from torch import nn

from ...errors import TinyKDError
from ..capture import list_layers

# A spatial-size mismatch costs as much as being a quarter of the network's depth away.
SPATIAL_PENALTY = 0.25
# Leaves whose outputs count as stages in a flat nn.Sequential that has no blocks.
_STAGE_LEAVES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Hardswish, nn.Tanh, nn.Sigmoid,
                 nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d)


def stages(model: nn.Module, in_shape: tuple[int, ...]) -> list[tuple[str, tuple[int, ...]]]:
    """(path, output shape without batch) of each stage of ``model``, in execution order.

    Starting from the top-level children, keep the blocks (modules with children) that run before the
    classifier and output a 2-D, 3-D or 4-D tensor; while there is only one such block (a container like
    ``features``), descend into it. A flat nn.Sequential falls back to its activation and pooling outputs.
    """
    layers = list_layers(model, in_shape)
    shapes = {path: shape for path, _, shape in layers if shape is not None}
    order = {path: i for i, path in enumerate(shapes)}  # list_layers lists executed modules first, in order
    modules = dict(model.named_modules())

    def is_block(path: str) -> bool:
        return next(modules[path].children(), None) is not None

    def children(path: str) -> list[str]:
        return [f"{path}.{name}" if path else name for name, _ in modules[path].named_children()]

    leaves = [p for p in shapes if not is_block(p)]
    if not leaves:
        return []
    classifier = leaves[-1].split(".")  # the last leaf to run produces the logits; it and its parents are the head
    head = {".".join(classifier[:i]) for i in range(1, len(classifier) + 1)}

    def usable(path: str) -> bool:
        return path in shapes and path not in head and 2 <= len(shapes[path]) <= 4

    found: list[str] = []
    frontier = children("")
    while True:
        blocks = sorted((p for p in frontier if is_block(p) and usable(p)), key=order.__getitem__)
        if not blocks:
            break
        found = blocks
        if len(blocks) > 1:
            break
        frontier = children(blocks[0])
    if not found:
        found = [p for p in leaves if usable(p) and isinstance(modules[p], _STAGE_LEAVES)]
    return [(p, shapes[p][1:]) for p in found]


def auto_pairs(student: nn.Module, teacher: nn.Module, in_shape: tuple[int, ...],
               n: int | None = None) -> list[tuple[str, str]]:
    """``n`` (default: the smaller stage count) (student path, teacher path) pairs matched by relative depth."""
    s_stages, t_stages = stages(student, in_shape), stages(teacher, in_shape)
    for role, found, model in (("student", s_stages, student), ("teacher", t_stages, teacher)):
        if not found:
            raise TinyKDError(f"pairs: auto found no stages in the {role} ({type(model).__name__}) to pair",
                              "name the layers, e.g. pairs: [[student_path, teacher_path]] "
                              "(`tinykd layers MODEL` lists the paths)")
    n = n or min(len(s_stages), len(t_stages))
    if n > len(s_stages):
        raise TinyKDError(f"pairs: auto was asked for {n} pairs but the student has {len(s_stages)} stages "
                          f"({', '.join(p for p, _ in s_stages)})", f"use num_pairs <= {len(s_stages)}")
    pairs = []
    # n student stages evenly spaced in depth, always ending at the deepest one.
    for j in (math.ceil((i + 1) * len(s_stages) / n) - 1 for i in range(n)):
        path, shape = s_stages[j]
        depth = (j + 1) / len(s_stages)

        def cost(k: int) -> tuple[float, float]:
            t_shape = t_stages[k][1]
            gap = abs((k + 1) / len(t_stages) - depth)
            penalty = 1.0 if len(t_shape) != len(shape) else SPATIAL_PENALTY if t_shape[1:] != shape[1:] else 0.0
            return gap + penalty, gap
        pairs.append((path, t_stages[min(range(len(t_stages)), key=cost)][0]))
    return pairs
