"""Loss terms by name. Importing this package registers every built-in term."""
from . import adversarial, feature, relation, response  # noqa: F401  (register the built-in terms)
from .base import LOSSES, Batch, LossTerm, Params, SetupContext, build_loss, describe_losses, register_loss

__all__ = ["LOSSES", "Batch", "LossTerm", "Params", "SetupContext", "build_loss", "describe_losses", "register_loss"]

