"""Grouped convolution (ResNeXt, Xie et al. 2017)."""

from __future__ import annotations

import math

from torch import nn

from lk_segment.blocks.layers import conv_bn_act
from lk_segment.blocks.registry import register_block


@register_block("grouped")
class GroupedConvBlock(nn.Sequential):
    """k x k conv with ``groups`` groups -> BN -> ReLU, then 1 x 1 -> BN -> ReLU.

    Each group sees only its share of the input channels, so the k x k costs 1/g of a dense
    one. The 1 x 1 after it mixes the groups (as ResNeXt's bottleneck does); without it the
    U-Net's encoder would split into g networks that never exchange a feature. The number of
    groups used is gcd(groups, C_in, C_out), so the 3-channel input block stays dense.
    """

    description = ("Grouped k x k conv with g = 4 groups (ResNeXt, Xie et al. 2017) -> BN -> ReLU, then a 1x1 conv "
                   "-> BN -> ReLU that mixes the groups; the k x k costs 1/g of a dense one.")
    params_formula = "k²·C_in·C_out/g + C_out² + 4·C_out"
    formula_symbols = {"k": "kernel_size", "g": "groups"}

    def __init__(self, in_chs: int, out_chs: int, *, kernel_size: int = 3, groups: int = 4,
                 norm_layer=nn.BatchNorm2d, act_layer=nn.ReLU):
        if groups < 1:
            raise ValueError(f"groups must be >= 1, got {groups}")
        used = math.gcd(groups, in_chs, out_chs)
        k = (kernel_size, kernel_size)
        super().__init__(
            conv_bn_act(in_chs, out_chs, k, groups=used, norm_layer=norm_layer, act_layer=act_layer),
            conv_bn_act(out_chs, out_chs, (1, 1), norm_layer=norm_layer, act_layer=act_layer),
        )
        self.groups = used
        self.kernel_size = self.rf_extent = kernel_size
