"""Every large-kernel depthwise path computes the same function as PyTorch's native conv."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lk_segment.ops import DW_IMPLS, DepthwiseConv2d, choose_dw_impl, fft_depthwise_conv2d


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("k", [3, 7, 13, 31])
def test_fft_matches_native_forward_and_backward(k):
    g = torch.Generator().manual_seed(k)
    x = torch.randn(2, 4, 37, 29, generator=g)  # odd, non-square sides smaller than K=31
    w = torch.randn(4, 1, k, k, generator=g)
    b = torch.randn(4, generator=g)
    grad_out = torch.randn(2, 4, 37, 29, generator=g)
    outs, grads = [], []
    for fn in (lambda x, w, b: F.conv2d(x, w, b, padding=k // 2, groups=4), fft_depthwise_conv2d):
        xi, wi, bi = (t.clone().requires_grad_(True) for t in (x, w, b))
        out = fn(xi, wi, bi)
        out.backward(grad_out)
        outs.append(out.detach())
        grads.append([xi.grad, wi.grad, bi.grad])
    assert outs[1].shape == outs[0].shape
    assert rel_err(outs[1], outs[0]) < 1e-5
    for got, want in zip(grads[1], grads[0], strict=True):
        assert rel_err(got, want) < 1e-5


@pytest.mark.parametrize("impl", DW_IMPLS)
def test_module_impls_agree_and_share_weights(impl):
    torch.manual_seed(0)
    ref = torch.nn.Conv2d(6, 6, 13, padding=6, groups=6, bias=False)
    conv = DepthwiseConv2d(6, 13, impl=impl)
    conv.load_state_dict(ref.state_dict())  # same parameters, same names as nn.Conv2d
    x = torch.randn(1, 6, 24, 40)
    assert rel_err(conv(x), ref(x)) < 1e-5
    x_cl = x.contiguous(memory_format=torch.channels_last)
    assert rel_err(conv(x_cl), ref(x)) < 1e-5


def test_auto_choice_is_a_real_impl_and_remembered(monkeypatch):
    import lk_segment.ops.dwconv as dwconv

    timed = []
    real = dwconv.time_dw_impls
    monkeypatch.setattr(dwconv, "time_dw_impls", lambda *a, **k: timed.append(1) or real(*a, **k))
    monkeypatch.setattr(dwconv, "_CHOICES", {})  # this test's own memory, whatever ran before
    x, w = torch.randn(1, 2, 16, 16), torch.randn(2, 1, 7, 7)
    first = choose_dw_impl(x, w)
    assert first in ("native", "fft") and len(timed) == 1
    assert choose_dw_impl(x, w) == first and len(timed) == 1  # remembered: not timed again
    choose_dw_impl(torch.randn(1, 2, 18, 16), w)
    assert len(timed) == 2  # another shape is timed


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="impl"):
        DepthwiseConv2d(4, 7, impl="winograd")
    with pytest.raises(ValueError, match="odd"):
        DepthwiseConv2d(4, 6)
    with pytest.raises(ValueError, match="depthwise"):
        fft_depthwise_conv2d(torch.randn(1, 4, 8, 8), torch.randn(4, 2, 3, 3))


def test_replk_dw_impl_option_keeps_the_function_fused_or_not():
    from lk_segment.blocks import create_block

    torch.manual_seed(0)
    native = create_block("replk", 4, 6, kernel_size=9, small_kernel=3, dw_impl="native").eval()
    fft = create_block("replk", 4, 6, kernel_size=9, small_kernel=3, dw_impl="fft").eval()
    fft.load_state_dict(native.state_dict())  # the option changes no parameter
    x = torch.randn(2, 4, 20, 28)
    with torch.no_grad():
        want = native(x)
        assert rel_err(fft(x), want) < 1e-5
        assert rel_err(fft.reparameterize()(x), want) < 1e-5  # the fused conv keeps the FFT path
    assert isinstance(fft.large_kernel, DepthwiseConv2d) and fft.large_kernel.impl == "fft"
