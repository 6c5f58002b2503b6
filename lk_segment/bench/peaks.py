"""The machine's limits, measured in the run whose steps they are set against.

- matmul peak: an n x n by n x n product (n = 8192 on a GPU: smaller ones do not reach the
  tensor cores' rate; 1024 on a CPU), bf16 and float32 (with the run's TF32 setting), median
  of 20 (GPU) or 5 (CPU) after warm-ups: the MFU's denominator and the roofline's compute limit.
- copy bandwidth: ``dst.copy_(src)`` of a tensor larger than the caches (1 GiB on a GPU,
  256 MiB on a CPU), counted as bytes read + written per second: the roofline's memory limit.
"""

from __future__ import annotations

import torch

from lk_segment.bench.results import Peaks
from lk_segment.timing import time_call


def warmup(repeats: int) -> int:
    """Untimed calls first (clocks up, cuBLAS heuristics and oneDNN primitives made): 5 of 20 on
    a GPU, 2 of 5 on a CPU."""
    return max(2, repeats // 4)


def matmul_tflops(n: int, dtype: torch.dtype, device: torch.device, repeats: int) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    timing = time_call(lambda: a @ b, repeats, warmup(repeats), device)
    return 2 * n**3 / timing.median_ms / 1e9


def copy_gbps(mbytes: int, device: torch.device, repeats: int) -> float:
    src = torch.ones(mbytes * 2**20 // 4, device=device)
    dst = torch.empty_like(src)
    timing = time_call(lambda: dst.copy_(src), repeats, warmup(repeats), device)
    return 2 * src.numel() * 4 / timing.median_ms / 1e6


def measure_peaks(matmul_size: int, copy_mb: int, device: torch.device, repeats: int) -> Peaks:
    return Peaks(matmul_size=matmul_size, bf16_tflops=matmul_tflops(matmul_size, torch.bfloat16, device, repeats),
                 float32_tflops=matmul_tflops(matmul_size, torch.float32, device, repeats), copy_mb=copy_mb,
                 copy_gbps=copy_gbps(copy_mb, device, repeats))
