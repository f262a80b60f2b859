"""Transformer encoder classifiers for token ids: BERT (Devlin et al. 2019) built from a config, nothing downloaded.

The model is a Hugging Face ``BertForSequenceClassification`` with eager attention (its attention probabilities can
be captured), wrapped as an ``HFClassifier``: ``forward(input_ids, attention_mask)`` returns the logits, and the
student can be saved with ``model.model.save_pretrained(folder)`` and loaded back as ``hf:folder``. Its
classification head reads the first position, where the tokenizers put [CLS]. Feature paths:
``model.bert.embeddings``, ``model.bert.encoder.layer.{i}`` (a block's output), ``....attention``,
``....intermediate``, ``model.bert.pooler``, ``model.classifier``.

Presets follow the compact BERTs of Turc et al. 2019, "Well-Read Students Learn Better": BERT-Mini (4 layers,
hidden 256) and BERT-Tiny (2 layers, hidden 128), each with 4x-wide feed-forward layers and 64-wide heads.

``student_from_teacher`` (and ``init_from_teacher``, into a student already built) is DistilBERT's initialisation: a
student of the teacher's width keeping some of its blocks (every other one by default), the weights copied.
"""
from __future__ import annotations

import copy
import re

from torch import nn

from tinykd.errors import TinyKDError
from tinykd.models.checks import check_dropout, check_in_shape, check_int
from tinykd.models.hf import HFClassifier, require_transformers
from tinykd.models.registry import register_model

SHAPE_FIX = "text models take token ids shaped (max_length,): use a text dataset, e.g. in_shape=(64,)"


def build_transformer(in_shape: tuple[int, ...], num_classes: int, *, vocab_size: int, layers: int, heads: int,
                      hidden: int, intermediate: int = 0, max_positions: int = 0,
                      dropout: float = 0.1) -> HFClassifier:
    """A BERT encoder classifier for token ids shaped ``(max_length,)`` from a vocabulary of ``vocab_size`` ids.
    ``intermediate`` 0 means 4 * hidden; ``max_positions`` 0 means max_length (the longest input it can take)."""
    check_in_shape(in_shape, 1, "(max_length,) token ids", SHAPE_FIX)
    if vocab_size == 0:
        raise TinyKDError("argument 'vocab_size' is required: the number of token ids of the data's tokenizer",
                          "the pipeline passes the dataset's vocab_size; in Python pass vocab_size=spec.vocab_size")
    vocab_size = check_int("vocab_size", vocab_size, 2)
    layers, heads, hidden = check_int("layers", layers), check_int("heads", heads), check_int("hidden", hidden)
    if hidden % heads:
        fits = [h for h in range(1, min(hidden, 16) + 1) if hidden % h == 0]
        raise TinyKDError(f"hidden={hidden} is not a multiple of heads={heads} (each head gets hidden / heads)",
                          f"use heads in {fits} or a hidden size divisible by {heads}")
    intermediate = check_int("intermediate", intermediate, 0) or 4 * hidden
    max_positions = check_int("max_positions", max_positions, 0) or in_shape[0]
    if max_positions < in_shape[0]:
        raise TinyKDError(f"max_positions={max_positions} is shorter than the inputs' max_length {in_shape[0]}",
                          f"use max_positions >= {in_shape[0]}, or 0 for max_length")
    dropout = check_dropout(dropout)
    transformers = require_transformers()
    config = transformers.BertConfig(
        vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=intermediate, max_position_embeddings=max_positions, type_vocab_size=1,
        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout, num_labels=num_classes,
        pad_token_id=0,  # [PAD] is id 0 in tinykd's tokenizers: its embedding row starts at zero
        attn_implementation="eager")
    return HFClassifier(transformers.BertForSequenceClassification(config).train())


@register_model("transformer", "BERT encoder classifier on token ids; layers, heads, hidden, intermediate: arguments")
def transformer(*, num_classes: int, in_shape: tuple[int, ...], vocab_size: int = 0, layers: int = 4,
                heads: int = 4, hidden: int = 256, intermediate: int = 0, max_positions: int = 0,
                dropout: float = 0.1) -> HFClassifier:
    return build_transformer(in_shape, num_classes, vocab_size=vocab_size, layers=layers, heads=heads, hidden=hidden,
                             intermediate=intermediate, max_positions=max_positions, dropout=dropout)


@register_model("transformer_small", "BERT-Mini (Turc et al. 2019): 4 layers, hidden 256, 4 heads, feed-forward 1024")
def transformer_small(*, num_classes: int, in_shape: tuple[int, ...], vocab_size: int = 0, max_positions: int = 0,
                      dropout: float = 0.1) -> HFClassifier:
    return build_transformer(in_shape, num_classes, vocab_size=vocab_size, layers=4, heads=4, hidden=256,
                             intermediate=1024, max_positions=max_positions, dropout=dropout)


@register_model("transformer_tiny", "BERT-Tiny (Turc et al. 2019): 2 layers, hidden 128, 2 heads, feed-forward 512")
def transformer_tiny(*, num_classes: int, in_shape: tuple[int, ...], vocab_size: int = 0, max_positions: int = 0,
                     dropout: float = 0.1) -> HFClassifier:
    return build_transformer(in_shape, num_classes, vocab_size=vocab_size, layers=2, heads=2, hidden=128,
                             intermediate=512, max_positions=max_positions, dropout=dropout)


# ----- DistilBERT's initialisation ---------------------------------------------------------------------------------
EVERY_OTHER = "every_other"
_BLOCK = re.compile(r"^(.*?encoder\.layer\.)(\d+)(\..*)$")  # a block's parameter: (prefix, index, rest)


def encoder_layers(model: nn.Module, role: str = "teacher") -> int:
    """The number of Transformer blocks of an ``HFClassifier`` encoder; a TinyKDError for other models."""
    config = getattr(model, "config", None)
    layers = getattr(config, "num_hidden_layers", None)
    if not isinstance(model, HFClassifier) or not layers or not any(_BLOCK.match(k) for k in model.state_dict()):
        raise TinyKDError(f"the {role} ({type(model).__name__}) is not a token model with a BERT-style encoder "
                          "(….encoder.layer.N blocks): layers cannot be copied from a teacher into a student",
                          f"use a transformer (or hf: BERT) {role}, or leave student.init_layers out")
    return int(layers)


def kept_layers(teacher_layers: int, layers: list[int] | str | None = None) -> list[int]:
    """The teacher blocks a student keeps: ``layers`` as given, or every other one (0, 2, 4, …) for None or
    "every_other"; a TinyKDError naming the teacher's layer count when an index does not exist."""
    keep = list(range(0, teacher_layers, 2)) if layers is None or layers == EVERY_OTHER else list(layers)
    bad = [i for i in keep if not 0 <= i < teacher_layers]
    if not keep or bad:
        raise TinyKDError(f"layers {keep} do not fit the teacher: it has {teacher_layers} layers (0 to "
                          f"{teacher_layers - 1})", f"keep layers from 0 to {teacher_layers - 1}, e.g. every_other "
                          f"= {list(range(0, teacher_layers, 2))}")
    return keep


def init_from_teacher(student: HFClassifier, teacher: HFClassifier, layers: list[int] | str | None = None) -> list[int]:
    """Copy the teacher's weights into ``student`` bit for bit: embeddings, pooler and classifier as they are, and
    teacher block ``layers[i]`` into student block i (DistilBERT, Sanh et al. 2019, §3: one layer out of two). The
    student must be the teacher's architecture with ``len(layers)`` blocks. Returns the kept layers."""
    keep = kept_layers(encoder_layers(teacher), layers)
    have = encoder_layers(student, "student")
    source = teacher.state_dict()
    c = teacher.config
    width = ", ".join(f"{arg}: {getattr(c, key, '?')}" for arg, key in
                      (("heads", "num_attention_heads"), ("hidden", "hidden_size"), ("intermediate", "intermediate_size")))
    fix = f"give the student the teacher's width and {len(keep)} layers (transformer kwargs: layers: {len(keep)}, " \
          f"{width})"
    if have != len(keep):
        raise TinyKDError(f"the student has {have} layers but keeps {len(keep)} layers {keep} of the teacher's "
                          f"{encoder_layers(teacher)}", fix)
    copied = {}
    for key, value in student.state_dict().items():
        block = _BLOCK.match(key)
        name = f"{block[1]}{keep[int(block[2])]}{block[3]}" if block else key
        if name not in source or source[name].shape != value.shape:
            found = "has none" if name not in source else f"has {tuple(source[name].shape)}"
            raise TinyKDError(f"the student's '{key}' is {tuple(value.shape)}; the teacher's '{name}' {found}", fix)
        copied[key] = source[name].detach().clone()
    student.load_state_dict(copied, strict=True)
    return keep


def student_from_teacher(teacher: HFClassifier, layers: list[int] | None = None) -> HFClassifier:
    """A student of the teacher's width and heads with the teacher's blocks ``layers`` (default every other one:
    0, 2, 4, …), its embeddings, those blocks, pooler and classifier copied bit for bit (DistilBERT's
    initialisation). It is in training mode, like a freshly built model."""
    keep = kept_layers(encoder_layers(teacher), layers)
    config = copy.deepcopy(teacher.config)
    config.num_hidden_layers = len(keep)
    student = HFClassifier(type(teacher.model)(config))
    init_from_teacher(student, teacher, keep)
    return student.train()
