"""What a training step must cost at least: its FLOPs and the bytes it moves.

Counted on the meta device (shapes only, no arithmetic: free at any size) by tracing one
forward + backward of the batch through the loss, every ATen op as autograd runs it:

- FLOPs: ``FlopCounterMode`` (matrix products and convolutions; a multiply-add is 2 FLOPs);
  large depthwise kernels counted as direct convolutions, whichever way they run.
- bytes: every op that computes (views and bare allocations do not) reads each tensor it is
  given and writes each tensor it returns, once, at ``elem_bytes`` per element (the step's
  dtype: 2 under bf16 autocast, 4 in float32). That covers the activations written in the
  forward pass and read back in the backward pass, the weights read in both, the gradients
  written; then AdamW reads each parameter, its gradient and its two moments and writes three
  of them back, in float32: ``ADAMW_BYTES_PER_PARAM``. The floor of an eager step, one kernel
  per op; caches can serve part of it on a CPU, and a fused (compiled) step can move less.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from itertools import chain

import torch
from torch.func import functional_call
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode

from lk_segment.bench.config import autocast_dtype, parse_setting
from lk_segment.bench.results import Peaks, Roofline

ADAMW_BYTES_PER_PARAM = 4 * (4 + 3)  # float32: read param, grad, exp_avg, exp_avg_sq; write 3 of them
NO_TRAFFIC = {"_unsafe_view", "lift_fresh", "empty", "empty_like", "empty_strided", "new_empty",
              "new_empty_strided"}  # views that the schema does not mark, and allocations


def _moves_data(func) -> bool:
    if func.overloadpacket.__name__ in NO_TRAFFIC:
        return False
    # a view returns an alias of its input (Tensor(a)) without writing it (Tensor(a!) is in place)
    return not any(r.alias_info is not None and not r.alias_info.is_write for r in func._schema.returns)


class TrafficCounter(TorchDispatchMode):
    """Elements read and written by the ops run inside: every tensor argument of an op that moves
    data is read once, every tensor it returns is written once (an in-place op: both)."""

    def __init__(self):
        super().__init__()
        self.elements = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if _moves_data(func):
            tensors = [t for t in tree_leaves((args, kwargs, out)) if isinstance(t, torch.Tensor)]
            self.elements += sum(t.numel() for t in tensors)
        return out


@dataclass
class StepCost:
    flops: float
    elements: int  # tensor elements read and written by the traced ops
    params: int  # trained parameters (AdamW updates each)

    def bytes(self, elem_bytes: int) -> float:
        """Bytes moved with activations, weights and gradients at ``elem_bytes`` per element."""
        return float(self.elements * elem_bytes + ADAMW_BYTES_PER_PARAM * self.params)


def traced_cost(run: Callable[[], None], params: int) -> StepCost:
    """FLOPs and elements moved by ``run()`` (meta tensors inside); AdamW updates ``params``."""
    flops, traffic = FlopCounterMode(display=False), TrafficCounter()
    with flops, traffic:
        run()
    return StepCost(float(flops.get_total_flops()), traffic.elements, params)


def roofline_of(cost: StepCost, setting: str, measured_ms: float, peaks: Peaks) -> Roofline:
    """``cost`` at ``setting``'s dtype against the peaks: GFLOP / (TFLOP/s) and MB / (GB/s) are ms."""
    elem_bytes = 4 if autocast_dtype(parse_setting(setting)) is None else 2
    return Roofline(gflop=cost.flops / 1e9, mbytes=cost.bytes(elem_bytes) / 1e6, peak_tflops=peaks.tflops(setting),
                    copy_gbps=peaks.copy_gbps, measured_ms=measured_ms)


def step_cost(model: torch.nn.Module, images_shape: tuple[int, ...], loss: Callable) -> StepCost:
    """The cost of one training step of ``model`` (left as it is: it runs on meta copies of its
    parameters and buffers) on a batch of ``images_shape``, ``loss(logits, masks)``."""
    from lk_segment.ops import native_depthwise

    meta = {name: torch.empty_like(t, device="meta").requires_grad_(t.requires_grad)
            for name, t in chain(model.named_parameters(), model.named_buffers())}
    b, _, h, w = images_shape
    images = torch.empty(images_shape, device="meta")
    masks = torch.empty(b, 1, h, w, device="meta")

    def run() -> None:
        loss(functional_call(model, meta, (images,)), masks).backward()

    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    with native_depthwise(model), torch.enable_grad():
        return traced_cost(run, params)
