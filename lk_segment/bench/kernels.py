"""Large depthwise kernels: PyTorch's native K x K against the FFT path (``lk_segment.ops``),
forward + backward, float32 and under bf16 autocast, at the shapes the bench is given."""

from __future__ import annotations

import torch

from lk_segment.bench.results import DwRow
from lk_segment.ops.dwconv import fft_grid, time_dw_impls


def bench_dwconv(kernels: list[int], shapes: list[list[int]], repeats: int, device: torch.device) -> list[DwRow]:
    rows = []
    for b, c, h, w in shapes:
        for k in kernels:
            x = torch.randn(b, c, h, w, device=device)
            weight = torch.randn(c, 1, k, k, device=device)
            for dtype in ("float32", "bf16"):
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bf16"):
                    ms = time_dw_impls(x, weight, backward=True, repeats=repeats)
                rows.append(DwRow(k=k, dtype=dtype, shape=[b, c, h, w], fft_grid=list(fft_grid(h, w, k, k)),
                                  native_ms=ms["native"], fft_ms=ms["fft"]))
            del x, weight
    return rows
