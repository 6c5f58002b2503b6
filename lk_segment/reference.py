"""The plain-PyTorch baseline the bench measures the project against.

A U-Net of the same architecture as ``lk_segment.unet.UNet`` for the seed blocks (3x3, 5x5,
1x5), written the most straightforward way: float32, NCHW, no compile, no Lightning,
trained by the bench's minimal loop (``lk_segment.bench.steps.plain_step``). It shares no code
with the project's model on purpose, so that "project / reference" measures the project's
machinery, not a common cost. Its parameters are created in the same order as the project's,
so tests can copy weights across and check that both compute the same function.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn_relu(in_chs: int, out_chs: int, kh: int, kw: int) -> list[nn.Module]:
    return [nn.Conv2d(in_chs, out_chs, (kh, kw), padding=(kh // 2, kw // 2), bias=False),
            nn.BatchNorm2d(out_chs), nn.ReLU(inplace=True)]


def reference_block(name: str, in_chs: int, out_chs: int, k: int) -> nn.Module:
    if name == "3x3":
        return nn.Sequential(*conv_bn_relu(in_chs, out_chs, k, k), *conv_bn_relu(out_chs, out_chs, k, k))
    if name == "5x5":
        return nn.Sequential(*conv_bn_relu(in_chs, out_chs, k, k))
    if name == "1x5":
        return nn.Sequential(nn.Conv2d(in_chs, out_chs, (1, k), padding=(0, k // 2), bias=False),
                             nn.Conv2d(out_chs, out_chs, (k, 1), padding=(k // 2, 0), bias=False),
                             nn.BatchNorm2d(out_chs), nn.ReLU(inplace=True))
    raise KeyError(name)


REFERENCE_BLOCKS = ("3x3", "5x5", "1x5")


class ReferenceUNet(nn.Module):
    """Encoder of blocks with 2x2 max-pooling, transposed-conv decoder, additive skips, 1x1 head.
    Input sides must be multiples of 2**depth (the bench feeds such sizes)."""

    def __init__(self, block: str = "3x3", width: int = 16, depth: int = 4, kernel_size: int = 3):
        super().__init__()
        chs = [width * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList()
        in_chs = 3
        for c in chs:
            self.down.append(reference_block(block, in_chs, c, kernel_size))
            in_chs = c
        self.up = nn.ModuleList()
        self.up_blocks = nn.ModuleList()
        for i in reversed(range(depth)):
            self.up.append(nn.ConvTranspose2d(chs[i + 1], chs[i], 2, stride=2))
        for i in reversed(range(depth)):
            self.up_blocks.append(reference_block(block, chs[i], chs[i], kernel_size))
        self.head = nn.Conv2d(chs[0], 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            if i > 0:
                x = F.max_pool2d(x, 2)
            x = block(x)
            skips.append(x)
        skips.pop()
        for up, block in zip(self.up, self.up_blocks, strict=True):
            x = block(up(x) + skips.pop())
        return self.head(x)


def reference_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE + soft Dice, as the project's system computes it."""
    prob = torch.sigmoid(logits).flatten(1)
    t = target.flatten(1)
    dice = 1 - (2 * (prob * t).sum(1) + 1) / (prob.sum(1) + t.sum(1) + 1)
    return F.binary_cross_entropy_with_logits(logits, target) + dice.mean()
