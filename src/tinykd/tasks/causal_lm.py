"""The causal language-modelling task: every position of a token block predicts the next token.

A split holds blocks of token ids ``x`` (N, T) and their next tokens ``y`` (N, T), -1 where a position is not scored
(a prompt, padding), with ``mask`` (N, T) marking the positions that hold a token. A model takes ``input_ids`` alone
and returns logits (B, T, V); padding is on the right, so causal attention never lets it reach a real position.

Metrics are per scored token: the mean cross-entropy (nats), its exponential, the perplexity, and the next-token
accuracy. The best epoch is the one with the lowest validation loss. ``generate`` continues prompts (greedy, or
sampled at a temperature with top-k) inside the model's fixed context, reproducibly from a seed.

Imports only torch and the task protocol, so any layer may use it.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..data.spec import InputSpec, Split
from ..types import Batch
from .base import Task, _device


def token_sums(logits: torch.Tensor, y: torch.Tensor) -> tuple[float, int, int]:
    """(summed cross-entropy in nats, correct next-token predictions, scored tokens) of one batch; logits (B, T, V)
    in any float type are scored in float32, positions with y = -1 are left out."""
    keep = y >= 0
    if not bool(keep.any()):
        return 0.0, 0, 0
    rows, targets = logits[keep].float(), y[keep]
    loss = F.cross_entropy(rows, targets, reduction="sum").item()
    return loss, int((rows.argmax(-1) == targets).sum()), int(keep.sum())


class CausalLM(Task):
    """Next-token prediction over blocks of token ids, scored by perplexity."""

    name = "causal_lm"
    metric = "perplexity"
    selection = ("val_loss", "min")

    def collate(self, split: Split, idx: torch.Tensor) -> Batch:
        x, y = split.x[idx], split.y[idx]
        mask = split.mask[idx] if split.mask is not None else torch.ones_like(x)
        longest = int(mask.sum(1).max().item()) if len(idx) else 1
        longest = max(1, longest)
        return Batch({"input_ids": x[:, :longest]}, y[:, :longest], idx, mask[:, :longest])

    def evaluate(self, model: nn.Module, split: Split, batch_size: int = 64) -> dict[str, float]:
        """Per-token validation loss (nats), perplexity and next-token accuracy of ``model`` in eval mode, computed
        batch by batch (an N x T x V array of logits is never held)."""
        if len(split) == 0:
            return {"accuracy": float("nan"), "loss": float("nan"), "perplexity": float("nan")}
        was_training = model.training
        model.eval()
        device = _device(model)
        loss = correct = tokens = 0
        try:
            with torch.no_grad():
                for i in range(0, len(split), batch_size):
                    batch = self.collate(split, torch.arange(i, min(i + batch_size, len(split)))).to(device)
                    l_, c, n = token_sums(self.logits(model, batch), batch.y)
                    loss, correct, tokens = loss + l_, correct + c, tokens + n
        finally:
            model.train(was_training)
        mean = loss / max(1, tokens)
        return {"accuracy": correct / max(1, tokens), "loss": mean, "perplexity": math.exp(min(mean, 700.0))}

    def example_inputs(self, spec: InputSpec, n: int = 1, *, length: int | None = None) -> tuple[torch.Tensor, ...]:
        """Token ids 3.. of ``length`` (the context by default): what export and latency feed a language model."""
        length = length or spec.shape[0]
        ids = (torch.arange(n * length).reshape(n, length) % max(1, spec.vocab_size - 3)) + 3
        return (ids.long(),)

    def input_names(self, spec: InputSpec) -> list[str]:
        return ["input_ids"]

    def dynamic_axes(self, spec: InputSpec) -> dict[str, dict[int, str]]:
        return {"input_ids": {0: "batch", 1: "sequence"}, "logits": {0: "batch", 1: "sequence"}}

    @torch.no_grad()
    def generate(self, model: nn.Module, prompt: torch.Tensor, max_new_tokens: int, *, context: int,
                 temperature: float = 1.0, top_k: int | None = None, seed: int | None = 0,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """``prompt`` (B, P) continued by ``max_new_tokens`` tokens: (B, P + max_new_tokens). Each step reads the last
        ``context`` tokens (fixed-context decoding). ``temperature`` 0 is greedy; otherwise tokens are sampled from
        softmax(logits / temperature), restricted to the ``top_k`` most likely when given, with ``generator`` (or
        one seeded with ``seed``), so equal seeds give equal texts. Restores the model's training flag."""
        if prompt.dim() == 1:
            prompt = prompt[None]
        was_training = model.training
        model.eval()
        device = _device(model)
        gen = generator or torch.Generator().manual_seed(0 if seed is None else seed)
        ids = prompt.to(device)
        try:
            for _ in range(max_new_tokens):
                window = ids[:, -context:]
                logits = self.logits(model, Batch({"input_ids": window}, window, window[:, 0]))[:, -1].float().cpu()
                ids = torch.cat([ids, sample_next(logits, temperature, top_k, gen).to(device)[:, None]], 1)
        finally:
            model.train(was_training)
        return ids.cpu()


def sampling_probs(logits: torch.Tensor, temperature: float, top_k: int | None) -> torch.Tensor:
    """(B, V) the distribution ``sample_next`` draws from: softmax(logits / temperature) over the ``top_k`` most
    likely tokens (all when None), or one-hot on the argmax at temperature 0."""
    if temperature <= 0:
        return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).to(logits.dtype)
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, -math.inf)
    return torch.softmax(logits, -1)


def sample_next(logits: torch.Tensor, temperature: float, top_k: int | None, generator: torch.Generator) -> torch.Tensor:
    """The next token of each row of ``logits`` (B, V): the argmax at temperature 0 (no random number drawn), else a
    sample of ``sampling_probs``."""
    if temperature <= 0:
        return logits.argmax(-1)
    return torch.multinomial(sampling_probs(logits, temperature, top_k), 1, generator=generator)[:, 0]
