"""The seed study's three blocks: 3x3 (twice), 5x5, and 5x5 factorised into 1x5 then 5x1."""

from __future__ import annotations

from torch import nn

from lk_segment.blocks.layers import conv_bn_act, same_padding
from lk_segment.blocks.registry import register_block


@register_block("3x3")
class DoubleConv3x3(nn.Sequential):
    """Two of (3x3 conv -> BN -> ReLU), the classic U-Net block (Ronneberger et al. 2015)."""

    description = "Two of (3x3 conv -> BatchNorm -> ReLU): the classic U-Net block, a 5x5 view."
    params_formula = "k²·C_in·C_out + k²·C_out² + 4·C_out"
    formula_symbols = {"k": "kernel_size"}

    def __init__(self, in_chs: int, out_chs: int, *, kernel_size: int = 3,
                 norm_layer=nn.BatchNorm2d, act_layer=nn.ReLU):
        k = (kernel_size, kernel_size)
        super().__init__(
            conv_bn_act(in_chs, out_chs, k, norm_layer=norm_layer, act_layer=act_layer),
            conv_bn_act(out_chs, out_chs, k, norm_layer=norm_layer, act_layer=act_layer),
        )
        self.kernel_size, self.rf_extent = kernel_size, 2 * kernel_size - 1


@register_block("5x5")
class Conv5x5(nn.Sequential):
    """One (k x k conv -> BN -> ReLU), k = 5 by default: the same 5x5 view as two 3x3."""

    description = "One (5x5 conv -> BatchNorm -> ReLU): the same 5x5 view as two 3x3, in one layer."
    params_formula = "k²·C_in·C_out + 2·C_out"
    formula_symbols = {"k": "kernel_size"}

    def __init__(self, in_chs: int, out_chs: int, *, kernel_size: int = 5,
                 norm_layer=nn.BatchNorm2d, act_layer=nn.ReLU):
        super().__init__(conv_bn_act(in_chs, out_chs, (kernel_size, kernel_size),
                                     norm_layer=norm_layer, act_layer=act_layer))
        self.kernel_size = self.rf_extent = kernel_size


@register_block("1x5")
class Conv1xkKx1(nn.Sequential):
    """1 x k conv then k x 1 conv (no norm between), then BN -> ReLU.

    The rank-factorised k x k of "Large Kernel Matters" (Peng et al. 2017): the same k x k
    view for 2k/k^2 of the weights when C_in = C_out.
    """

    description = 'The 5x5 factorised into 1x5 then 5x1 ("Large Kernel Matters"), then BatchNorm -> ReLU.'
    params_formula = "k·C_in·C_out + k·C_out² + 2·C_out"
    formula_symbols = {"k": "kernel_size"}

    def __init__(self, in_chs: int, out_chs: int, *, kernel_size: int = 5,
                 norm_layer=nn.BatchNorm2d, act_layer=nn.ReLU):
        k = kernel_size
        super().__init__(
            nn.Conv2d(in_chs, out_chs, (1, k), padding=same_padding((1, k)), bias=False),
            nn.Conv2d(out_chs, out_chs, (k, 1), padding=same_padding((k, 1)), bias=False),
            norm_layer(out_chs),
            act_layer(inplace=True),
        )
        self.kernel_size = self.rf_extent = k
