"""What the bench measures and how long: ``BenchConfig``, and the names of the settings."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from lk_segment.config import DataConfig, training_size

SETTINGS = ("32", "32+cl", "bf16", "bf16+cl", "bf16+cl+compile")
PAIRS = (("1x5", "5x5"), ("3x3", "5x5"))  # (variant, against): the ratios the study asks about


@dataclass
class BenchConfig:
    variants: list[str] | None = None  # None: every configs/variant file
    overrides: list[str] = field(default_factory=list)  # key=value applied to every variant's config
    height: int = DataConfig.height  # step and inference size (width from the Carvana aspect): the training default
    width: int | None = None  # e.g. 1024 with height 1024 for the GPU figures
    batch_size: int = 8
    steps: int = 5  # timed steps per figure (their median counts)
    warmup: int = 2  # untimed steps first (allocations, oneDNN/cuDNN plans, torch.compile)
    pair_turns: int = 15  # the pairs (1x5/5x5, ...) timed step by step in turns: the ratio's own figure
    settings: list[str] = field(default_factory=lambda: list(SETTINGS))  # swept on settings_variant
    settings_variant: str = "3x3"
    loader_height: int = 256  # the loader against the model at batch 8, 256 x 384
    loader_images: int = 96  # images decoded for the first-epoch figure (6 cars: 80 train images)
    loader_workers: list[int] = field(default_factory=lambda: [0, 2])
    inference_repeats: int = 5
    fused_repeats: int = 100  # fused vs unfused: short calls at the default size, so many turns
    dw_kernels: list[int] = field(default_factory=lambda: [7, 13, 31])
    # (B, C, H, W) of each depthwise row; None: CPU 4x32x64x96 (replk's 2nd level at 128x192, the
    # figures before this one), GPU the training size: levels 0 and 2 of the U-Net at the step size
    dw_shapes: list[list[int]] | None = None
    dw_repeats: int = 5  # native and FFT timed in turns, median
    # n of the n x n x n peak matmul; None: 8192 on GPU, 1024 on CPU (a CPU without AVX-512 BF16
    # emulates bf16, where a larger product takes minutes)
    matmul_size: int | None = None
    copy_mb: int | None = None  # the copy-bandwidth tensor; None: 1024 on GPU, 256 on CPU (beyond caches)
    peak_repeats: int | None = None  # matmuls and copies timed for the peaks; None: 20 on GPU, 5 on CPU
    tf32: bool = False  # TF32 in the float32 rows (off: they are float32; recorded in the results)
    device: str = "auto"  # auto | cpu | cuda


def with_device_defaults(bcfg: BenchConfig, device: torch.device, width: int, depth: int) -> BenchConfig:
    """``bcfg`` with its device-dependent defaults filled in (``width``, ``depth``: the U-Net's)."""
    gpu = device.type == "cuda"
    h, w = training_size(bcfg.height, bcfg.width, 2**depth)
    level2 = [bcfg.batch_size, 4 * width, h // 4, w // 4]
    shapes = bcfg.dw_shapes or ([[bcfg.batch_size, width, h, w], level2] if gpu else [[4, 32, 64, 96]])
    return replace(bcfg, dw_shapes=[list(s) for s in shapes],
                   matmul_size=bcfg.matmul_size or (8192 if gpu else 1024),
                   peak_repeats=bcfg.peak_repeats or (20 if gpu else 5),
                   copy_mb=bcfg.copy_mb or (1024 if gpu else 256))


def parse_setting(name: str) -> dict:
    """'bf16+cl+compile' -> precision bf16-mixed, channels_last, torch.compile."""
    parts = set(name.split("+"))
    unknown = parts - {"32", "bf16", "16", "cl", "compile"}
    if unknown or not parts & {"32", "bf16", "16"}:
        raise ValueError(f"bad setting {name!r}: 32|bf16|16, then optional +cl and +compile")
    precision = "bf16-mixed" if "bf16" in parts else "16-mixed" if "16" in parts else "32"
    return {"precision": precision, "channels_last": "cl" in parts, "compile": "compile" in parts}


def setting_name(precision: str, channels_last: bool, compile: bool) -> str:
    name = {"32": "32", "32-true": "32", "bf16-mixed": "bf16", "16-mixed": "16"}[str(precision)]
    return name + ("+cl" if channels_last else "") + ("+compile" if compile else "")


def autocast_dtype(setting: dict) -> torch.dtype | None:
    """The dtype a setting computes its activations in under autocast; None: float32."""
    return {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(setting["precision"])


def bench_config_from(args: dict) -> BenchConfig:
    """A BenchConfig from the CLI's options (None: keep the default)."""
    return BenchConfig(**{k: v for k, v in args.items() if v is not None})
