from __future__ import annotations

import pytest
import torch

from lk_segment.unet import UNet


@pytest.mark.parametrize("skip", ["add", "concat"])
@pytest.mark.parametrize("size", [(64, 96), (50, 75), (33, 47)])
def test_output_keeps_input_size_when_not_divisible(skip, size):
    model = UNet("3x3", width=4, depth=3, skip=skip).eval()
    y = model(torch.randn(1, 3, *size))
    assert y.shape == (1, 1, *size)


def test_channels_double_per_level():
    model = UNet("5x5", width=4, depth=3, kernel_size=5)
    outs = [block[0][0].out_channels for block in model.encoder]
    assert outs == [4, 8, 16, 32]


def test_concat_doubles_decoder_input():
    add, cat = UNet("5x5", width=4, depth=2, kernel_size=5), UNet("5x5", width=4, depth=2, skip="concat", kernel_size=5)
    assert add.decoder[0][0][0].in_channels == 8 and cat.decoder[0][0][0].in_channels == 16


def test_bad_skip_is_refused():
    with pytest.raises(ValueError, match="skip"):
        UNet(skip="sum")


def _gradient_support(model: torch.nn.Module, size: int = 129) -> int:
    """Side of the square of input pixels that the centre output pixel depends on."""
    model = model.eval().double()
    with torch.no_grad():  # random positive weights so no gradient cancels out by chance
        for p in model.parameters():
            p.copy_(torch.rand_like(p) + 0.1)
    torch.manual_seed(0)
    x = torch.randn(1, 3, size, size, dtype=torch.double, requires_grad=True)
    c = size // 2
    model(x)[0, 0, c, c].backward()
    rows = torch.nonzero(x.grad.abs().sum((0, 1)).sum(1)).flatten()
    return int(rows.max() - rows.min() + 1)


@pytest.mark.parametrize("block,kernel_size", [("3x3", 3), ("5x5", 5), ("1x5", 5)])
def test_theoretical_receptive_field_matches_gradient_support(block, kernel_size):
    model = UNet(block, width=2, depth=2, kernel_size=kernel_size)
    for m in model.modules():  # ReLU zeroes gradients of negative inputs; all-positive weights avoid it
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()
    assert _gradient_support(model) == model.receptive_field_px()
