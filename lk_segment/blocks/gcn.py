"""Global Convolutional Network block (Peng et al. 2017, "Large Kernel Matters")."""

from __future__ import annotations

import torch
from torch import nn

from lk_segment.blocks.layers import same_padding
from lk_segment.blocks.registry import register_block


def _conv(in_chs: int, out_chs: int, kernel_size: tuple[int, int]) -> nn.Conv2d:
    return nn.Conv2d(in_chs, out_chs, kernel_size, padding=same_padding(kernel_size), bias=False)


@register_block("gcn")
class GlobalConvBlock(nn.Module):
    """Two branches summed, (k x 1 -> 1 x k) + (1 x k -> k x 1), then BN -> ReLU.

    A dense k x k view for 4k weights per channel pair instead of k^2. The paper puts no
    norm or activation inside the pair (the two branches together act as one linear k x k
    kernel of rank two); the norm and activation come after the sum so the block fits the
    U-Net like the others. The branches must be mirror images of each other: with the same
    order in both, the sum is a rank-one kernel counted twice.
    """

    description = ('Global Convolutional Network ("Large Kernel Matters", Peng et al. 2017): (k x 1 -> 1 x k) + '
                   "(1 x k -> k x 1), then BatchNorm -> ReLU; a dense k x k view for 4k weights per channel pair.")
    params_formula = "2k·C_in·C_out + 2k·C_out² + 2·C_out"
    formula_symbols = {"k": "kernel_size"}

    def __init__(self, in_chs: int, out_chs: int, *, kernel_size: int = 7,
                 norm_layer=nn.BatchNorm2d, act_layer=nn.ReLU):
        super().__init__()
        k = kernel_size
        self.left = nn.Sequential(_conv(in_chs, out_chs, (k, 1)), _conv(out_chs, out_chs, (1, k)))
        self.right = nn.Sequential(_conv(in_chs, out_chs, (1, k)), _conv(out_chs, out_chs, (k, 1)))
        self.norm = norm_layer(out_chs)
        self.act = act_layer(inplace=True)
        self.kernel_size = self.rf_extent = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.left(x) + self.right(x)))
