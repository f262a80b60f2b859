"""Loss terms by name. Importing this package registers every built-in term."""
from . import response  # noqa: F401  (registers ce, kd)
from .base import LOSSES, Batch, LossTerm, Params, build_loss, describe_losses, register_loss

__all__ = ["LOSSES", "Batch", "LossTerm", "Params", "build_loss", "describe_losses", "register_loss"]
