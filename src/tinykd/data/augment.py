"""Input augmentations written as modules, so any model can carry them: active in training, identity in eval.

Being modules, they draw from torch's global RNG, whose state the trainer checkpoints, so a resumed run
draws the same augmentations as an uninterrupted one.
"""
from __future__ import annotations

import torch
from torch import nn

from tinykd.errors import TinyKDError


class RandomShift(nn.Module):
    """Translate each image by an independent random integer offset in [-max_shift, max_shift] pixels along
    height and width, filling the uncovered border with ``fill`` (the "jitter" of Hinton et al. 2015, MNIST).

    Input (B, C, H, W), or signals (B, C, L) shifted along L; in eval mode the input is returned unchanged.
    """

    def __init__(self, max_shift: int = 2, fill: float = 0.0):
        super().__init__()
        if not isinstance(max_shift, int) or max_shift < 0:
            raise TinyKDError(f"RandomShift: max_shift must be a non-negative integer, got {max_shift!r}",
                              "use e.g. max_shift=2 for ±2 pixels")
        self.max_shift, self.fill = max_shift, float(fill)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.max_shift == 0:
            return x
        if x.dim() not in (3, 4):
            raise TinyKDError(f"RandomShift expects images (B, C, H, W) or signals (B, C, L), got {tuple(x.shape)}",
                              "use it on image or signal inputs only")
        s = self.max_shift
        if x.dim() == 3:
            b, c, length = x.shape
            padded = nn.functional.pad(x, (s, s), value=self.fill)
            start = torch.randint(0, 2 * s + 1, (b,), device=x.device)
            cols = start[:, None] + torch.arange(length, device=x.device)[None, :]  # (B, L) in the padded signal
            return padded.gather(2, cols[:, None, :].expand(b, c, length))
        b, c, h, w = x.shape
        padded = nn.functional.pad(x, (s, s, s, s), value=self.fill)
        dy = torch.randint(0, 2 * s + 1, (b,), device=x.device)
        dx = torch.randint(0, 2 * s + 1, (b,), device=x.device)
        rows = dy[:, None] + torch.arange(h, device=x.device)[None, :]  # (B, H) rows of the padded image
        cols = dx[:, None] + torch.arange(w, device=x.device)[None, :]  # (B, W)
        bi = torch.arange(b, device=x.device)[:, None, None, None]
        ci = torch.arange(c, device=x.device)[None, :, None, None]
        return padded[bi, ci, rows[:, None, :, None], cols[:, None, None, :]]

    def extra_repr(self) -> str:
        return f"max_shift={self.max_shift}, fill={self.fill}"


def shift_batch(x: torch.Tensor, max_shift: int) -> torch.Tensor:
    """Each sample of ``x`` (B, C, H, W) or (B, C, L) moved by independent random integer offsets in
    [-max_shift, max_shift] per spatial axis; uncovered positions take the mean of the batch's border values
    (the background, whether the inputs are raw or standardised). Other shapes, and max_shift 0, come back
    unchanged."""
    if max_shift == 0 or x.dim() not in (3, 4):
        return x
    if x.dim() == 4:
        border = torch.cat([x[:, :, 0, :], x[:, :, -1, :], x[:, :, :, 0], x[:, :, :, -1]], dim=-1)
    else:
        border = torch.cat([x[:, :, 0], x[:, :, -1]])
    return RandomShift(max_shift, float(border.mean())).train()(x)
