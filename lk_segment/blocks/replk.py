"""RepLKNet's block (Ding et al. CVPR 2022, "Scaling Up Your Kernels to 31x31").

Training-time structure: a large depthwise kernel and a small one in parallel, each with its
own BatchNorm. Deploy-time structure, after ``reparameterize()``: every BatchNorm folded into
the conv before it and the small kernel, zero-padded, added into the large one, so inference
runs one depthwise K x K conv.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lk_segment.blocks.layers import conv_bn, conv_bn_act, fuse_conv_bn
from lk_segment.blocks.registry import register_block
from lk_segment.ops import DepthwiseConv2d, memory_format_of


def _fuse_sequential(seq: nn.Module) -> None:
    """In place: (conv, BN[, act]) -> (conv with bias, Identity[, act]); keeps the state-dict keys."""
    if isinstance(seq, nn.Sequential) and isinstance(seq[1], nn.modules.batchnorm._BatchNorm):
        seq[0] = fuse_conv_bn(seq[0], seq[1])
        seq[1] = nn.Identity()


class LargeSmallKernel(nn.Module):
    """Depthwise K x K conv -> BN plus depthwise k x k conv -> BN (k < K), summed."""

    def __init__(self, chs: int, kernel_size: int, small_kernel: int, norm_layer=nn.BatchNorm2d,
                 dw_impl: str = "auto"):
        super().__init__()
        if kernel_size % 2 == 0 or small_kernel % 2 == 0 or small_kernel > kernel_size:
            raise ValueError(f"replk needs odd kernels with small_kernel <= kernel_size, "
                             f"got kernel_size={kernel_size}, small_kernel={small_kernel}")
        self.large = conv_bn(chs, chs, kernel_size, groups=chs, norm_layer=norm_layer)
        # native | fft | auto (the faster, measured per shape): lk_segment/ops, docs/performance.md
        self.large[0], self.dw_impl = DepthwiseConv2d(chs, kernel_size, impl=dw_impl), dw_impl
        self.small = conv_bn(chs, chs, small_kernel, groups=chs, norm_layer=norm_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.large(x) + self.small(x)

    def fused(self) -> nn.Conv2d:
        """One depthwise K x K conv with bias, equal to this module in eval mode."""
        large, small = fuse_conv_bn(*self.large), fuse_conv_bn(*self.small)
        pad = (large.kernel_size[0] - small.kernel_size[0]) // 2
        with torch.no_grad():  # same-padded stride-1 convs: a centred, zero-padded kernel is the same kernel
            large.weight.add_(F.pad(small.weight, (pad, pad, pad, pad)))
            large.bias.add_(small.bias)
        return DepthwiseConv2d.from_conv(large, self.dw_impl)


@register_block("replk")
class RepLKBlock(nn.Module):
    """x + 1x1(act(DW KxK(1x1(x)) + DW kxk(1x1(x)))), the RepLK block.

    Layout: 1 x 1 conv -> BN -> act; depthwise K x K -> BN in parallel with depthwise k x k
    -> BN (``small_kernel``), summed -> act; 1 x 1 conv -> BN; plus the identity shortcut
    (the paper's guideline: large kernels need one). Where the U-Net changes the channel
    count (C_in != C_out) a 1 x 1 conv -> BN -> act first projects the input to C_out, and
    the shortcut is the identity on that projection (Identity when C_in == C_out).
    ``reparameterize()`` folds every BN into its conv and the small kernel into the large
    one, in place, for inference; a model built with ``fused=True`` has the fused layout.
    """

    description = ("RepLKNet (Ding et al. 2022): 1x1 -> depthwise K x K || depthwise k x k (each + BN), summed -> "
                   "ReLU -> 1x1, with an identity shortcut; predict fuses it into one depthwise K x K conv.")
    params_formula = "C_in·C_out + 2·C_out² + (K² + k²)·C_out + 10·C_out (C_in ≠ C_out)"
    formula_symbols = {"K": "kernel_size", "k": "small_kernel"}

    def __init__(self, in_chs: int, out_chs: int, *, kernel_size: int = 13, small_kernel: int | None = None,
                 norm_layer=nn.BatchNorm2d, act_layer=nn.ReLU, dw_impl: str = "auto"):
        super().__init__()
        # the variant's 5 x 5 beside the large kernel by default (configs/variant/replk.yaml), never larger than it
        small_kernel = min(5, kernel_size) if small_kernel is None else small_kernel
        one = (1, 1)
        self.proj = (conv_bn_act(in_chs, out_chs, one, norm_layer=norm_layer, act_layer=act_layer)
                     if in_chs != out_chs else nn.Identity())
        self.pw1 = conv_bn_act(out_chs, out_chs, one, norm_layer=norm_layer, act_layer=act_layer)
        self.large_kernel: nn.Module = LargeSmallKernel(out_chs, kernel_size, small_kernel, norm_layer, dw_impl)
        self.act = act_layer()
        self.pw2 = conv_bn(out_chs, out_chs, 1, norm_layer=norm_layer)
        self.kernel_size = self.rf_extent = kernel_size
        self.small_kernel = small_kernel
        self.fused = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fmt = memory_format_of(x)
        x = self.proj(x)  # (B, C_in, H, W) -> (B, C_out, H, W)
        # PyTorch's CPU depthwise conv runs ~10x faster on channels-last input (oneDNN's path)
        # than on the default layout, fused or not; the values are the same.
        y = self.pw1(x).contiguous(memory_format=torch.channels_last)
        y = self.pw2(self.act(self.large_kernel(y)))
        return (x + y).contiguous(memory_format=fmt)  # the layout the block was given

    @torch.no_grad()
    def reparameterize(self) -> RepLKBlock:
        """Fuse in place for inference (uses the BN running statistics); a second call does nothing."""
        if not self.fused:
            for seq in (self.proj, self.pw1, self.pw2):
                _fuse_sequential(seq)
            self.large_kernel = self.large_kernel.fused()
            self.fused = True
        return self
