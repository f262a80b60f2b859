"""Batched inference on in-memory tensors, shared by training (validation) and measurement."""
from __future__ import annotations

import torch
from torch import nn


def module_device(module: nn.Module) -> torch.device:
    """Where ``module`` runs: the device of its first parameter (or buffer); the CPU when it holds neither."""
    for t in (*module.parameters(), *module.buffers()):
        return t.device
    return torch.device("cpu")


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Logits of ``model`` in eval mode for all of ``x``, in batches, on the CPU (each batch runs on the device of
    the model's parameters); restores the training flag."""
    was_training = model.training
    model.eval()
    device = module_device(model)
    try:
        out = [model(x[i:i + batch_size].to(device)).cpu() for i in range(0, len(x), batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.empty(0)
