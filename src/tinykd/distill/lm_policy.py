"""Where a language-model student's training sequences come from, besides the corpus itself.

- On-policy distillation (GKD, Agarwal et al. 2024, Algorithm 1): with probability ``fraction`` (GKD's λ) a batch is
  replaced by the student's own continuations of its prompts (the first ``prompt_tokens`` tokens of every block),
  sampled at the recipe's temperature and top-k; the teacher then scores exactly those tokens and the loss terms
  (e.g. ``jsd``) compare the two distributions on the generated positions only. ``OnPolicy`` is a trainer callback.
- Sequence-level KD (Kim & Rush 2016): the training blocks are replaced, once, by the teacher's continuations of
  their prompts (greedy by default: the mode the paper's beam search approximates), and the student learns those
  sequences. ``sequence_kd_split`` makes the new split.

Both generate with a key/value cache when the model is a Hugging Face causal LM (``HFCausalLM``), else by
recomputing the window each step; the prompt positions are never scored (label -1).
"""
from __future__ import annotations

import torch
from torch import nn

from ..data.spec import Split
from ..tasks.causal_lm import CausalLM, sample_next
from ..types import Batch
from .callbacks import Callback


@torch.no_grad()
def continue_prompts(model: nn.Module, prompt: torch.Tensor, new_tokens: int, *, temperature: float,
                     top_k: int | None, generator: torch.Generator | None = None) -> torch.Tensor:
    """``prompt`` (B, P) and ``new_tokens`` tokens the model samples after it (B, P + new_tokens), in eval mode (the
    training flag is restored). ``generator`` None samples from the global RNG (checkpoints save its state)."""
    from ..models.gpt import HFCausalLM

    was = model.training
    model.eval()
    device = next(model.parameters()).device
    ids = prompt.to(device)
    try:
        if isinstance(model, HFCausalLM):
            out = model.model(input_ids=ids, use_cache=True, return_dict=True)
            for step in range(new_tokens):
                nxt = sample_next(out.logits[:, -1].float(), temperature, top_k, generator)
                ids = torch.cat([ids, nxt[:, None]], 1)
                if step + 1 < new_tokens:
                    out = model.model(input_ids=nxt[:, None], past_key_values=out.past_key_values, use_cache=True,
                                      return_dict=True)
        else:
            task = CausalLM()
            for _ in range(new_tokens):
                logits = task.logits(model, Batch({"input_ids": ids}, ids, ids[:, 0]))[:, -1].float()
                ids = torch.cat([ids, sample_next(logits, temperature, top_k, generator)[:, None]], 1)
    finally:
        model.train(was)
    return ids


def generated_batch(ids: torch.Tensor, prompt_tokens: int, index: torch.Tensor) -> Batch:
    """A training batch of generated sequences ``ids`` (B, T + 1): inputs ids[:, :T], next tokens ids[:, 1:], the
    positions that predict prompt tokens unscored."""
    x, y = ids[:, :-1].clone(), ids[:, 1:].clone()
    y[:, :max(0, prompt_tokens - 1)] = -1
    return Batch({"input_ids": x}, y, index, torch.ones_like(x))


class OnPolicy(Callback):
    """GKD's on-policy batches (module docstring): the student continues the prompts of a ``fraction`` of the batches,
    and the teacher labels those continuations live (never from a cache)."""

    changes_inputs = True

    def __init__(self, fraction: float, prompt_tokens: int, temperature: float = 1.0, top_k: int | None = None):
        self.fraction, self.prompt_tokens = fraction, prompt_tokens
        self.temperature, self.top_k = temperature, top_k
        self.generated = 0  # batches the student generated in the current fit

    def on_batch(self, trainer, batch: Batch) -> Batch:
        if float(torch.rand(())) >= self.fraction:  # the global RNG: resume replays the same choices
            return batch
        x = batch.x
        if x.shape[1] <= self.prompt_tokens:
            return batch
        ids = continue_prompts(trainer.model, x[:, :self.prompt_tokens], x.shape[1] - self.prompt_tokens + 1,
                               temperature=self.temperature, top_k=self.top_k).cpu()
        self.generated += 1
        return generated_batch(ids, self.prompt_tokens, torch.full_like(batch.index, -1))


def sequence_kd_split(teacher: nn.Module, split: Split, prompt_tokens: int, *, temperature: float = 0.0,
                      top_k: int | None = None, seed: int = 0, batch_size: int = 128) -> Split:
    """The blocks of ``split`` with everything after their first ``prompt_tokens`` tokens replaced by the teacher's
    continuation (Kim & Rush 2016); the prompt positions are unscored. Seeded when sampling (temperature > 0)."""
    gen = torch.Generator().manual_seed(seed)
    xs, ys = [], []
    width = split.x.shape[1]
    for i in range(0, len(split), batch_size):
        prompt = split.x[i:i + batch_size, :prompt_tokens]
        ids = continue_prompts(teacher, prompt, width - prompt_tokens + 1, temperature=temperature, top_k=top_k,
                               generator=gen).cpu()
        b = generated_batch(ids, prompt_tokens, torch.arange(len(ids)))
        xs.append(b.x)
        ys.append(b.y)
    x = torch.cat(xs)
    return Split(x, torch.cat(ys), torch.ones_like(x))
