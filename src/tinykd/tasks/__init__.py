"""What a kind of problem means to every stage: the Task protocol and the tasks tinykd has.

A Task owns what differs between kinds of data and models, so the trainer, the teacher sources, export and
measurement stay the same for all of them:

- ``collate``: the mini-batch of a split at some indices (dense inputs as they are; token ids cut to the longest
  sequence of the batch, with their padding mask);
- ``logits``: the adapter from whatever a model returns (a tensor, a tuple, a Hugging Face ``ModelOutput``) to the
  logits loss terms see;
- ``predict`` and ``evaluate``: batched inference and the validation/test metrics;
- ``reduce``: the mean of per-position values over the real (unpadded) positions;
- ``example_inputs``, ``input_names`` and ``dynamic_axes``: what export and latency feed a model;
- ``report``: what the report calls its metric.

Tasks: ``Classification`` (tasks/classification.py) and ``CausalLM`` (tasks/causal_lm.py, next-token prediction).

Imports only torch, the batch types and the data spec, so any layer may use it.
"""
from __future__ import annotations

from collections.abc import Callable

from .base import Task, _device, model_logits
from .causal_lm import CausalLM
from .classification import Classification

TASKS: dict[str, Callable[[], Task]] = {"classification": Classification, "causal_lm": CausalLM}


def get_task(name: str = "classification") -> Task:
    """A fresh task by name."""
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; tasks: {', '.join(sorted(TASKS))}")
    return TASKS[name]()


__all__ = ["TASKS", "CausalLM", "Classification", "Task", "_device", "get_task", "model_logits"]
