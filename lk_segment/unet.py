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

UPSAMPLERS = ("transpose", "bilinear", "pixelshuffle")


def icnr_(weight: torch.Tensor, scale: int = 2) -> None:
    """ICNR init (Aitken et al. 2017) of a conv feeding PixelShuffle(scale): the scale^2
    sub-pixel filters of each output channel start equal, so the shuffled output starts as a
    nearest-neighbour upsampling, free of the checkerboard artefact."""
    out_chs = weight.shape[0] // scale**2
    sub = torch.empty(out_chs, *weight.shape[1:])
    nn.init.kaiming_uniform_(sub, a=5**0.5)  # nn.Conv2d's default
    with torch.no_grad():  # PixelShuffle reads output channel c from channels c*scale^2 .. (c+1)*scale^2 - 1
        weight.copy_(sub.repeat_interleave(scale**2, dim=0))


def _upsampler(kind: str, in_chs: int, out_chs: int) -> nn.Module:
    """x2 upsampling, (B, in_chs, H, W) -> (B, out_chs, 2H, 2W). ``rf_extent``: how many
    pixels of the coarse grid (per axis) one fine pixel depends on."""
    if kind == "transpose":  # the seed's: each fine pixel reads one coarse pixel
        up = nn.ConvTranspose2d(in_chs, out_chs, kernel_size=2, stride=2)
        up.rf_extent = 1
    elif kind == "bilinear":  # fixed interpolation (reads two coarse pixels per axis), then a 1x1 conv
        up = nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                           nn.Conv2d(in_chs, out_chs, kernel_size=1))
        up.rf_extent = 2
    elif kind == "pixelshuffle":  # sub-pixel convolution (Shi et al. 2016): 1x1 conv to 4x channels, shuffled
        conv = nn.Conv2d(in_chs, 4 * out_chs, kernel_size=1)
        icnr_(conv.weight)
        with torch.no_grad():
            conv.bias.copy_(conv.bias[::4].repeat_interleave(4))
        up = nn.Sequential(conv, nn.PixelShuffle(2))
        up.rf_extent = 1
    else:
        raise ValueError(f"unknown upsample {kind!r}: choose one of {', '.join(UPSAMPLERS)}")
    return up


class BoundaryRefine(nn.Module):
    """x + conv3x3(relu(conv3x3(x))), "Large Kernel Matters"' boundary refinement: a residual
    that can sharpen object edges (convs with bias, no norm, as in the paper)."""

    rf_extent = 5

    def __init__(self, chs: int):
        super().__init__()
        self.residual = nn.Sequential(nn.Conv2d(chs, chs, 3, padding=1), nn.ReLU(inplace=True),
                                      nn.Conv2d(chs, chs, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.residual(x)


class UNet(nn.Module):
    def __init__(self, block: str = "3x3", *, in_chs: int = 3, num_classes: int = 1,
                 width: int = 16, depth: int = 4, kernel_size: int | None = None, skip: str = "add",
                 block_args: dict | None = None, upsample: str = "transpose", boundary_refine: bool = False,
                 fused: bool = False):
        """``kernel_size=None`` leaves each block at its own default k. ``fused=True`` builds the
        deploy-time layout (see ``reparameterize``), the one a fused checkpoint's weights load into."""
        super().__init__()
        if skip not in ("add", "concat"):
            raise ValueError(f"unknown skip {skip!r}: choose 'add' or 'concat'")
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        self.depth, self.skip = depth, skip
        self.in_chs = in_chs  # what an analysis needs to build an input (FLOP counting, ERF)
        opts = dict(block_args or {}, **({} if kernel_size is None else {"kernel_size": kernel_size}))
        chs = [width * 2**level for level in range(depth + 1)]  # e.g. 16, 32, 64, 128, 256

        self.encoder = nn.ModuleList(
            [create_block(block, c_in, c_out, **opts) for c_in, c_out in zip([in_chs, *chs[:-1]], chs, strict=True)]
        )
        self.pool = nn.MaxPool2d(2)
        # Decoder levels from the deepest up: chs[i+1] -> chs[i].
        self.ups = nn.ModuleList([_upsampler(upsample, chs[i + 1], chs[i]) for i in reversed(range(depth))])
        join = 2 if skip == "concat" else 1
        self.decoder = nn.ModuleList(
            [create_block(block, join * chs[i], chs[i], **opts) for i in reversed(range(depth))]
        )
        self.refine = nn.ModuleList(
            [BoundaryRefine(chs[i]) if boundary_refine else nn.Identity() for i in reversed(range(depth))]
        )
        self.head = nn.Conv2d(chs[0], num_classes, kernel_size=1)
        if fused:
            self.reparameterize()

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
        for up, block, refine in zip(self.ups, self.decoder, self.refine, strict=True):
            x = up(x)  # (B, 2C, H, W) -> (B, C, 2H, 2W)
            s = skips.pop()
            x = x + s if self.skip == "add" else torch.cat([x, s], dim=1)
            x = refine(block(x))
        logits = self.head(x)  # (B, C, H, W) -> (B, num_classes, H, W)
        return logits[..., :h, :w]

    def receptive_field_px(self) -> int:
        """Theoretical receptive field: the side of the square of input pixels that an output
        pixel depends on, the largest over output positions.

        Exact, by interval arithmetic along one axis: upsampling makes the view depend on the
        output pixel's position modulo 2**depth (two neighbouring fine pixels read the same
        coarse pixel, or two different ones), so the usual "rf += (k - 1) * jump" rule is off
        by a few pixels for some blocks and options; this walks every path back to the input
        for each of the 2**depth positions instead.
        """
        return max(hi - lo + 1 for lo, hi in map(self._input_span, range(self.size_multiple)))

    def _input_span(self, n: int) -> tuple[int, int]:
        """[lo, hi]: the input pixels (one axis) that output pixel ``n`` depends on, via the
        decoder and every skip. A block of extent e widens an interval by (e - 1) // 2 and
        e // 2; a 2x2 pool maps coarse [a, b] to fine [2a, 2b + 1]; an upsampler whose fine
        pixel reads e coarse pixels maps fine [a, b] to coarse [(a - e + 1) // 2, (b + e - 1) // 2]
        (e = 1: transposed conv, pixel shuffle; e = 2: bilinear)."""

        def widen(lo: int, hi: int, module: nn.Module) -> tuple[int, int]:
            extent = getattr(module, "rf_extent", 1)  # nn.Identity: 1
            return lo - (extent - 1) // 2, hi + extent // 2

        def through_encoder(level: int, lo: int, hi: int) -> tuple[int, int]:
            for i in reversed(range(level + 1)):
                lo, hi = widen(lo, hi, self.encoder[i])
                if i > 0:
                    lo, hi = 2 * lo, 2 * hi + 1  # back through the 2x2 max-pool
            return lo, hi

        lo = hi = n
        spans = []
        for j in reversed(range(self.depth)):  # decoder j works at level depth - 1 - j
            lo, hi = widen(*widen(lo, hi, self.refine[j]), self.decoder[j])
            spans.append(through_encoder(self.depth - 1 - j, lo, hi))  # the skip
            e = self.ups[j].rf_extent
            lo, hi = (lo - e + 1) // 2, (hi + e - 1) // 2
        spans.append(through_encoder(self.depth, lo, hi))
        return min(s[0] for s in spans), max(s[1] for s in spans)

    def reparameterize(self) -> UNet:
        """Fuse, in place, every block that has a deploy-time form (``replk``): the same
        function in eval mode, cheaper to run. Blocks without one are left as they are."""
        for block in [*self.encoder, *self.decoder]:
            if hasattr(block, "reparameterize"):
                block.reparameterize()
        return self
