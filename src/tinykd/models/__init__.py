"""Model zoo: teachers and students for images, signals, audio, tabular data and text, built by name; ``hf:PATH``
loads a local Hugging Face sequence classifier and ``from_hf`` wraps one built in Python.

Importing the family modules registers their variants with ``register_model`` (the text models import
transformers only when one is built).
"""
from tinykd.models import cnn, cnn1d, dscnn, gpt, lenet, mlp, resnet, transformer  # noqa: F401  (registers the models)
from tinykd.models.hf import HFClassifier, from_hf
from tinykd.models.registry import accepts, count_params, create_model, list_models, register_model

__all__ = ["HFClassifier", "accepts", "count_params", "create_model", "from_hf", "list_models", "register_model"]
