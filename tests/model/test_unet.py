from __future__ import annotations

import pytest
import torch

from lk_segment.blocks import list_blocks
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
    """Side of the square of input pixels that an output pixel near the centre depends on,
    the largest over the 2**depth output positions (the view depends on the position modulo
    2**depth: upsampling maps two fine pixels to one coarse pixel, or to two).

    The 2x2 max-pool is swapped for an average pool of the same geometry: a max-pool passes
    gradient only to its argmax, which would hide part of what the output depends on.
    """
    model.pool = torch.nn.AvgPool2d(2)
    model = model.eval().double()  # eval: batch statistics would tie every pixel to every other
    with torch.no_grad():  # random positive weights so no gradient cancels out by chance
        for p in model.parameters():
            p.copy_(torch.rand_like(p) + 0.1)
    torch.manual_seed(0)
    x = torch.randn(1, 3, size, size, dtype=torch.double, requires_grad=True)
    y = model(x)
    sides = []
    for offset in range(model.size_multiple):
        c = size // 2 + offset
        (grad,) = torch.autograd.grad(y[0, 0, c, c], x, retain_graph=True)
        rows = torch.nonzero(grad.abs().sum((0, 1)).sum(1)).flatten()
        assert rows.min() > 0 and rows.max() < size - 1, "the view reaches the border: use a larger size"
        sides.append(int(rows.max() - rows.min() + 1))
    return max(sides)


# Every registered block (dilated at k = 3: its 5 x 5 at rate 2 would outgrow the test image),
# then the options that change the receptive field.
# replk runs its native depthwise conv here: an FFT convolution's round-off reaches every pixel.
NATIVE = {"replk": {"block_args": {"dw_impl": "native"}}}
RF_CASES = [(block, 3 if block in ("3x3", "dilated") else 5, NATIVE.get(block, {})) for block in list_blocks()] + [
    ("dilated", 3, {"block_args": {"rates": [1, 2]}}),
    ("replk", 9, {"block_args": {"small_kernel": 5, "dw_impl": "native"}}),
    ("interp", 7, {"block_args": {"positions": [1, 3, 6]}}),
    ("3x3", 3, {"upsample": "bilinear"}),
    ("5x5", 5, {"upsample": "pixelshuffle"}),
    ("1x5", 5, {"boundary_refine": True, "upsample": "bilinear"}),
]
# replk's depthwise kernels and dilated's extra rates take over 2 s of CPU each here: slow.
RF_CASES = [pytest.param(*case, marks=pytest.mark.slow)
            if case[0] == "replk" or "rates" in case[2].get("block_args", {}) else case for case in RF_CASES]


@pytest.mark.parametrize("block,kernel_size,options", RF_CASES, ids=lambda v: str(v).replace(" ", ""))
def test_theoretical_receptive_field_matches_gradient_support(block, kernel_size, options):
    model = UNet(block, width=2, depth=2, kernel_size=kernel_size, **options)
    # ReLU zeroes gradients of negative inputs; all-positive weights and eval-mode BN avoid it
    assert _gradient_support(model) == model.receptive_field_px()
