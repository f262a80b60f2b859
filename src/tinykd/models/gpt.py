"""GPT-style decoders for causal language modelling: GPT-2 (Radford et al. 2019) built from a config, nothing
downloaded.

The model is a Hugging Face ``GPT2LMHeadModel`` (token and position embeddings, pre-LayerNorm blocks of causal
self-attention and a 4x-wide MLP, the output layer tied to the token embedding), wrapped as an ``HFCausalLM``:
``forward(input_ids)`` returns the logits (B, T, vocab). The begin/end-of-text token is tinykd's ``[CLS]`` (id 2)
and padding ``[PAD]`` (id 0), so a small vocabulary never points them past its end. The wrapped model saves with
``model.model.save_pretrained(folder)`` and loads back as ``hf:folder``. Feature paths:
``model.transformer.wte``, ``model.transformer.h.{i}`` (a block's output), ``model.transformer.ln_f``.

Registered variants: ``gpt`` (every size setting a kwarg), ``gpt_char`` (4 layers, width 128: a character-level
teacher for a CPU, 0.82 M parameters at 68 tokens) and ``gpt_char_small`` (2 layers, width 64: 1/7.3 of them).
"""
from __future__ import annotations

import torch
from torch import nn

from tinykd.errors import TinyKDError
from tinykd.models.checks import check_dropout, check_in_shape, check_int
from tinykd.models.hf import HFCausalLM, require_transformers  # noqa: F401 (HFCausalLM: re-exported)
from tinykd.models.registry import register_model

BOS = EOS = 2  # [CLS]: tinykd's end-of-text token
LM_MODELS = ("gpt", "gpt_char", "gpt_char_small")  # the registered language models (logits over the vocabulary)
PAD = 0
SHAPE_FIX = "language models take blocks of token ids shaped (context,): use a text_corpus or prompt_response dataset"


def build_gpt(in_shape: tuple[int, ...], num_classes: int, *, vocab_size: int, layers: int, heads: int, hidden: int,
              context: int = 0, dropout: float = 0.1) -> HFCausalLM:
    """A GPT-2 decoder over ``vocab_size`` token ids with ``context`` positions (0: the data's block length)."""
    check_in_shape(in_shape, 1, "(context,) token ids", SHAPE_FIX)
    if vocab_size == 0:
        raise TinyKDError("argument 'vocab_size' is required: the number of token ids of the data's tokenizer",
                          "the pipeline passes the dataset's vocab_size; in Python pass vocab_size=spec.vocab_size")
    vocab_size = check_int("vocab_size", vocab_size, 3)
    if num_classes != vocab_size:
        raise TinyKDError(f"a language model predicts one of its {vocab_size} tokens, but num_classes is {num_classes}",
                          "use a language-model dataset (text_corpus, prompt_response): its classes are its tokens")
    layers, heads, hidden = check_int("layers", layers), check_int("heads", heads), check_int("hidden", hidden)
    if hidden % heads:
        fits = [h for h in range(1, min(hidden, 16) + 1) if hidden % h == 0]
        raise TinyKDError(f"hidden={hidden} is not a multiple of heads={heads} (each head gets hidden / heads)",
                          f"use heads in {fits} or a hidden size divisible by {heads}")
    context = check_int("context", context, 0) or in_shape[0]
    if context < in_shape[0]:
        raise TinyKDError(f"context={context} is shorter than the data's blocks of {in_shape[0]} tokens",
                          f"use context >= {in_shape[0]}, or 0 for the block length")
    dropout = check_dropout(dropout)
    transformers = require_transformers()
    config = transformers.GPT2Config(
        vocab_size=vocab_size, n_positions=context, n_embd=hidden, n_layer=layers, n_head=heads,
        resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout, bos_token_id=BOS, eos_token_id=EOS,
        pad_token_id=None, attn_implementation="eager")  # right padding needs no mask under causal attention
    return HFCausalLM(transformers.GPT2LMHeadModel(config).train())


@register_model("gpt", "GPT-2 decoder language model (layers, heads, hidden, context) from a config")
def gpt(*, num_classes: int, in_shape: tuple[int, ...], vocab_size: int = 0, layers: int = 4, heads: int = 4,
        hidden: int = 128, context: int = 0, dropout: float = 0.1) -> nn.Module:
    return build_gpt(in_shape, num_classes, vocab_size=vocab_size, layers=layers, heads=heads, hidden=hidden,
                     context=context, dropout=dropout)


@register_model("gpt_char", "GPT-2 decoder, 4 layers, width 128, 4 heads: a character-level teacher for a CPU")
def gpt_char(*, num_classes: int, in_shape: tuple[int, ...], vocab_size: int = 0, dropout: float = 0.1) -> nn.Module:
    return build_gpt(in_shape, num_classes, vocab_size=vocab_size, layers=4, heads=4, hidden=128, dropout=dropout)


@register_model("gpt_char_small", "GPT-2 decoder, 2 layers, width 64, 4 heads: 1/7.3 of gpt_char")
def gpt_char_small(*, num_classes: int, in_shape: tuple[int, ...], vocab_size: int = 0,
                   dropout: float = 0.0) -> nn.Module:
    return build_gpt(in_shape, num_classes, vocab_size=vocab_size, layers=2, heads=4, hidden=64, dropout=dropout)
