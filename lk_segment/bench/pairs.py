"""Why one variant's step is faster than another's: where each step goes, and the pairs.

``step_breakdown``: milliseconds per step in convolutions and in everything else, from
``torch.profiler`` (op time on a CPU, kernel time on a GPU). ``pair``: 1x5 against 5x5 (and
3x3 against 5x5), the two plain-loop steps timed in turns, beside their FLOP ratio and the
step ratio that equal convolution efficiency would give.
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from lk_segment.bench.config import setting_name
from lk_segment.bench.results import Breakdown, PairRatios, VariantSteps
from lk_segment.bench.steps import plain_step, project_model
from lk_segment.timing import time_in_turns

CONV_OPS = ("aten::convolution", "aten::convolution_backward")  # every conv and transposed conv, fwd and bwd


def step_breakdown(cfg: DictConfig, setting: dict, images: torch.Tensor, masks: torch.Tensor, steps: int,
                   warmup: int, device: torch.device, gflop: float) -> Breakdown:
    """``plain_step`` under ``torch.profiler``; ``gflop``: the step's (``steps.training_cost``).
    "Other" is batch norm, activations, pooling, the skip additions, dtype casts, the loss and
    the optimizer; an FFT depthwise path counts there too, since it is not an ``aten::convolution``."""
    from torch.profiler import ProfilerActivity, profile

    from lk_segment.ops import DepthwiseConv2d

    model = project_model(cfg)
    step = plain_step(model, setting, images, masks, device)
    for _ in range(warmup):
        step()
    gpu = device.type == "cuda"
    if gpu:
        torch.cuda.synchronize(device)
    with profile(activities=[ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if gpu else [])]) as prof:
        for _ in range(steps):
            step()
        if gpu:
            torch.cuda.synchronize(device)
    events = prof.key_averages()
    if gpu:
        total = sum(e.self_device_time_total for e in events)
        conv = sum(e.device_time_total for e in events if e.key in CONV_OPS)
    else:
        total = sum(e.self_cpu_time_total for e in events)
        conv = sum(e.cpu_time_total for e in events if e.key in CONV_OPS)
    step_ms, conv_ms = total / steps / 1e3, conv / steps / 1e3
    # Depthwise kernels that ran by FFT did part of the FLOPs outside aten::convolution.
    fft = any(getattr(m, "impl", None) in ("fft", "auto") for m in model.modules() if isinstance(m, DepthwiseConv2d))
    return Breakdown(setting=setting_name(**setting), step_ms=step_ms, conv_ms=conv_ms, step_gflop=gflop,
                     conv_tflops=None if fft or not conv_ms else gflop / conv_ms)


def steps_in_turns_ms(cfgs: dict[str, DictConfig], setting: dict, images: torch.Tensor, masks: torch.Tensor,
                      turns: int, warmup: int, device: torch.device) -> dict[str, float]:
    """Median ms of one ``plain_step`` of each model, the models taking turns step by step."""
    runs = {name: plain_step(project_model(cfg), setting, images, masks, device) for name, cfg in cfgs.items()}
    return {name: t.median_ms for name, t in time_in_turns(runs, turns, warmup, device).items()}


def pair(fast: str, slow: str, breakdown: dict[str, Breakdown], steps: dict[str, VariantSteps],
         turns_ms: dict[str, float]) -> PairRatios:
    """``fast`` against ``slow``: the timed ratios, and from the breakdown the step, FLOP and
    convolution-time ratios and the step ratio had both convolutions run at ``slow``'s FLOP rate
    (the other work as measured)."""
    a, b = breakdown[fast], breakdown[slow]
    flop_ratio = a.step_gflop / b.step_gflop
    return PairRatios(fast=fast, slow=slow, turns_ms={fast: turns_ms[fast], slow: turns_ms[slow]},
                timed_project_32=steps[fast].project_32.step_ms / steps[slow].project_32.step_ms,
                timed_project_fast=steps[fast].project_fast.step_ms / steps[slow].project_fast.step_ms,
                step=a.step_ms / b.step_ms, flops=flop_ratio, conv_ms=a.conv_ms / b.conv_ms,
                other_ms=a.other_ms / b.other_ms,
                step_at_equal_conv_efficiency=(a.other_ms + flop_ratio * b.conv_ms) / b.step_ms)
