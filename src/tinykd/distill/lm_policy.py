"""Where a language-model student's training sequences come from, besides the corpus itself.

- On-policy distillation (GKD, Agarwal et al. 2024, Algorithm 1): with probability ``fraction`` (GKD's λ) a batch is
  replaced by the student's own continuations of its prompts (the first ``prompt_tokens`` tokens of every block),
  sampled at the recipe's temperature and top-k; the teacher then scores exactly those tokens and the loss terms
  (e.g. ``jsd``) compare the two distributions on the generated positions only. ``OnPolicy`` is a trainer callback.
  With ``teacher_mix`` α > 0 each token is drawn from α·p_teacher + (1 − α)·q_student instead (MiniLLM's
  teacher-mixed sampling, Gu et al. 2024 §2.2; the ``minillm`` term weights the tokens back by q_student / mixture).
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
from ..errors import TinyKDError
from ..tasks.causal_lm import CausalLM, sample_next, sampling_probs
from ..types import Batch
from .callbacks import Callback


class _Decoder:
    """One model's next-token logits as tokens are appended: with a key/value cache for a Hugging Face causal LM
    (``HFCausalLM``), else by recomputing the window. A token is fed on the next ``logits()`` call, so the last one
    appended costs no forward."""

    def __init__(self, model: nn.Module, ids: torch.Tensor):
        from ..models.gpt import HFCausalLM

        self.model, self.ids = model, ids
        self.hf = isinstance(model, HFCausalLM)
        self.out = model.model(input_ids=ids, use_cache=True, return_dict=True) if self.hf else None
        self.pending: torch.Tensor | None = None

    def logits(self) -> torch.Tensor:
        """(B, V) float logits of the next token."""
        if not self.hf:
            batch = Batch({"input_ids": self.ids}, self.ids, self.ids[:, 0])
            return CausalLM().logits(self.model, batch)[:, -1].float()
        if self.pending is not None:
            self.out = self.model.model(input_ids=self.pending[:, None], past_key_values=self.out.past_key_values,
                                        use_cache=True, return_dict=True)
            self.pending = None
        return self.out.logits[:, -1].float()

    def append(self, nxt: torch.Tensor) -> None:
        nxt = nxt.to(self.ids.device)
        self.ids = torch.cat([self.ids, nxt[:, None]], 1)
        self.pending = nxt


@torch.no_grad()
def continue_prompts(model: nn.Module, prompt: torch.Tensor, new_tokens: int, *, temperature: float,
                     top_k: int | None, generator: torch.Generator | None = None, teacher: nn.Module | None = None,
                     teacher_mix: float = 0.0) -> torch.Tensor:
    """``prompt`` (B, P) and ``new_tokens`` tokens the model samples after it (B, P + new_tokens), in eval mode (the
    training flags are restored). ``generator`` None samples from the global RNG (checkpoints save its state).

    With ``teacher_mix`` α > 0 and a ``teacher``, every token is drawn from α·p_teacher + (1 − α)·q_student (MiniLLM's
    teacher-mixed sampling): the teacher at temperature 1, the student at ``temperature`` / ``top_k`` (its own
    sampling distribution, ``sampling_probs``); both models keep a key/value cache when they are HF causal LMs."""
    mixing = teacher is not None and teacher_mix > 0
    models = [model, teacher] if mixing else [model]
    was = [m.training for m in models]
    for m in models:
        m.eval()
    ids = prompt.to(next(model.parameters()).device)
    try:
        student = _Decoder(model, ids)
        if not mixing:
            for _ in range(new_tokens):
                nxt = sample_next(student.logits(), temperature, top_k, generator)
                student.append(nxt)
            return student.ids
        guide = _Decoder(teacher, ids.to(next(teacher.parameters()).device))
        for _ in range(new_tokens):
            q = sampling_probs(student.logits(), temperature, top_k)
            p = torch.softmax(guide.logits().to(q.device), -1)
            nxt = torch.multinomial(teacher_mix * p + (1.0 - teacher_mix) * q, 1, generator=generator)[:, 0]
            student.append(nxt)
            guide.append(nxt)
        return student.ids
    finally:
        for m, w in zip(models, was):
            m.train(w)


def generated_batch(ids: torch.Tensor, prompt_tokens: int, index: torch.Tensor) -> Batch:
    """A training batch of generated sequences ``ids`` (B, T + 1): inputs ids[:, :T], next tokens ids[:, 1:], the
    positions that predict prompt tokens unscored."""
    x, y = ids[:, :-1].clone(), ids[:, 1:].clone()
    y[:, :max(0, prompt_tokens - 1)] = -1
    return Batch({"input_ids": x}, y, index, torch.ones_like(x))


class OnPolicy(Callback):
    """GKD's on-policy batches (module docstring): the student continues the prompts of a ``fraction`` of the batches,
    and the teacher labels those continuations live (never from a cache).

    ``teacher_mix`` α > 0 draws each token from α·p_teacher + (1 − α)·q_student instead (MiniLLM's teacher-mixed
    sampling; ``continue_prompts``), the teacher taken from the trainer (``trainer.teacher_source.module``). None
    takes α from a ``minillm`` loss term of the trainer (its ``teacher_mix``, which preflight makes equal to
    ``distill.on_policy.teacher_mix``), else 0."""

    changes_inputs = True

    def __init__(self, fraction: float, prompt_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 teacher_mix: float | None = None):
        if teacher_mix is not None and not 0.0 <= teacher_mix <= 1.0:
            raise TinyKDError(f"on-policy teacher_mix {teacher_mix:g} is not a mixing weight",
                              "give a value between 0 (the student samples alone) and 1 (the teacher samples)")
        self.fraction, self.prompt_tokens = fraction, prompt_tokens
        self.temperature, self.top_k = temperature, top_k
        self.teacher_mix = teacher_mix
        self.generated = 0  # batches the student generated in the current fit

    def mix(self, trainer) -> float:
        """α of this fit: the callback's own, else a minillm term's, else 0."""
        if self.teacher_mix is not None:
            return self.teacher_mix
        for _, term in getattr(trainer, "terms", ()):
            if getattr(term, "name", "") == "minillm":
                return float(term.params.teacher_mix)
        return 0.0

    def on_batch(self, trainer, batch: Batch) -> Batch:
        if float(torch.rand(())) >= self.fraction:  # the global RNG: resume replays the same choices
            return batch
        x = batch.x
        if x.shape[1] <= self.prompt_tokens:
            return batch
        alpha, teacher = self.mix(trainer), None
        if alpha > 0:
            source = getattr(trainer, "teacher_source", None)
            if source is None:
                raise TinyKDError(f"on-policy teacher_mix {alpha:g} samples tokens from the teacher, and this fit "
                                  "has none", "give the trainer a teacher, or set distill.on_policy.teacher_mix: 0")
            teacher = source.module
        ids = continue_prompts(trainer.model, x[:, :self.prompt_tokens], x.shape[1] - self.prompt_tokens + 1,
                               temperature=self.temperature, top_k=self.top_k, teacher=teacher,
                               teacher_mix=alpha).cpu()
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
