"""FLOPs of a forward pass: the cost of an architecture, logged by every training as ``model/gflops``."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from lk_segment.analysis import eval_mode
from lk_segment.ops import native_depthwise


def count_gflops(model: nn.Module, size: tuple[int, int]) -> float:
    """GFLOPs of one forward pass of one image of ``size`` (height, width).

    Counted by ``torch.utils.flop_counter.FlopCounterMode``: a multiply-add is 2 FLOPs, and
    only the matrix products and convolutions count (BatchNorm, activations, pooling and
    additions are a rounding error beside them). The model runs once in eval mode on meta
    copies of its parameters and buffers (shapes only, no arithmetic: free at the training
    size, and nothing of the model moves). This is the cost of the architecture, not of one
    implementation: depthwise convolutions that may run by FFT are counted as direct ones.
    """
    from itertools import chain

    from torch.func import functional_call

    meta = {name: torch.empty_like(t, device="meta") for name, t in chain(model.named_parameters(),
                                                                            model.named_buffers())}
    x = torch.zeros(1, _in_chs(model), *size, dtype=next(model.parameters()).dtype, device="meta")
    counter = FlopCounterMode(display=False)
    with eval_mode(model), native_depthwise(model), counter, torch.no_grad():
        functional_call(model, meta, (x,))
    return counter.get_total_flops() / 1e9


def _in_chs(model: nn.Module) -> int:
    """The model's input channels: its ``in_chs`` if it says, else its first convolution's."""
    if hasattr(model, "in_chs"):
        return int(model.in_chs)
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            return module.in_channels
    raise ValueError(f"cannot tell the input channels of {type(model).__name__}: give it an in_chs attribute")
