"""SCHEMES: every training scheme by its recipe name (``distill.scheme``), in registration order.

Imports nothing of tinykd, so the recipe can look a scheme's section checks up here without an import cycle;
importing ``tinykd.distill.schemes`` registers the built-in schemes (one class per file, ``@register_scheme``).
"""
from __future__ import annotations

SCHEMES: dict[str, type] = {}


def register_scheme(cls: type) -> type:
    """Class decorator adding a Scheme to the registry under ``cls.name``."""
    SCHEMES[cls.name] = cls
    return cls


def scheme_names() -> list[str]:
    """The registered schemes' names, in registration order."""
    return list(SCHEMES)


def schemes() -> list[type]:
    """The registered Scheme classes, in registration order."""
    return list(SCHEMES.values())


def get_scheme(name: str) -> type:
    """The Scheme class registered as ``name`` (a KeyError naming the valid ones otherwise: the recipe has
    already refused unknown names)."""
    try:
        return SCHEMES[name]
    except KeyError:
        raise KeyError(f"unknown scheme {name!r}; registered: {', '.join(SCHEMES)}") from None


def find_scheme(name: object) -> type | None:
    """The Scheme class registered as ``name``, or None (e.g. a metrics.json of an older or newer tinykd)."""
    return SCHEMES.get(name) if isinstance(name, str) else None
