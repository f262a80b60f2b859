"""Model zoo: teachers and students for images, signals, audio and tabular data, built by name.

Importing the family modules registers their variants with ``register_model``.
"""
from tinykd.models import cnn, cnn1d, dscnn, lenet, mlp, resnet  # noqa: F401  (registers the models)
from tinykd.models.registry import count_params, create_model, list_models, register_model

__all__ = ["count_params", "create_model", "list_models", "register_model"]
