"""The FFT depthwise path on a grid padded to a fast size computes the native convolution."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lk_segment.ops.dwconv import fast_fft_size, fft_depthwise_conv2d, fft_grid


def _smooth(n: int) -> bool:
    for p in (2, 3, 5, 7):
        while n % p == 0:
            n //= p
    return n == 1


def test_fast_size_is_the_next_product_of_2_3_5_7():
    assert fast_fft_size(1036) == 1050  # 1024 + 13 - 1 = 4 * 7 * 37 -> 2 * 3 * 5^2 * 7
    assert fast_fft_size(1024) == 1024 and fast_fft_size(1) == 1
    for n in range(1, 600):
        size = fast_fft_size(n)
        assert size >= n and _smooth(size) and not any(_smooth(m) for m in range(n, size))


@pytest.mark.parametrize("h,w,k", [(24, 27, 13), (37, 29, 7), (20, 44, 31)])
def test_padded_grid_gives_the_native_convolution(h, w, k):
    grid = fft_grid(h, w, k, k)
    assert grid != (h + k - 1, w + k - 1)  # these shapes do get padded
    g = torch.Generator().manual_seed(k)
    x, weight, bias = torch.randn(2, 3, h, w, generator=g), torch.randn(3, 1, k, k, generator=g), torch.randn(3)
    grad_out = torch.randn(2, 3, h, w, generator=g)
    results = []
    for fn in (lambda x, w, b: F.conv2d(x, w, b, padding=k // 2, groups=3), fft_depthwise_conv2d):
        xi, wi, bi = (t.clone().requires_grad_(True) for t in (x, weight, bias))
        out = fn(xi, wi, bi)
        out.backward(grad_out)
        results.append([out.detach(), xi.grad, wi.grad, bi.grad])
    for got, want in zip(results[1], results[0], strict=True):
        assert float((got - want).norm() / want.norm()) < 1e-5
