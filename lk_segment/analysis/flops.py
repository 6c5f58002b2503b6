"""FLOPs of a forward pass: the cost of an architecture, logged by every training as ``model/gflops``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


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


@contextmanager
def native_depthwise(model: nn.Module) -> Iterator[None]:
    """Run every ``lk_segment.ops.DepthwiseConv2d`` natively inside, then give back its ``impl``.

    FlopCounterMode does not count FFTs, and ``impl="auto"`` would time both implementations
    (under the counter) before choosing one: neither belongs in a count of the architecture.
    """
    from lk_segment.ops import DepthwiseConv2d

    impls = [(module, module.impl) for module in model.modules() if isinstance(module, DepthwiseConv2d)]
    for module, _ in impls:
        module.impl = "native"
    try:
        yield
    finally:
        for module, impl in impls:
            module.impl = impl


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode inside, then every submodule back in the mode it had (a frozen norm stays frozen)."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def _in_chs(model: nn.Module) -> int:
    """The model's input channels: its ``in_chs`` if it says, else its first convolution's."""
    if hasattr(model, "in_chs"):
        return int(model.in_chs)
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            return module.in_channels
    raise ValueError(f"cannot tell the input channels of {type(model).__name__}: give it an in_chs attribute")
