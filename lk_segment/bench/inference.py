"""Inference: ``make predict``'s latency per full-resolution image, and a re-parameterisable
variant (replk) fused against unfused."""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from lk_segment.bench.results import Fused, Inference
from lk_segment.config import to_container, training_size
from lk_segment.timing import time_call, time_in_turns


def eval_system(cfg: DictConfig):
    from lk_segment.system import SegmentationSystem

    config = to_container(cfg)
    torch.manual_seed(0)
    return SegmentationSystem(model=config["model"], optim=config["optim"], data=config["data"]).eval()


def predict_latency_ms(system, image: np.ndarray, repeats: int, device: torch.device) -> float:
    """One full-resolution image through ``make predict``'s Predictor (resize, model, upsample)."""
    from lk_segment.inference import Predictor

    predictor = Predictor(system, device=device.type)
    return time_call(functools.partial(predictor.predict, image), repeats, 1, device).median_ms


def latency_in_turns_ms(models: dict[str, torch.nn.Module], x: torch.Tensor, repeats: int,
                        device: torch.device) -> dict[str, float]:
    """Median ms of one eval-mode forward of ``x`` for each model, the models taking turns (after
    one untimed call each)."""
    with torch.inference_mode():
        calls = {name: functools.partial(model, x) for name, model in models.items()}
        return {name: t.median_ms for name, t in time_in_turns(calls, repeats, 1, device).items()}


def bench_fused(cfg: DictConfig, repeats: int, device: torch.device) -> Fused:
    """The U-Net unfused against fused (``reparameterize()`` on a copy), one image at the size
    predict feeds it, in the Predictor's channels_last layout, timed in turns; and how far their
    outputs differ. (The Predictor always runs the fused form: this compares the model alone.)"""
    system = eval_system(cfg)
    h, w = training_size(cfg.data.height, cfg.data.width, system.model.size_multiple)
    cl = torch.channels_last
    x = torch.randn(1, 3, h, w, device=device).contiguous(memory_format=cl)
    unfused = system.model.to(device, memory_format=cl).eval()
    fused = copy.deepcopy(unfused).reparameterize().to(memory_format=cl)
    ms = latency_in_turns_ms({"unfused": unfused, "fused": fused}, x, repeats, device)
    with torch.inference_mode():
        ref = unfused(x)
        err = float((fused(x) - ref).abs().max() / ref.abs().max())
    return Fused(unfused_ms=ms["unfused"], fused_ms=ms["fused"], max_rel_diff=err)


def bench_inference(cfg: DictConfig, image: np.ndarray, repeats: int, fused_repeats: int,
                    device: torch.device) -> Inference:
    system = eval_system(cfg).to(device)
    fusable = any(hasattr(block, "reparameterize") for block in system.model.encoder)  # e.g. replk
    return Inference(predict_ms=predict_latency_ms(system, image, repeats, device),
                     fused=bench_fused(cfg, fused_repeats, device) if fusable else None)


def full_resolution_image(cfg: DictConfig) -> np.ndarray:
    """A 1918x1280 RGB photo from the data root when there is one, else noise of that size."""
    import cv2

    root = Path(cfg.data.root) if cfg.data.root else Path("data/synthetic")
    photos = sorted((root / "train").glob("*.jpg"))[:1]
    bgr = cv2.imread(str(photos[0]), cv2.IMREAD_COLOR) if photos else None
    if bgr is None or bgr.shape[:2] != (1280, 1918):
        return np.random.default_rng(0).integers(0, 256, (1280, 1918, 3), dtype=np.uint8)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
