"""Every registered block, parametrised over the registry: later blocks are covered for free."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lk_segment.blocks import create_block, list_blocks, register_block
from lk_segment.errors import UserError

IN_CHS, OUT_CHS = 6, 8


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


# Parameter count of each block for C_in -> C_out with kernel k (the README's formulas).
PARAM_FORMULAS = {
    "3x3": lambda ci, co, k: k * k * ci * co + k * k * co * co + 4 * co,
    "5x5": lambda ci, co, k: k * k * ci * co + 2 * co,
    "1x5": lambda ci, co, k: k * ci * co + k * co * co + 2 * co,
    "gcn": lambda ci, co, k: 2 * k * ci * co + 2 * k * co * co + 2 * co,
    "dilated": lambda ci, co, k: k * k * ci * co + k * k * co * co + 4 * co,  # two layers by default
    "dws": lambda ci, co, k: k * k * ci + ci * co + 2 * ci + 2 * co,
    "grouped": lambda ci, co, k: k * k * ci * co // math.gcd(4, ci, co) + co * co + 4 * co,  # groups=4 default
    # projection (C_in != C_out) + two 1x1 + depthwise K x K and 3x3 (small_kernel default), BN after each
    "replk": lambda ci, co, k: (ci * co + 2 * co) * (ci != co) + 2 * co * co + (k * k + 9) * co + 8 * co,
    "interp": lambda ci, co, k: 9 * ci * co + 2 * co,  # a 3x3 grid of control values whatever k is
}


@pytest.mark.parametrize("name", list_blocks())
def test_block_forward_backward_shape(name):
    torch.manual_seed(0)
    block = create_block(name, IN_CHS, OUT_CHS)
    x = torch.randn(2, IN_CHS, 20, 28, requires_grad=True)
    y = block(x)
    assert y.shape == (2, OUT_CHS, 20, 28)
    assert torch.isfinite(y).all()
    y.square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    grads = [p.grad for p in block.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert isinstance(block.rf_extent, int) and block.rf_extent >= 1


@pytest.mark.parametrize("name", list_blocks())
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_block_keeps_the_memory_format_it_is_given(name, memory_format):
    # A block that hands the next one another layout costs a copy per block (replk did: 13% of its step).
    block = create_block(name, IN_CHS, OUT_CHS).to(memory_format=memory_format)
    y = block(torch.randn(2, IN_CHS, 20, 28).contiguous(memory_format=memory_format))
    assert y.is_contiguous(memory_format=memory_format)


@pytest.mark.parametrize("name", list_blocks())
@pytest.mark.parametrize("kernel_size", [3, 5, 7])
def test_block_param_count_formula(name, kernel_size):
    assert name in PARAM_FORMULAS, f"add the parameter-count formula of block {name!r} to PARAM_FORMULAS"
    block = create_block(name, IN_CHS, OUT_CHS, kernel_size=kernel_size)
    assert n_params(block) == PARAM_FORMULAS[name](IN_CHS, OUT_CHS, kernel_size)


def test_registry_refuses_duplicate_names():
    with pytest.raises(ValueError, match="already registered"):
        register_block("3x3")(type("Again", (nn.Module,), {}))


def test_unknown_block_lists_valid_names():
    with pytest.raises(UserError, match="choose one of .*1x5.*3x3.*5x5"):
        create_block("7x7", 3, 4)


def test_unknown_block_option_is_named():
    with pytest.raises(UserError, match="rejected its options"):
        create_block("5x5", 3, 4, dilation=2, kernel_size=5)


def test_1x5_is_a_1xk_then_kx1():
    block = create_block("1x5", 3, 4, kernel_size=7)
    shapes = [tuple(m.weight.shape[-2:]) for m in block.modules() if isinstance(m, nn.Conv2d)]
    assert shapes == [(1, 7), (7, 1)]
