"""Batched inference on in-memory tensors, shared by training (validation) and measurement."""
from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Logits of ``model`` in eval mode for all of ``x``, in batches; restores the training flag."""
    was_training = model.training
    model.eval()
    try:
        out = [model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.empty(0)
