"""tinykd: distil large neural networks into small ones for edge hardware, and measure the result."""
__version__ = "0.1.0"

from .errors import TinyKDError  # noqa: E402
from .recipe import Recipe, load_recipe  # noqa: E402


def run(recipe=None, overrides=(), **kwargs):
    """Run a recipe (a path, a dict, a Recipe or None for the default) and return a RunResult."""
    from .pipeline import run as _run

    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe, overrides)
    return _run(recipe, **kwargs)


__all__ = ["Recipe", "TinyKDError", "load_recipe", "run", "__version__"]
