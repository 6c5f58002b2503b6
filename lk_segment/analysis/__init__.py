"""What a variant costs and how far it sees, one concern per module:

- ``flops``: GFLOPs of a forward pass (what training logs as ``model/gflops``);
- ``erf``: the effective receptive field of a model, a trained run or a fresh variant
  (``lk-segment erf``; ``lk-segment compare`` logs it for every training);
- ``variants``: the variants table (``lk-segment variants``) and the README's copy of it.

The theoretical receptive field is the U-Net's own arithmetic (``UNet.receptive_field_px``,
from each block's ``rf_extent``). Nothing is imported here, so that importing one of these
(training imports ``flops``) does not load the others; ``eval_mode``, which both measurements use, lives here.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


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

