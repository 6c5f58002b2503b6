"""Dilated (atrous) convolutions: a wider view for the weights of a 3x3."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from lk_segment.blocks.layers import conv_bn_act
from lk_segment.blocks.registry import register_block


@register_block("dilated")
class DilatedConvBlock(nn.Sequential):
    """A stack of (k x k conv with dilation d -> BN -> ReLU), two layers at rate ``dilation``
    by default (Yu & Koltun 2016, DeepLab).

    Stacking one rate leaves a grid of input pixels no output ever sees (the gridding
    artefact); ``rates`` (e.g. [1, 2, 3], "hybrid dilated convolution", Wang et al. 2018)
    gives one layer per rate instead, with no common factor so the holes fill in.
    """

    description = ("Two 3x3 convs at dilation 2, each -> BN -> ReLU (Yu & Koltun 2016, DeepLab): a 9x9 view for the "
                   "weights of a 3x3; block_args.rates=[1,2,3] is the hybrid schedule against gridding "
                   "(Wang et al. 2018).")
    params_formula = "k²·C_in·C_out + (L−1)·k²·C_out² + 2L·C_out (L layers, 2 by default)"
    formula_symbols = {"k": "kernel_size", "L": "layers"}

    def __init__(self, in_chs: int, out_chs: int, *, kernel_size: int = 3, dilation: int = 2,
                 rates: Sequence[int] | None = None, norm_layer=nn.BatchNorm2d, act_layer=nn.ReLU):
        rates = [int(r) for r in rates] if rates else [dilation, dilation]
        if min(rates) < 1:
            raise ValueError(f"dilation rates must be >= 1, got {rates}")
        k = (kernel_size, kernel_size)
        chs = [in_chs] + [out_chs] * len(rates)
        super().__init__(*[conv_bn_act(c_in, c_out, k, dilation=r, norm_layer=norm_layer, act_layer=act_layer)
                           for c_in, c_out, r in zip(chs[:-1], chs[1:], rates, strict=True)])
        self.rates, self.layers, self.kernel_size = rates, len(rates), kernel_size
        self.rf_extent = 1 + sum(r * (kernel_size - 1) for r in rates)
