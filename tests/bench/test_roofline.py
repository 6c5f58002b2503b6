"""The roofline's bytes and FLOPs, counted by hand on one convolution and one block."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lk_segment.bench.results import Peaks, Roofline
from lk_segment.bench.roofline import ADAMW_BYTES_PER_PARAM, roofline_of, step_cost, traced_cost
from lk_segment.blocks import create_block


def test_bytes_of_one_convolution_by_hand():
    # conv 3 -> 8 channels, 3x3, no bias, on an input that needs no gradient (the images)
    x = torch.empty(2, 3, 16, 16, device="meta")
    weight = torch.empty(8, 3, 3, 3, device="meta", requires_grad=True)
    grad_y = torch.empty(2, 8, 16, 16, device="meta")
    cost = traced_cost(lambda: F.conv2d(x, weight, padding=1).backward(grad_y), params=weight.numel())
    n_x, n_w, n_y = 2 * 3 * 16 * 16, 8 * 3 * 3 * 3, 2 * 8 * 16 * 16
    forward = n_x + n_w + n_y  # read x and w, write y
    backward = n_y + n_x + n_w + n_w  # read dy, x (saved) and w, write dw; no dx
    assert cost.elements == forward + backward
    assert cost.bytes(2) == 2 * (forward + backward) + 28 * n_w  # bf16, then AdamW in float32
    assert cost.bytes(4) == 4 * (forward + backward) + 28 * n_w
    assert ADAMW_BYTES_PER_PARAM == 28
    assert cost.flops == 2 * (2 * n_y * 3 * 9)  # forward and weight gradient: 2 FLOPs per multiply-add


def test_cost_of_one_block_and_a_head_by_hand():
    b, h, w = 2, 16, 24
    model = nn.Sequential(create_block("5x5", 3, 8, kernel_size=5), nn.Conv2d(8, 1, 1))
    cost = step_cost(model, (b, 3, h, w), lambda logits, masks: F.binary_cross_entropy_with_logits(logits, masks))
    conv5 = 2 * b * h * w * 8 * 3 * 25  # FLOPs of the 5x5 conv, forward
    head = 2 * b * h * w * 8  # of the 1x1 head
    assert cost.flops == 2 * conv5 + 3 * head  # the images need no gradient: no dx for the 5x5 conv
    assert cost.params == sum(p.numel() for p in model.parameters())
    # every activation is written once and read at least twice (forward, backward): the 5x5 conv's
    # (B, 8, H, W) output alone, then BN and ReLU over it
    assert cost.elements > 3 * 3 * b * 8 * h * w
    assert next(model.parameters()).device.type == "cpu"  # traced on meta copies, the model untouched


def test_roofline_takes_the_slower_limit():
    compute = Roofline(gflop=10, mbytes=100, peak_tflops=1, copy_gbps=20, measured_ms=50)
    assert (compute.roofline_ms, compute.bound) == (10, "compute")  # 10 ms of FLOPs, 5 ms of bytes
    assert compute.measured_over_roofline == 5 and compute.mfu == pytest.approx(0.2)
    memory = Roofline(gflop=1, mbytes=400, peak_tflops=1, copy_gbps=20, measured_ms=40)
    assert (memory.roofline_ms, memory.bound, memory.measured_over_roofline) == (20, "memory", 2)


def test_roofline_of_a_step_uses_its_dtype():
    x = torch.empty(1, 2, 8, 8, device="meta")
    weight = torch.empty(4, 2, 3, 3, device="meta", requires_grad=True)
    cost = traced_cost(lambda: F.conv2d(x, weight).sum().backward(), params=weight.numel())
    peaks = Peaks(matmul_size=64, bf16_tflops=2.0, float32_tflops=0.5, copy_mb=4, copy_gbps=10.0)
    bf16, fp32 = roofline_of(cost, "bf16+cl", 1.0, peaks), roofline_of(cost, "32", 1.0, peaks)
    assert (bf16.peak_tflops, fp32.peak_tflops) == (2.0, 0.5)
    assert (bf16.mbytes, fp32.mbytes) == (cost.bytes(2) / 1e6, cost.bytes(4) / 1e6)


def test_gflops_on_meta_match_a_real_forward():
    from torch.utils.flop_counter import FlopCounterMode

    from lk_segment.analysis.flops import count_gflops
    from lk_segment.unet import UNet

    model = UNet("3x3", width=4, depth=2).eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, 3, 32, 48))
    assert count_gflops(model, (32, 48)) == pytest.approx(counter.get_total_flops() / 1e9)
    assert next(model.parameters()).device.type == "cpu"
