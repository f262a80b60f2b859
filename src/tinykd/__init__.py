"""tinykd: distil large neural networks into small ones for edge hardware, and measure the result."""
from .errors import TinyKDError
from .recipe import Recipe, default_recipe_path, load_recipe
from .version import __version__


def resolve_recipe(recipe=None, overrides=()) -> Recipe:
    """The Recipe ``run`` uses: a Recipe as given, a path or dict loaded with ``overrides`` on top, and for None
    the bundled default recipe with them, as ``tinykd run`` does (not the bare field defaults)."""
    if isinstance(recipe, Recipe):
        return recipe
    return load_recipe(default_recipe_path() if recipe is None else recipe, overrides)


def run(recipe=None, overrides=(), **kwargs):
    """Run a recipe (a path, a dict, a Recipe or None for the bundled default) and return a RunResult."""
    from .pipeline import run as _run

    return _run(resolve_recipe(recipe, overrides), **kwargs)


__all__ = ["Recipe", "TinyKDError", "load_recipe", "resolve_recipe", "run", "__version__"]
