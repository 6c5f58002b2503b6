"""Grouped convolution (ResNeXt, Xie et al. 2017)."""

from __future__ import annotations

import math

from torch import nn

from lk_segment.blocks.registry import conv_bn_act, register_block


@register_block("grouped")
class GroupedConvBlock(nn.Sequential):
    """k x k conv with ``groups`` groups -> BN -> ReLU, then 1 x 1 -> BN -> ReLU.

    Each group sees only its share of the input channels, so the k x k costs 1/g of a dense
    one. The 1 x 1 after it mixes the groups (as ResNeXt's bottleneck does); without it the
    U-Net's encoder would split into g networks that never exchange a feature. The number of
    groups used is gcd(groups, C_in, C_out), so the 3-channel input block stays dense.
    Params (g the groups used): k^2*C_in*C_out/g + C_out^2 + 4*C_out.
    """

    params_formula = "k²·C_in·C_out/g + C_out² + 4·C_out"

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
        self.rf_extent = kernel_size
