"""Large-kernel depthwise convolution: PyTorch's native kernel or an FFT convolution.

PyTorch's depthwise kernel does K*K multiply-adds per output pixel, so its cost grows with
the square of the kernel side (RepLKNet reports it slow at 31x31). An FFT convolution costs
O(log(H*W)) per pixel whatever K is, but pays transforms, padding and complex products; which
one wins depends on the shape, the device and the dtype, so ``impl="auto"`` times both on the
first call with a given shape, 5 times each in turns, and keeps the one with the smaller
median (``choose_dw_impl``).

The FFT grid is padded to the next size whose only prime factors are 2, 3, 5 and 7, which
cuFFT and pocketfft transform fast (H + K - 1 = 1036 at 1024 + 13 - 1 is 4 * 7 * 37: 1050).
Both compute the same function (zero padding, "same" output size, odd K, stride 1):
tests/model/test_depthwise_paths.py checks float32 relative error < 1e-5, forward and backward, padded or not.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

DW_IMPLS = ("auto", "native", "fft")

# (impl-independent shape key) -> "native" | "fft"; measured once per process and shape.
_CHOICES: dict[tuple, str] = {}


def fast_fft_size(n: int) -> int:
    """The smallest size >= ``n`` whose prime factors are all 2, 3, 5 or 7."""
    size = n
    while True:
        rest = size
        for p in (2, 3, 5, 7):
            while rest % p == 0:
                rest //= p
        if rest == 1:
            return size
        size += 1


def fft_grid(h: int, w: int, kh: int, kw: int) -> tuple[int, int]:
    """The FFT grid of an (h, w) input and a (kh, kw) kernel: the linear-convolution size
    (h + kh - 1, w + kw - 1) padded to fast sizes."""
    return fast_fft_size(h + kh - 1), fast_fft_size(w + kw - 1)


def fft_depthwise_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, padding=K//2, groups=C)`` for odd K, computed with real FFTs.

    Cross-correlation of the zero-padded input with w is circular convolution with the flipped
    kernel on any grid of at least (H + K - 1, W + K - 1): the wrap-around then lands in the
    first K - 1 rows and columns only, and the H x W outputs after them are exact. The grid is
    that size padded to a fast one (``fft_grid``). Runs in float32 (cuFFT and pocketfft have
    no bfloat16) and returns the input's dtype.
    """
    c, one, kh, kw = weight.shape
    if one != 1 or x.shape[1] != c or kh % 2 == 0 or kw % 2 == 0:
        raise ValueError(f"depthwise weight (C, 1, odd, odd) expected for {x.shape[1]} channels, "
                         f"got {tuple(weight.shape)}")
    h, w = x.shape[-2:]
    xp = F.pad(x.float(), (kw // 2, kw // 2, kh // 2, kh // 2))  # (B, C, H, W) -> (B, C, H+K-1, W+K-1)
    grid = fft_grid(h, w, kh, kw)  # rfft2 zero-pads both to the grid: (B, C, Gh, Gw/2+1)
    spec = torch.fft.rfft2(xp, s=grid) * torch.fft.rfft2(weight.float().flip(-2, -1)[:, 0], s=grid)
    out = torch.fft.irfft2(spec, s=grid)[..., kh - 1 : kh - 1 + h, kw - 1 : kw - 1 + w]  # -> (B, C, H, W)
    if bias is not None:
        out = out + bias.float().view(1, c, 1, 1)
    return out.to(x.dtype).contiguous(memory_format=memory_format_of(x))


def memory_format_of(x: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) \
        and not x.is_contiguous() else torch.contiguous_format


def native_depthwise_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    kh, kw = weight.shape[-2:]
    return F.conv2d(x, weight, bias, padding=(kh // 2, kw // 2), groups=weight.shape[0])


_FUNCTIONS = {"native": native_depthwise_conv2d, "fft": fft_depthwise_conv2d}


def time_dw_impls(x: torch.Tensor, weight: torch.Tensor, backward: bool = True, repeats: int = 5) -> dict[str, float]:
    """Median ms of one forward (+ backward) of each impl on fresh copies of x and weight, the
    impls taking turns, after one untimed call each (allocations, FFT plans, cuDNN's choice)."""
    from lk_segment.timing import time_in_turns

    x = x.detach().clone().requires_grad_(backward)
    weight = weight.detach().clone().requires_grad_(backward)

    def call(fn):
        def run() -> None:
            x.grad = weight.grad = None  # each repeat writes its gradients afresh, none accumulates
            out = fn(x, weight)
            if backward:
                out.float().sum().backward()

        return run

    timings = time_in_turns({impl: call(fn) for impl, fn in _FUNCTIONS.items()}, repeats, 1, x.device)
    return {impl: t.median_ms for impl, t in timings.items()}


def _shape_key(x: torch.Tensor, weight: torch.Tensor, backward: bool) -> tuple:
    return (tuple(x.shape), tuple(weight.shape), x.dtype, x.device.type, backward,
            x.is_contiguous(memory_format=torch.channels_last), torch.is_autocast_enabled(x.device.type))


def choose_dw_impl(x: torch.Tensor, weight: torch.Tensor, backward: bool = True) -> str:
    """The faster of native and FFT for this shape, dtype, device and autocast state, measured
    once per process and remembered."""
    key = _shape_key(x, weight, backward)
    if key not in _CHOICES:
        with torch.enable_grad() if backward else torch.no_grad():
            times = time_dw_impls(x, weight, backward)
        _CHOICES[key] = min(times, key=times.get)
    return _CHOICES[key]


class DepthwiseConv2d(nn.Conv2d):
    """A depthwise, size-keeping k x k ``nn.Conv2d`` (same weights, same state_dict) whose
    forward runs natively, by FFT, or by whichever is faster for the shape (``impl="auto"``).

    Under ``torch.compile`` the auto choice is not measured (timing inside a trace means
    nothing): it uses the choice already made for that shape, else the native kernel; on the
    meta device (counting FLOPs and bytes) there is nothing to time: native.
    """

    def __init__(self, channels: int, kernel_size: int, *, bias: bool = False, impl: str = "auto"):
        if impl not in DW_IMPLS:
            raise ValueError(f"unknown depthwise impl {impl!r}: choose one of {', '.join(DW_IMPLS)}")
        super().__init__(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels, bias=bias)
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd for a size-keeping depthwise conv, got {kernel_size}")
        self.impl = impl

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, impl: str = "auto") -> DepthwiseConv2d:
        """The same depthwise conv (weights, bias) with the given ``impl``: e.g. a fused one."""
        out = cls(conv.out_channels, conv.kernel_size[0], bias=conv.bias is not None, impl=impl)
        out.load_state_dict(conv.state_dict())
        return out.to(conv.weight.device)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", impl={self.impl}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        impl = self.impl
        if impl == "auto":
            impl = self._auto(x)
        return _FUNCTIONS[impl](x, self.weight, self.bias)

    def _auto(self, x: torch.Tensor) -> str:
        backward = torch.is_grad_enabled() and self.weight.requires_grad
        if x.is_meta:
            return "native"
        if torch.compiler.is_compiling():
            return _CHOICES.get(_shape_key(x, self.weight, backward), "native")
        return choose_dw_impl(x, self.weight, backward)


@contextmanager
def native_depthwise(model: nn.Module) -> Iterator[None]:
    """Run every ``lk_segment.ops.DepthwiseConv2d`` natively inside, then give back its ``impl``.

    FlopCounterMode does not count FFTs, and ``impl="auto"`` would time both implementations
    (under the counter) before choosing one: neither belongs in a count of the architecture.
    """
    impls = [(module, module.impl) for module in model.modules() if isinstance(module, DepthwiseConv2d)]
    for module, _ in impls:
        module.impl = "native"
    try:
        yield
    finally:
        for module, impl in impls:
            module.impl = impl
