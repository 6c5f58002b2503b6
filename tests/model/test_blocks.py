"""Every registered block, parametrised over the registry: later blocks are covered for free."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lk_segment.blocks import create_block, list_blocks, register_block, registry
from lk_segment.blocks.contract import formula_values, params_from_formula
from lk_segment.errors import UserError

IN_CHS, OUT_CHS = 6, 8


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


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
def test_block_params_formula_counts_its_parameters(name, kernel_size):
    # The README shows params_formula: evaluated with the built block's own values, it must be exact.
    block = create_block(name, IN_CHS, OUT_CHS, kernel_size=kernel_size)
    assert n_params(block) == params_from_formula(block.params_formula, formula_values(block, IN_CHS, OUT_CHS))


def test_formula_reads_the_readme_notation():
    values = {"k": 3, "C_in": 4, "C_out": 2, "g": 2, "L": 3}
    assert params_from_formula("k²·C_in·C_out/g + (L−1)·2 (a note)", values) == 9 * 4 * 2 / 2 + 2 * 2
    assert params_from_formula("2k·C_out + 3(C_in − 1)", values) == 2 * 3 * 2 + 3 * 3
    with pytest.raises(ValueError, match="formula_symbols"):
        params_from_formula("n²·C_out", {"C_out": 1})
    with pytest.raises(ValueError, match="cannot read params_formula"):
        params_from_formula("k·", {"k": 1})


class _StandIn(nn.Conv2d):
    """A stand-in for a new block, built from the three attributes a block must provide."""

    description = "A 3x3 conv."
    params_formula = "9·C_in·C_out + C_out"
    formula_symbols: dict = {}

    def __init__(self, in_chs, out_chs, **_):
        super().__init__(in_chs, out_chs, 3, padding=1)
        self.rf_extent = 3


@pytest.mark.parametrize("missing,message", [
    ("description", "needs a one-line class attribute description"),
    ("params_formula", "needs a class attribute params_formula"),
    ("formula_symbols", "name the block attribute it stands for in formula_symbols"),
])
def test_registry_refuses_a_block_that_does_not_say_what_it_is_or_costs(missing, message):
    attrs = {"description": "x", "params_formula": "k²·C_in·C_out", "formula_symbols": {"k": "kernel_size"}}
    attrs.pop(missing)
    with pytest.raises(TypeError, match=message):
        register_block(f"lacks-{missing}")(type("Lacking", (nn.Module,), attrs))
    assert f"lacks-{missing}" not in list_blocks()


def test_create_block_refuses_a_block_without_rf_extent(monkeypatch):
    monkeypatch.setattr(registry, "_BLOCKS", dict(registry._BLOCKS))  # the registry is left as it was
    register_block("stand-in")(_StandIn)
    assert n_params(create_block("stand-in", 2, 5)) == 9 * 2 * 5 + 5
    monkeypatch.setattr(_StandIn, "__init__", lambda self, i, o, **_: nn.Conv2d.__init__(self, i, o, 3, padding=1))
    with pytest.raises(TypeError, match="must set self.rf_extent in __init__"):
        create_block("stand-in", 2, 5)


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
