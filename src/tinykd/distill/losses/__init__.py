"""Loss terms by name. Importing this package registers every built-in term."""
from . import adversarial, feature, relation, response  # noqa: F401  (register the built-in terms)
from .base import LOSSES, Batch, LossTerm, Params, SetupContext, build_loss, describe_losses, register_loss

__all__ = ["LOSSES", "Batch", "LossTerm", "Params", "SetupContext", "build_loss", "describe_losses", "register_loss"]

# The schemes' terms (dml, peer_ensemble, byot, pskd, multi_hint) register when their package is imported;
# it imports this package's names above, so it comes last.
from .. import schemes  # noqa: E402,F401
