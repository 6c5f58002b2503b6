"""Pixel normalisation where the batch already is: on the training or inference device.

The loader sends uint8 images (a quarter of the bytes of float32, and no per-image float work
on a CPU core: ~60 ms per 1024x1536 photo); the device turns them into the model's input.
"""

from __future__ import annotations

import torch
from torch import nn

from lk_segment.data.carvana import MEAN, STD


class Normalize(nn.Module):
    """RGB (B, 3, H, W) in 0..255 (uint8, or float on that scale) -> float32 ``(x - MEAN) / STD``.

    The statistics are buffers, so they move with the module and nothing is copied to the
    device per batch.
    """

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.from_numpy(MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.from_numpy(STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (images.float() - self.mean) / self.std
