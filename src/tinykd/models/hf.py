"""Hugging Face sequence classifiers and causal language models as tinykd text models.

``create_model("hf:PATH", ...)`` loads a local ``save_pretrained`` folder (safetensors weights only: a pickle can run
code when it is loaded); ``from_hf(model)`` wraps a model already built in Python. Either way the result is an
``HFClassifier``: ``forward(input_ids, attention_mask)`` returns the logits (B, num_labels), as the text Task calls
it, and the Hugging Face module is its ``model`` child, so feature paths read ``model.bert.encoder.layer.0``. A folder
whose config names a causal LM (``...ForCausalLM``, ``...LMHeadModel``) loads as an ``HFCausalLM`` instead: logits
over its vocabulary at every position, for the ``causal_lm`` task; its vocabulary must be the data's.

transformers is imported only when a model is built; without it the error names the extra to install.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from tinykd.errors import TinyKDError

END_TOKEN = 2  # [CLS]: tinykd's end-of-text token (models.gpt.BOS / EOS)
HF_PREFIX = "hf:"  # model names that are local Hugging Face folders rather than registered builders
TEXT_EXTRA = "pip install 'tinykd[text]'"
# The tunable arguments of an hf: model (create_model checks a recipe's kwargs against them).
HF_KWARGS: dict[str, object] = {"vocab_size": 0, "new_head": False}


def require_transformers():
    """The transformers module, or a TinyKDError naming the extra that installs it."""
    try:
        _import_quietly()
        import transformers
    except ImportError:
        raise TinyKDError("this model needs Hugging Face transformers, which is not installed",
                          f"install the text extra: {TEXT_EXTRA}") from None
    return transformers


def _import_quietly() -> None:
    """Import transformers with the optional torchao it loads silenced: its missing GPU kernels and torch's
    notes on its enums are not the user's concern on a CPU run."""
    import logging
    import warnings

    names = ("torchao", "torch.utils._pytree")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import transformers  # noqa: F401
            from transformers import BertForSequenceClassification  # noqa: F401 (pulls torchao in when installed)
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


class _HFModel(nn.Module):
    """A Hugging Face model as the child ``model``, so feature paths read ``model.<its modules>``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    @property
    def config(self):
        """The Hugging Face config (num_labels, hidden_size, ...); ``self.model.save_pretrained`` writes it back."""
        return self.model.config


class HFClassifier(_HFModel):
    """A Hugging Face ``...ForSequenceClassification`` model called as ``model(input_ids, attention_mask)`` that
    returns the logits tensor (never a ``ModelOutput`` or a loss)."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        # input_ids, attention_mask: (B, L) int64, mask 1 on tokens and 0 on padding -> logits (B, num_labels)
        return self.model(input_ids=input_ids, attention_mask=attention_mask, return_dict=True).logits


class HFCausalLM(_HFModel):
    """A Hugging Face causal LM called as ``model(input_ids)`` that returns the logits tensor (B, T, vocab)."""

    @property
    def context(self) -> int:
        """The longest input the position embedding takes."""
        return int(getattr(self.config, "n_positions", 0) or getattr(self.config, "max_position_embeddings", 0))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        # input_ids (B, T) int64, padding only on the right (causal attention keeps it from real positions)
        return self.model(input_ids=input_ids, use_cache=False, return_dict=True).logits


def _is_classifier(model: nn.Module) -> bool:
    names = [c.__name__ for c in type(model).__mro__]
    return any(n.endswith("ForSequenceClassification") for n in names)


def from_hf(model: nn.Module, *, num_classes: int | None = None) -> HFClassifier:
    """Wrap a Hugging Face sequence classifier built in Python (e.g. ``BertForSequenceClassification(config)``)
    as a tinykd text model; ``num_classes``, when given, must equal its ``config.num_labels``."""
    if isinstance(model, HFClassifier):
        model = model.model
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "num_labels"):
        raise TinyKDError(f"{type(model).__name__} is not a Hugging Face model (it has no config with num_labels)",
                          "pass a transformers ...ForSequenceClassification model")
    if not _is_classifier(model):
        raise TinyKDError(f"{type(model).__name__} is not a sequence classifier",
                          "build it with transformers.AutoModelForSequenceClassification (or a "
                          "...ForSequenceClassification class), which puts a classification head on the encoder")
    if num_classes is not None and config.num_labels != num_classes:
        raise TinyKDError(f"{type(model).__name__} has {config.num_labels} labels (config.num_labels), "
                          f"the data has {num_classes} classes",
                          f"build the model with num_labels={num_classes}")
    return HFClassifier(model)


def hf_path(name: str) -> Path:
    """The folder of an ``hf:PATH`` model name."""
    return Path(name[len(HF_PREFIX):]).expanduser()


def _check_folder(folder: Path) -> None:
    if not folder.exists():
        raise TinyKDError(f"no folder at '{folder}'",
                          "give the folder a Hugging Face model was saved to with save_pretrained, "
                          "e.g. hf:runs/teacher_hf (nothing is downloaded)")
    if not folder.is_dir():
        raise TinyKDError(f"'{folder}' is a file, not a model folder",
                          "give the folder that holds config.json and model.safetensors")
    if not (folder / "config.json").is_file():
        raise TinyKDError(f"'{folder}' has no config.json",
                          "save the model with model.save_pretrained(folder), which writes config.json and "
                          "model.safetensors")
    if not any(folder.glob("*.safetensors")):
        pickles = sorted(p.name for p in [*folder.glob("*.bin"), *folder.glob("*.pt"), *folder.glob("*.pth")])
        if pickles:
            raise TinyKDError(f"'{folder}' holds PyTorch pickle weights ({', '.join(pickles[:3])}), which can run "
                              "code when they are loaded; tinykd loads safetensors only",
                              "convert them where you trust the file: load the model with transformers and "
                              "call model.save_pretrained(folder) (it writes model.safetensors)")
        raise TinyKDError(f"'{folder}' has no weights (no *.safetensors file)",
                          "save the model with model.save_pretrained(folder)")


def _causal_lm(config) -> bool:
    """Whether a saved config is a causal language model's (``architectures`` names a ...ForCausalLM or
    ...LMHeadModel class, as ``save_pretrained`` of such a model writes it)."""
    return any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in (getattr(config, "architectures", None) or []))


def _load_causal_lm(transformers, folder: Path, config, num_classes: int, in_shape: tuple[int, ...], vocab_size: int,
                    new_head: bool) -> nn.Module:
    """A saved causal LM as an ``HFCausalLM`` (logits over its vocabulary at every position): its vocabulary must be
    the data's, token for token, since the ids mean the tokens of the tokenizer it learnt with."""
    if new_head:
        raise TinyKDError(f"'{folder}' holds a causal language model, whose output layer is its vocabulary",
                          "drop new_head (it gives a sequence classifier a fresh head)")
    if len(in_shape) != 1:
        raise TinyKDError(f"takes blocks of token ids shaped (context,), got in_shape {tuple(in_shape)}",
                          "use a text_corpus or prompt_response dataset")
    positions = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)
    if positions is not None and in_shape[0] > positions:
        raise TinyKDError(f"the data's context of {in_shape[0]} tokens exceeds the model's {positions} positions",
                          f"set the dataset's context option to at most {positions}")
    model_vocab = getattr(config, "vocab_size", None)
    data_vocab = vocab_size or num_classes
    if model_vocab is not None and model_vocab != data_vocab:
        raise TinyKDError(f"the language model in '{folder}' has a vocabulary of {model_vocab} tokens, the data's "
                          f"tokenizer {data_vocab}", "tokenize the data with the tokenizer the model learnt with: "
                          "data.options.tokenizer_path (the tokenizer.json of the run that trained it)")
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(
            str(folder), local_files_only=True, use_safetensors=True, attn_implementation="eager", dtype=torch.float32)
    except (ValueError, OSError, RuntimeError) as exc:
        raise TinyKDError(f"cannot load the model in '{folder}': {exc}",
                          "save it again with model.save_pretrained(folder)") from None
    for key in ("bos_token_id", "eos_token_id"):  # tinykd's end-of-text token when the config names none
        if getattr(model.config, key, None) is None:
            setattr(model.config, key, END_TOKEN)
    return HFCausalLM(model)


def create_hf(name: str, *, num_classes: int, in_shape: tuple[int, ...], vocab_size: int = 0,
              new_head: bool = False) -> nn.Module:
    """Load the sequence classifier saved at ``hf:PATH`` for ``num_classes`` classes and token ids shaped
    ``(max_length,)``. ``vocab_size``: the data's number of token ids, checked against the embedding table.
    ``new_head``: replace (or add) the classification head with a fresh one of ``num_classes`` outputs (a student
    initialised from a pretrained encoder; never a teacher, whose head is what it knows)."""
    folder = hf_path(name)
    _check_folder(folder)
    transformers = require_transformers()
    try:
        config = transformers.AutoConfig.from_pretrained(str(folder), local_files_only=True)
    except (ValueError, KeyError, OSError) as exc:
        raise TinyKDError(f"cannot read the config in '{folder}': {exc}",
                          "save the model with a transformers version that knows its model_type "
                          "(custom code is never run)") from None
    if _causal_lm(config):
        return _load_causal_lm(transformers, folder, config, num_classes, in_shape, vocab_size, new_head)
    if type(config) not in transformers.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING:
        raise TinyKDError(f"'{folder}' holds a {config.model_type!r} model, which has no sequence-classification "
                          "form in transformers", "use an encoder such as BERT, DistilBERT or RoBERTa")
    if len(in_shape) != 1:
        raise TinyKDError(f"takes token ids shaped (max_length,), got in_shape {tuple(in_shape)}",
                          "use a text dataset (its spec's shape is (max_length,))")
    positions = getattr(config, "max_position_embeddings", None)
    if positions is not None and in_shape[0] > positions:
        raise TinyKDError(f"the data's max_length {in_shape[0]} exceeds the model's {positions} positions",
                          f"set the dataset's max_length to at most {positions}")
    model_vocab = getattr(config, "vocab_size", None)
    if vocab_size and model_vocab is not None and vocab_size > model_vocab:
        raise TinyKDError(f"the data's tokenizer has {vocab_size} token ids, the model's embedding only "
                          f"{model_vocab}", "tokenize the data with the model's own vocabulary")
    if not new_head and config.num_labels != num_classes:
        raise TinyKDError(f"the model in '{folder}' has {config.num_labels} labels (num_labels in config.json), "
                          f"the data has {num_classes} classes",
                          "use data with as many classes, or new_head=True to train a fresh head of "
                          f"{num_classes} outputs")
    head = {"num_labels": num_classes, "ignore_mismatched_sizes": True} if new_head else {}
    try:
        model, info = transformers.AutoModelForSequenceClassification.from_pretrained(
            str(folder), local_files_only=True, use_safetensors=True, attn_implementation="eager",
            dtype=torch.float32, output_loading_info=True, **head)
    except (ValueError, OSError, RuntimeError) as exc:
        raise TinyKDError(f"cannot load the model in '{folder}': {exc}",
                          "save it again with model.save_pretrained(folder)") from None
    missing = list(info.get("missing_keys", []))
    if missing and not new_head:
        raise TinyKDError(f"the weights in '{folder}' lack {len(missing)} tensors of a sequence classifier "
                          f"({', '.join(sorted(missing)[:3])}): a model without a classification head",
                          "save a ...ForSequenceClassification model, or pass new_head=True to train a fresh head")
    return HFClassifier(model)  # from_pretrained leaves it in eval mode
