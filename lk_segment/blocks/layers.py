"""Layer helpers the blocks are built from (timm keeps these apart from its registry too)."""

from __future__ import annotations

import torch
from torch import nn


def same_padding(kernel_size: tuple[int, int], dilation: tuple[int, int] = (1, 1)) -> tuple[int, int]:
    """Padding that keeps the spatial size at stride 1, per axis: a (1, 5) kernel gets (0, 2)."""
    return tuple(d * (k - 1) // 2 for k, d in zip(kernel_size, dilation, strict=True))  # type: ignore[return-value]


def conv_bn_act(in_chs: int, out_chs: int, kernel_size: tuple[int, int], *, dilation: int = 1,
                groups: int = 1, norm_layer=nn.BatchNorm2d, act_layer=nn.ReLU) -> nn.Sequential:
    """conv (no bias: the norm has one) -> norm -> activation, size-preserving."""
    dil = (dilation, dilation)
    return nn.Sequential(
        nn.Conv2d(in_chs, out_chs, kernel_size, padding=same_padding(kernel_size, dil),
                  dilation=dil, groups=groups, bias=False),
        norm_layer(out_chs),
        act_layer(inplace=True),
    )


def conv_bn(in_chs: int, out_chs: int, kernel_size: int, *, groups: int = 1,
            norm_layer=nn.BatchNorm2d) -> nn.Sequential:
    """Square conv (no bias) -> norm, size-preserving: a branch that is summed before its activation."""
    k = (kernel_size, kernel_size)
    return nn.Sequential(nn.Conv2d(in_chs, out_chs, k, padding=same_padding(k), groups=groups, bias=False),
                         norm_layer(out_chs))


def fuse_conv_bn(conv: nn.Conv2d, bn: nn.Module) -> nn.Conv2d:
    """The conv (with bias) equal to ``bn(conv(x))`` in eval mode: BN scales each output
    channel by gamma/std and shifts it by beta - mean*gamma/std."""
    if not isinstance(bn, nn.modules.batchnorm._BatchNorm):
        raise TypeError(f"only BatchNorm can be folded into a conv, got {type(bn).__name__}")
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # (C_out,)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                      padding=conv.padding, dilation=conv.dilation, groups=conv.groups, bias=True)
    with torch.no_grad():
        fused.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
        fused.bias.copy_(bn.bias + (bias - bn.running_mean) * scale)
    return fused.to(conv.weight.device)
