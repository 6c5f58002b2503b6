"""Which device a run trains on, named for the run's params, and the accelerator check."""

from __future__ import annotations

import os
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


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """The one reading of a ``--device``/``DEVICE=`` value: ``auto`` (or None) is the GPU when torch sees one,
    else the CPU; ``cpu``, ``cuda``, ``cuda:N`` as named; ``cuda`` without CUDA, or any other name, is a
    ``UserError``."""
    if isinstance(device, torch.device):
        return device
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise UserError(f"device {device!r}: choose auto, cpu or cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {device!r} asked for, but this torch sees no CUDA GPU "
                        f"({torch_build()}): use auto or cpu")
    return torch.device(device)


def torch_build() -> str:
    """E.g. "torch 2.13.0+cpu, a CPU-only build": what to say when no GPU is seen."""
    build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
    return f"torch {torch.__version__}, {build}"


def check_accelerator(accelerator: str) -> None:
    """``trainer.accelerator=gpu|cuda`` where torch sees no CUDA GPU stops here, never as a silent CPU run."""
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise UserError(f"trainer.accelerator={accelerator} but this torch sees no CUDA GPU ({torch_build()}): "
                        "use trainer.accelerator=cpu or auto, or see docs/gpu.md")


# Lightning's strategies that fork the training processes: CUDA cannot be used in a forked child once the
# parent has initialised it, and a run does before fit (the GPU's name for its params, bf16 for precision=auto).
FORK_STRATEGIES = ("ddp_fork", "ddp_notebook")


def check_strategy(strategy: str, accelerator: str) -> None:
    """``ddp_fork``/``ddp_notebook`` on a GPU stop here in one line (Lightning would refuse at fit, after the
    data and the run were made): only ``ddp``, which starts fresh processes, is supported there."""
    name = str(strategy)
    cuda = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    if cuda and any(name.startswith(fork) for fork in FORK_STRATEGIES):
        raise UserError(f"trainer.strategy={name} is not supported on a GPU (the run initialises CUDA before it "
                        "forks): use trainer.strategy=ddp")


def native_bf16(device_type: str) -> bool:
    """Whether ``device_type`` ("cuda" or "cpu") computes bfloat16 in hardware: a CUDA GPU that supports it,
    or a CPU with AVX512-BF16 or AMX. Elsewhere bf16 is emulated and several times slower than float32
    (docs/performance.md)."""
    if device_type == "cuda":  # without emulation: a T4 or V100 "supports" bf16 only emulated, slower than fp16
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def resolve_precision(precision: str, accelerator: str) -> str:
    """``trainer.precision=auto``: bf16-mixed where the training device has bf16 in hardware, else 16-mixed
    on a CUDA GPU and 32 on a CPU; any other value is kept."""
    if str(precision) != "auto":
        return str(precision)
    cuda = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    if cuda:
        return "bf16-mixed" if native_bf16("cuda") else "16-mixed"
    return "bf16-mixed" if native_bf16("cpu") else "32"


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity, where the OS has one), else the machine's."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def environment(device: torch.device) -> dict:
    """What a measurement ran on, for its record: python, torch, CUDA and cuDNN, the device and its name, native
    bf16, the GPU's memory, the CPUs this process may use and torch's threads."""
    cuda = device.type == "cuda"
    return {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if cuda else None, "device": device.type,
            "device_name": device_name(device), "bf16": native_bf16(device.type),
            "gpu_memory_gb": round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1) if cuda else None,
            "cpus": usable_cpus(),
            "threads": torch.get_num_threads()}
