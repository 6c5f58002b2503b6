"""Interpolated kernels: a large dense kernel drawn through a few learnable control values."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lk_segment.blocks.layers import same_padding
from lk_segment.blocks.registry import register_block


def control_positions(kernel_size: int, control_points: int) -> list[int]:
    """``control_points`` integer positions spread evenly over 0 .. kernel_size - 1, ends included."""
    if control_points < 2 or control_points > kernel_size:
        raise ValueError(f"control_points must be in 2..kernel_size ({kernel_size}), got {control_points}")
    return [round(i * (kernel_size - 1) / (control_points - 1)) for i in range(control_points)]


def interpolation_matrix(kernel_size: int, positions: Sequence[int]) -> torch.Tensor:
    """(kernel_size, n) matrix A with A @ v = the piecewise-linear curve through the values v
    at ``positions`` (constant beyond the first and last); row p_i of A is one-hot, so the
    curve passes exactly through each control value."""
    pos = [int(p) for p in positions]
    if sorted(set(pos)) != pos or pos[0] < 0 or pos[-1] >= kernel_size:
        raise ValueError(f"positions must increase strictly within 0..{kernel_size - 1}, got {list(positions)}")
    a = torch.zeros(kernel_size, len(pos))
    for t in range(kernel_size):
        if t <= pos[0]:
            a[t, 0] = 1.0
        elif t >= pos[-1]:
            a[t, -1] = 1.0
        else:
            i = max(j for j, p in enumerate(pos) if p <= t)
            w = (t - pos[i]) / (pos[i + 1] - pos[i])
            a[t, i], a[t, i + 1] = 1.0 - w, w
    return a


class InterpolatedConv2d(nn.Module):
    """A k x k conv whose kernel is rebuilt on every forward pass by bilinear interpolation of
    an n x n grid of learnable control values per channel pair: n^2 weights buy a k x k view."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int, positions: Sequence[int]):
        super().__init__()
        self.kernel_size, self.positions = kernel_size, [int(p) for p in positions]
        self.register_buffer("interp", interpolation_matrix(kernel_size, self.positions), persistent=False)
        n = len(self.positions)
        self.control = nn.Parameter(torch.empty(out_chs, in_chs, n, n))
        nn.init.kaiming_uniform_(self.control, a=5**0.5)  # nn.Conv2d's default, on the n x n grid

    def kernel(self) -> torch.Tensor:
        # (C_out, C_in, n, n) -> (C_out, C_in, k, k): A @ G @ A^T per channel pair
        return torch.einsum("kn,oinm,lm->oikl", self.interp, self.control, self.interp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = (self.kernel_size, self.kernel_size)
        return F.conv2d(x, self.kernel(), padding=same_padding(k))


@register_block("interp")
class InterpolatedKernelBlock(nn.Sequential):
    """Interpolated k x k conv -> BN -> ReLU (after the "interpolated kernels" idea).

    The control values sit on an n x n grid (``control_points``, evenly spread, corners
    included: k = 9, n = 3 puts them at 0, 4, 8) or at the ``positions`` given; the kernel
    between them is bilinear, so parameters grow with n^2, not k^2, and the kernel is smooth.
    """

    description = ('Interpolated kernels (after the "interpolated kernels" idea): a dense k x k kernel drawn '
                   "bilinearly through a learnable n x n grid of control values (block_args.control_points), then "
                   "BN -> ReLU: n^2 weights per pair, not k^2.")
    params_formula = "n²·C_in·C_out + 2·C_out"
    formula_symbols = {"n": "control_points"}

    def __init__(self, in_chs: int, out_chs: int, *, kernel_size: int = 7, control_points: int | None = None,
                 positions: Sequence[int] | None = None, norm_layer=nn.BatchNorm2d, act_layer=nn.ReLU):
        # the variant's 4 x 4 grid by default (configs/variant/interp.yaml), as many as the kernel has if fewer
        control_points = min(4, kernel_size) if control_points is None else control_points
        positions = list(positions) if positions else control_positions(kernel_size, control_points)
        super().__init__(InterpolatedConv2d(in_chs, out_chs, kernel_size, positions), norm_layer(out_chs),
                         act_layer(inplace=True))
        self.rf_extent, self.control_points = kernel_size, len(positions)
