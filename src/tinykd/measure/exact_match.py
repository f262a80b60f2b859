"""Exact match of a language model's final answers: greedy decoding of each prompt until the end-of-text token,
the answer read after the last marker, compared with the truth as a string, overall and per group (e.g. the
problem's length).

Prompts of equal token length are decoded together (no padding), with a key/value cache for a Hugging Face causal LM
(``HFCausalLM``) and by recomputing the sequence otherwise; a batch stops as soon as every row has ended.
"""
from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from ..data.tokenize import CLS, PAD, TextTokenizer

EOT = CLS  # tinykd's end-of-text token


@dataclass
class ExactMatch:
    """Exact-match accuracy of final answers; ``by_group``: group → (accuracy, number of prompts)."""

    accuracy: float
    correct: int
    total: int
    by_group: dict[Hashable, tuple[float, int]] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)  # every generated text, the end token left out
    answers: list[str | None] = field(default_factory=list)  # the answer read from each (None: no marker)


def decode_ids(tokenizer: TextTokenizer, ids: Sequence[int]) -> str:
    """Text of generated token ids, [PAD] and [CLS] dropped (characters joined; sub-word pieces by spaces)."""
    if tokenizer.kind == "byte_bpe":
        return tokenizer.decode(ids)
    pieces = [tokenizer.vocab[i] if i < len(tokenizer.vocab) else "[UNK]" for i in ids if i not in (PAD, CLS)]
    if tokenizer.kind == "char":
        return "".join(pieces)
    text = " ".join(pieces)
    return text.replace(" ##", "") if tokenizer.kind == "wordpiece" else text


@torch.no_grad()
def greedy_tokens(model: nn.Module, prompt: torch.Tensor, max_new_tokens: int, end: int = EOT) -> torch.Tensor:
    """The argmax continuation (B, ≤ max_new_tokens) of ``prompt`` (B, P), stopped once every row has produced
    ``end``; in eval mode (the training flag is restored)."""
    from ..models.gpt import HFCausalLM

    was = model.training
    model.eval()
    device = next(model.parameters()).device
    ids, new = prompt.to(device), []
    done = torch.zeros(len(prompt), dtype=torch.bool, device=device)
    try:
        cached = isinstance(model, HFCausalLM)
        out = model.model(input_ids=ids, use_cache=True, return_dict=True) if cached else None
        for _ in range(max_new_tokens):
            logits = out.logits[:, -1] if cached else model(torch.cat([ids, *[t[:, None] for t in new]], 1))[:, -1]
            nxt = logits.float().argmax(-1)
            new.append(nxt)
            done |= nxt == end
            if bool(done.all()):
                break
            if cached:
                out = model.model(input_ids=nxt[:, None], past_key_values=out.past_key_values, use_cache=True,
                                  return_dict=True)
    finally:
        model.train(was)
    return torch.stack(new, 1).cpu() if new else torch.zeros(len(prompt), 0, dtype=torch.long)


def greedy_complete(model: nn.Module, tokenizer: TextTokenizer, prompts: Sequence[str], *, max_new_tokens: int,
                    context: int | None = None, batch_size: int = 256, end: int = EOT) -> list[str]:
    """Each prompt's greedy continuation as text, up to its first ``end`` token (left out), at most
    ``max_new_tokens`` tokens and never past ``context`` tokens in all (the model's position limit by default)."""
    context = context or getattr(model, "context", 0) or None
    pieces = tokenizer._pieces(list(prompts))
    out: list[str] = [""] * len(prompts)
    by_length: dict[int, list[int]] = {}
    for i, p in enumerate(pieces):
        by_length.setdefault(len(p), []).append(i)
    for length, rows in sorted(by_length.items()):
        room = max_new_tokens if context is None else min(max_new_tokens, context - length)
        for j in range(0, len(rows), batch_size):
            chunk = rows[j:j + batch_size]
            tokens = greedy_tokens(model, torch.tensor([pieces[i] for i in chunk], dtype=torch.long), max(0, room),
                                   end) if room > 0 and length > 0 else torch.zeros(len(chunk), 0, dtype=torch.long)
            for i, row in zip(chunk, tokens.tolist()):
                out[i] = decode_ids(tokenizer, row[:row.index(end)] if end in row else row)
    return out


def final_answer(text: str, marker: str = "#") -> str | None:
    """What follows the last ``marker`` in ``text``, stripped; None when there is no marker."""
    if marker not in text:
        return None
    return text.rsplit(marker, 1)[1].strip()


def exact_match(model: nn.Module, tokenizer: TextTokenizer, prompts: Sequence[str], answers: Sequence[str], *,
                groups: Sequence[Hashable] | None = None, marker: str = "#", max_new_tokens: int = 64,
                context: int | None = None, batch_size: int = 256) -> ExactMatch:
    """The share of ``prompts`` whose greedy continuation's final answer (after the last ``marker``) equals the
    truth in ``answers``, in all and per group of ``groups`` (one label per prompt)."""
    if len(prompts) != len(answers) or (groups is not None and len(groups) != len(prompts)):
        raise ValueError(f"{len(prompts)} prompts, {len(answers)} answers and "
                         f"{len(groups) if groups is not None else len(prompts)} groups: give one of each per prompt")
    outputs = greedy_complete(model, tokenizer, prompts, max_new_tokens=max_new_tokens, context=context,
                              batch_size=batch_size)
    got = [final_answer(t, marker) for t in outputs]
    hits = [g is not None and g == str(a).strip() for g, a in zip(got, answers)]
    by_group: dict[Hashable, tuple[float, int]] = {}
    for g in dict.fromkeys(groups or []):
        mine = [h for h, k in zip(hits, groups) if k == g]
        by_group[g] = (sum(mine) / len(mine), len(mine))
    total = len(hits)
    return ExactMatch(sum(hits) / total if total else float("nan"), sum(hits), total, by_group, outputs, got)
