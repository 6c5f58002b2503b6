"""The U-Net: a plain nn.Module that knows nothing of Lightning, losses or logging.

Encoder: a block per level, 2x2 max-pooling between levels, channels doubling per level.
Decoder: 2x2 transposed-convolution upsampling, the skip joined by addition (the seed
study's choice) or concatenation, then a block. A 1x1 head gives one logit per pixel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lk_segment.blocks import create_block


def _upsampler(kind: str, in_chs: int, out_chs: int) -> nn.Module:
    if kind == "transpose":
        return nn.ConvTranspose2d(in_chs, out_chs, kernel_size=2, stride=2)
    raise ValueError(f"unknown upsample {kind!r}: choose 'transpose'")


class UNet(nn.Module):
    def __init__(self, block: str = "3x3", *, in_chs: int = 3, num_classes: int = 1,
                 width: int = 16, depth: int = 4, kernel_size: int = 3, skip: str = "add",
                 block_args: dict | None = None):
        super().__init__()
        if skip not in ("add", "concat"):
            raise ValueError(f"unknown skip {skip!r}: choose 'add' or 'concat'")
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        self.depth, self.skip = depth, skip
        self.in_chs = in_chs  # what an analysis needs to build an input (FLOP counting, ERF)
        opts = dict(block_args or {}, kernel_size=kernel_size)
        chs = [width * 2**level for level in range(depth + 1)]  # e.g. 16, 32, 64, 128, 256

        self.encoder = nn.ModuleList(
            [create_block(block, c_in, c_out, **opts) for c_in, c_out in zip([in_chs, *chs[:-1]], chs)]
        )
        self.pool = nn.MaxPool2d(2)
        # Decoder levels from the deepest up: chs[i+1] -> chs[i].
        self.ups = nn.ModuleList([_upsampler("transpose", chs[i + 1], chs[i]) for i in reversed(range(depth))])
        join = 2 if skip == "concat" else 1
        self.decoder = nn.ModuleList(
            [create_block(block, join * chs[i], chs[i], **opts) for i in reversed(range(depth))]
        )
        self.head = nn.Conv2d(chs[0], num_classes, kernel_size=1)

    @property
    def size_multiple(self) -> int:
        """Input sides must be multiples of this; other sizes are padded and cropped back."""
        return 2**self.depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        m = self.size_multiple
        pad_h, pad_w = (-h) % m, (-w) % m
        if pad_h or pad_w:  # (B, C, H, W) -> (B, C, H + pad_h, W + pad_w)
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")

        skips = []
        for level, block in enumerate(self.encoder):
            if level > 0:
                x = self.pool(x)  # (B, C, H, W) -> (B, C, H/2, W/2)
            x = block(x)
            skips.append(x)
        skips.pop()  # the deepest output is x itself
        for up, block in zip(self.ups, self.decoder):
            x = up(x)  # (B, 2C, H, W) -> (B, C, 2H, 2W)
            s = skips.pop()
            x = x + s if self.skip == "add" else torch.cat([x, s], dim=1)
            x = block(x)
        logits = self.head(x)  # (B, C, H, W) -> (B, num_classes, H, W)
        return logits[..., :h, :w]

    def receptive_field_px(self) -> int:
        """Theoretical receptive field (side, in input pixels) of one output pixel.

        Follows the deepest path: each block widens the view by (rf_extent - 1) * jump,
        each 2x2 max-pool by 1 * jump and doubles the jump; a 2x2 stride-2 transposed conv
        maps each output pixel to one input pixel, so it only halves the jump.
        """
        rf, jump = 1, 1
        for level, block in enumerate(self.encoder):
            if level > 0:
                rf += jump
                jump *= 2
            rf += (block.rf_extent - 1) * jump
        for block in self.decoder:
            jump //= 2
            rf += (block.rf_extent - 1) * jump
        return rf
