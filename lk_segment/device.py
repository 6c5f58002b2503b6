"""Which device a run trains on, named for the run's params, and the accelerator check."""

from __future__ import annotations

import platform
from pathlib import Path

import torch

from lk_segment.errors import UserError


def cpu_name() -> str:
    """The processor's model name (e.g. "AMD EPYC 9554 64-Core Processor"), from /proc/cpuinfo where there is one."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "cpu"


def device_name(device: torch.device) -> str:
    """What a run logs as ``trainer.device_name``: the GPU's name (e.g. "NVIDIA H100 80GB HBM3") or the CPU's."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_name()


def torch_build() -> str:
    """E.g. "torch 2.13.0+cpu, a CPU-only build": what to say when no GPU is seen."""
    build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
    return f"torch {torch.__version__}, {build}"


def check_accelerator(accelerator: str) -> None:
    """``trainer.accelerator=gpu|cuda`` where torch sees no CUDA GPU stops here, never as a silent CPU run."""
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise UserError(f"trainer.accelerator={accelerator} but this torch sees no CUDA GPU ({torch_build()}): "
                        "use trainer.accelerator=cpu or auto, or see the README's 'On a GPU machine'")
