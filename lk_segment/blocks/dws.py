"""Depthwise-separable convolution (MobileNet, Howard et al. 2017; Xception, Chollet 2017)."""

from __future__ import annotations

from torch import nn

from lk_segment.blocks.layers import conv_bn_act
from lk_segment.blocks.registry import register_block


@register_block("dws")
class DepthwiseSeparableBlock(nn.Sequential):
    """Depthwise k x k (one filter per input channel) -> BN -> ReLU, then pointwise 1 x 1
    -> BN -> ReLU, MobileNet's layout.

    The spatial and the channel mixing are split: k^2 weights per channel plus one dense
    1 x 1, so a large k costs little. Params: k^2*C_in + C_in*C_out + 2*C_in + 2*C_out.
    """

    description = ("Depthwise-separable (MobileNet, Howard et al. 2017; Xception): depthwise k x k -> BN -> ReLU, "
                   "then pointwise 1x1 -> BN -> ReLU; the large kernel costs k^2 weights per channel only.")
    params_formula = "k²·C_in + C_in·C_out + 2·C_in + 2·C_out"
    formula_symbols = {"k": "kernel_size"}

    def __init__(self, in_chs: int, out_chs: int, *, kernel_size: int = 7,
                 norm_layer=nn.BatchNorm2d, act_layer=nn.ReLU):
        k = (kernel_size, kernel_size)
        super().__init__(
            conv_bn_act(in_chs, in_chs, k, groups=in_chs, norm_layer=norm_layer, act_layer=act_layer),
            conv_bn_act(in_chs, out_chs, (1, 1), norm_layer=norm_layer, act_layer=act_layer),
        )
        self.kernel_size = self.rf_extent = kernel_size
