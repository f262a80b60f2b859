"""Loss terms by name. Importing this package registers every built-in term."""
from ...types import Batch
# Importing the term modules registers the built-in terms.
from . import adversarial, feature, multiteacher, online, relation, response, review, selfdistill, transformer  # noqa: F401
from . import lm  # noqa: F401  (token-level terms for language models)
from . import minillm  # noqa: F401  (MiniLLM's policy gradient of the reverse KL on the student's samples)
from . import sequence  # noqa: F401  (per-sequence cross-entropy: distilling step-by-step's multi-task loss)
from .base import LOSSES, LossTerm, Params, SetupContext, build_loss, describe_losses, register_loss

__all__ = ["LOSSES", "Batch", "LossTerm", "Params", "SetupContext", "build_loss", "describe_losses", "register_loss"]

