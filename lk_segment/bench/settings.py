"""One variant's project step under each setting: float32 or bf16 autocast, NCHW or
channels_last, with or without torch.compile. It is what the configured defaults
(``configs/base.yaml``'s trainer section) were chosen from."""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from lk_segment.bench.config import parse_setting
from lk_segment.bench.results import Step
from lk_segment.bench.steps import project_step


def sweep_settings(cfg: DictConfig, names: list[str], images: torch.Tensor, masks: torch.Tensor, steps: int,
                   warmup: int, device: torch.device, log) -> tuple[dict[str, Step], dict[str, str]]:
    """The step under each named setting, and the settings that failed with their error (e.g.
    torch.compile without a working C++ compiler: said, and the sweep goes on)."""
    rows, errors = {}, {}
    for name in names:
        try:
            rows[name] = project_step(cfg, parse_setting(name), images, masks, steps, warmup, device)
        except Exception as exc:
            errors[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
            log(f"  {cfg.model.block} {name}: failed ({errors[name]})")
            continue
        r = rows[name]
        log(f"  {name}: {r.images_per_s:.2f} img/s, first step {r.first_step_ms / 1000:.1f} s")
    return rows, errors


def pick_fast(settings: dict[str, Step], compile_margin: float = 1.1) -> str:
    """The fastest measured setting; one with torch.compile only if it beats the best without
    by ``compile_margin`` (it costs minutes of compiling at the start of every run)."""
    best = max(settings, key=lambda n: settings[n].images_per_s)
    plain = [n for n in settings if "compile" not in n]
    if "compile" in best and plain:
        best_plain = max(plain, key=lambda n: settings[n].images_per_s)
        if settings[best].images_per_s < compile_margin * settings[best_plain].images_per_s:
            return best_plain
    return best
