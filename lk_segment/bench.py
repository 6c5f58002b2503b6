"""Speed and memory of the project, measured side by side in one process.

    lk-segment bench --out bench.json          # make bench: the default run (minutes on 2 CPU cores)
    lk-segment bench --out tiny.json --variants 3x3 model.width=4 model.depth=2 --height 64 ...

Every claim is a ratio of two figures taken here, in this run, on this machine:

- ``steps``: images/s of a training step (forward + backward + AdamW), median of ``steps``
  timed steps after ``warmup``, for each variant, through the project (Lightning, the
  system, the configured fast settings) and through ``lk_segment.reference`` (plain
  PyTorch, float32, NCHW, its own loop). ``settings``: the same for one variant under each
  combination of bf16 autocast, channels_last and torch.compile.
- ``loader``: images/s the DataModule's train loader delivers, first epoch (decoding the
  JPEG/GIF files into the cache) and from the cache, with augmentation in the loader or on
  the device (kornia), against the model's consumption at the same batch and size.
- ``inference``: latency of ``make predict`` per full-resolution 1918x1280 image, and the
  replk variant fused (``reparameterize()``) against unfused.
- ``dwconv``: native depthwise K x K against the FFT path (``lk_segment.ops``).
- ``matmul``: the bf16 matrix-multiply rate, the denominator of the model FLOPs utilisation.
- ``breakdown``: where each variant's step (fast setting) goes, from ``torch.profiler``:
  convolutions (forward and backward) against everything else, with the step's FLOPs, so a
  speed ratio between two variants can be set beside their FLOP ratio.

Peak memory is ``torch.cuda.max_memory_allocated`` on GPU and the process RSS (sampled) on
CPU. Results go to a JSON file, a printed table and the MLflow experiment ``bench``.
"""

from __future__ import annotations

import copy
import functools
import gc
import json
import logging
import math
import platform
import statistics
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import psutil
import torch
from omegaconf import DictConfig

from lk_segment import malloc
from lk_segment.config import available_variants, load_config, to_container, training_size

SETTINGS = ("32", "32+cl", "bf16", "bf16+cl", "bf16+cl+compile")
PAIRS = (("1x5", "5x5"), ("3x3", "5x5"))  # (variant, against): the ratios the study asks about


@dataclass
class BenchConfig:
    variants: list[str] | None = None  # None: every configs/variant file
    overrides: list[str] = field(default_factory=list)  # key=value applied to every variant's config
    height: int = 128  # step and inference size (width from the Carvana aspect): the training default
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
    fused_repeats: int = 100  # fused vs unfused: about 10 ms per call at the default size, so many turns
    dw_kernels: list[int] = field(default_factory=lambda: [7, 13, 31])
    dw_shape: list[int] = field(default_factory=lambda: [4, 32, 64, 96])  # B, C, H, W: replk's 2nd level
    matmul_size: int = 2048
    device: str = "auto"  # auto | cpu | cuda


# ----------------------------------------------------------------------------- measuring


def pick_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels once
    return device


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PeakMemory:
    """Peak memory (MB) inside a ``with`` block: CUDA's allocator peak on GPU, else the process
    RSS sampled every 5 ms by a thread (torch kernels release the GIL, so it keeps sampling),
    after the memory that earlier measurements freed was given back (``malloc.trim``: the tuned
    allocator would otherwise keep it and every figure would include the largest before it)."""

    def __init__(self, device: torch.device):
        self.device, self.peak_mb = device, 0.0

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        gc.collect()
        malloc.trim()
        self._proc, self._stop = psutil.Process(), threading.Event()
        self._peak = self._proc.memory_info().rss
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self._peak = max(self._peak, self._proc.memory_info().rss)

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            self._stop.set()
            self._thread.join()
            self.peak_mb = max(self._peak, self._proc.memory_info().rss) / 2**20


def median(times: list[float]) -> float:
    return statistics.median(times)


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


def pick_fast(settings: dict[str, dict], compile_margin: float = 1.1) -> str:
    """The fastest measured setting; one with torch.compile only if it beats the best without
    by ``compile_margin`` (it costs minutes of compiling at the start of every run)."""
    best = max(settings, key=lambda n: settings[n]["images_per_s"])
    plain = [n for n in settings if "compile" not in n]
    if "compile" in best and plain:
        best_plain = max(plain, key=lambda n: settings[n]["images_per_s"])
        if settings[best]["images_per_s"] < compile_margin * settings[best_plain]["images_per_s"]:
            return best_plain
    return best


def random_batch(batch: int, height: int, width: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, height, width, generator=g)
    masks = (torch.rand(batch, 1, height, width, generator=g) > 0.5).float()
    return images, masks


# ----------------------------------------------------------------------------- training steps


class _RepeatBatch(torch.utils.data.Dataset):
    """One batch served ``n`` times: the step figure leaves the data pipeline out."""

    def __init__(self, images: torch.Tensor, masks: torch.Tensor, n_batches: int):
        self.images, self.masks, self.n = images, masks, n_batches * len(images)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return self.images[i % len(self.images)], self.masks[i % len(self.masks)]


def _step_timer(device: torch.device):
    import lightning as L

    class StepTimer(L.Callback):
        """Seconds from each batch's start hook to its end hook: forward, backward, optimizer."""

        def __init__(self):
            self.times: list[float] = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            sync(device)
            self.start = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            sync(device)
            self.times.append(time.perf_counter() - self.start)

    return StepTimer()


def project_step(cfg: DictConfig, setting: dict, images: torch.Tensor, masks: torch.Tensor, steps: int,
                 warmup: int, device: torch.device) -> dict:
    """The project's own training step: SegmentationSystem under a Lightning Trainer."""
    import lightning as L

    from lk_segment.system import SegmentationSystem

    config = to_container(cfg)
    torch.manual_seed(0)
    system = SegmentationSystem(model=config["model"], optim=config["optim"], data={"augment": False})
    system.configure_speed(channels_last=setting["channels_last"], compile=setting["compile"])
    timer = _step_timer(device)
    loader = torch.utils.data.DataLoader(_RepeatBatch(images, masks, warmup + steps), batch_size=len(images))
    trainer = L.Trainer(max_steps=warmup + steps, precision=setting["precision"], accelerator=device.type,
                        devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, callbacks=[timer])
    with PeakMemory(device) as mem:
        trainer.fit(system, train_dataloaders=loader)
    return {"images_per_s": len(images) / median(timer.times[warmup:]), "step_s": median(timer.times[warmup:]),
            "first_step_s": timer.times[0], "peak_mem_mb": mem.peak_mb, "setting": setting_name(**setting)}


def reference_step(cfg: DictConfig, images: torch.Tensor, masks: torch.Tensor, steps: int, warmup: int,
                   device: torch.device) -> dict:
    """The plain-PyTorch baseline (float32, NCHW, no compile, its own loop)."""
    from lk_segment.reference import REFERENCE_BLOCKS, ReferenceUNet, reference_step_times
    from lk_segment.system import build_model

    m = cfg.model
    torch.manual_seed(0)
    if m.block in REFERENCE_BLOCKS and m.skip == "add" and not m.block_args:
        model, kind = ReferenceUNet(m.block, m.width, m.depth, m.kernel_size), "reference"
    else:  # no hand-written twin: the project's own nn.Module in the plain loop
        model, kind = build_model(to_container(cfg)["model"]), "unet_plain_loop"
    model.to(device)
    with PeakMemory(device) as mem:
        times = reference_step_times(model, images.to(device), masks.to(device), steps, warmup)
    return {"images_per_s": len(images) / median(times), "step_s": median(times), "peak_mem_mb": mem.peak_mb,
            "kind": kind}


def training_flops(cfg: DictConfig, images: torch.Tensor) -> float:
    """FLOPs of one forward + backward of the batch (matrix products and convolutions), large
    depthwise kernels counted as direct convolutions whichever way they would run."""
    from torch.utils.flop_counter import FlopCounterMode

    from lk_segment.analysis.flops import native_depthwise
    from lk_segment.system import build_model

    model = build_model(to_container(cfg)["model"]).to(images.device)
    counter = FlopCounterMode(display=False)
    with native_depthwise(model), counter:
        model(images).float().mean().backward()
    return float(counter.get_total_flops())


CONV_OPS = ("aten::convolution", "aten::convolution_backward")  # every conv and transposed conv, fwd and bwd


def plain_step(cfg: DictConfig, setting: dict, images: torch.Tensor, masks: torch.Tensor, device: torch.device):
    """A closure that runs one training step of ``cfg``'s model in a plain loop under ``setting``
    (autocast and channels_last as it says; BCE + soft Dice; AdamW), and the model."""
    from lk_segment.reference import reference_loss
    from lk_segment.system import build_model

    torch.manual_seed(0)
    fmt = torch.channels_last if setting["channels_last"] else torch.contiguous_format
    model = build_model(to_container(cfg)["model"]).to(device, memory_format=fmt).train()
    x, y = images.to(device, memory_format=fmt), masks.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(setting["precision"])

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            logits = model(x)
        reference_loss(logits.float(), y).backward()
        optimizer.step()

    return step, model


def step_breakdown(cfg: DictConfig, setting: dict, images: torch.Tensor, masks: torch.Tensor, steps: int,
                   warmup: int, device: torch.device) -> dict:
    """Milliseconds per training step in convolutions and in everything else, under ``setting``.

    ``plain_step`` under ``torch.profiler``: op time on CPU, kernel time on GPU. "other" is batch
    norm, activations, pooling, the skip additions, dtype casts, the loss and the optimizer;
    an FFT depthwise path counts there too, since it is not an ``aten::convolution``.
    """
    from torch.profiler import ProfilerActivity, profile

    from lk_segment.ops import DepthwiseConv2d

    step, model = plain_step(cfg, setting, images, masks, device)
    for _ in range(warmup):
        step()
    sync(device)
    gpu = device.type == "cuda"
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if gpu else [])]
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        sync(device)
    events = prof.key_averages()
    if gpu:
        total = sum(e.self_device_time_total for e in events)
        conv = sum(e.device_time_total for e in events if e.key in CONV_OPS)
    else:
        total = sum(e.self_cpu_time_total for e in events)
        conv = sum(e.cpu_time_total for e in events if e.key in CONV_OPS)
    flops = training_flops(cfg, images[:1].to(device)) * len(images)
    step_ms, conv_ms = total / steps / 1e3, conv / steps / 1e3
    # Depthwise kernels that ran by FFT did part of the FLOPs outside aten::convolution.
    fft = any(getattr(m, "impl", None) in ("fft", "auto") for m in model.modules() if isinstance(m, DepthwiseConv2d))
    return {"step_ms": step_ms, "conv_ms": conv_ms, "other_ms": step_ms - conv_ms,
            "conv_share": conv_ms / step_ms, "step_gflop": flops / 1e9,
            "conv_tflops": None if fft or not conv_ms else flops / (conv_ms / 1e3) / 1e12,
            "setting": setting_name(**setting)}


def pair_ratios(breakdown: dict, fast: str, slow: str) -> dict:
    """``fast`` against ``slow`` (e.g. 1x5 against 5x5): step, FLOP and convolution-time ratios, and the
    step ratio that equal convolution efficiency would give (the other work as measured)."""
    a, b = breakdown[fast], breakdown[slow]
    flop_ratio = a["step_gflop"] / b["step_gflop"]
    return {"step": a["step_ms"] / b["step_ms"], "flops": flop_ratio, "conv_ms": a["conv_ms"] / b["conv_ms"],
            "other_ms": a["other_ms"] / b["other_ms"],
            "step_at_equal_conv_efficiency": (a["other_ms"] + flop_ratio * b["conv_ms"]) / b["step_ms"]}


def in_turns_ms(calls: dict[str, Callable[[], object]], turns: int, warmup: int,
                device: torch.device) -> dict[str, float]:
    """Median ms of each call, the calls taking turns one by one (after ``warmup`` untimed
    turns), so that a drift of the machine's speed hits them alike."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(warmup + turns):
        for name, call in calls.items():
            sync(device)
            start = time.perf_counter()
            call()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: 1000 * median(t[warmup:]) for name, t in times.items()}


def steps_in_turns_ms(cfgs: dict[str, DictConfig], setting: dict, images: torch.Tensor, masks: torch.Tensor,
                      turns: int, warmup: int, device: torch.device) -> dict[str, float]:
    """Median ms of one ``plain_step`` of each model, timed in turns: the figure for a ratio
    between two variants."""
    runs = {name: plain_step(cfg, setting, images, masks, device)[0] for name, cfg in cfgs.items()}
    return in_turns_ms(runs, turns, warmup, device)


# ----------------------------------------------------------------------------- data loader


def _iterate(loader, device: torch.device, augment=None, max_batches: int | None = None) -> tuple[int, float]:
    n, start = 0, time.perf_counter()
    for i, (images, masks) in enumerate(loader):
        if i == max_batches:
            break
        if augment is not None:
            augment(images.to(device, non_blocking=True), masks.to(device, non_blocking=True))
            sync(device)
        n += len(images)
    return n, time.perf_counter() - start


def bench_loader(cfg: DictConfig, bcfg: BenchConfig, device: torch.device) -> dict:
    """images/s of the train loader: first epoch (decode into a fresh cache) and cached epochs."""
    from lk_segment.data.augment_gpu import BatchAugmentation
    from lk_segment.data.module import CarvanaDataModule, default_root

    if cfg.data.root is None:  # the synthetic photos are made once per checkout: not part of the figure
        default_root(cfg.data.synthetic_cars)
    out: dict = {}
    with tempfile.TemporaryDirectory() as cache_dir:
        data = copy.deepcopy(cfg.data)
        data.height, data.width, data.cache_dir = bcfg.loader_height, None, cache_dir
        data.limit_images, data.batch_size = bcfg.loader_images, bcfg.batch_size
        data.augment, data.augment_on = True, "cpu"
        dm = CarvanaDataModule(data, progress=False)
        start = time.perf_counter()
        dm.prepare_data()
        dm.setup("fit")
        n, seconds = _iterate(dm.train_dataloader(), device)
        decode_s = time.perf_counter() - start - seconds
        out["size"] = list(dm.size)
        out["train_images"] = n
        out["first_epoch_images_per_s"] = n / (decode_s + seconds)  # the cache decodes train and val images
        out["decode_s"] = decode_s
        for workers in bcfg.loader_workers:
            data.num_workers = workers
            dm = CarvanaDataModule(data, progress=False)
            dm.setup("fit")
            loader = dm.train_dataloader()
            _iterate(loader, device, max_batches=2)  # workers start (persistent), the page cache is warm
            n, seconds = _iterate(loader, device)
            out[f"cached_cpu_aug_w{workers}_images_per_s"] = n / seconds
        data.num_workers, data.augment_on = 0, "gpu"
        dm = CarvanaDataModule(data, progress=False)
        dm.setup("fit")
        augment = BatchAugmentation().to(device)
        _iterate(dm.train_dataloader(), device, augment, max_batches=1)
        n, seconds = _iterate(dm.train_dataloader(), device, augment)
        out["cached_device_aug_w0_images_per_s"] = n / seconds
    return out


# ----------------------------------------------------------------------------- inference


def _system(cfg: DictConfig):
    from lk_segment.system import SegmentationSystem

    config = to_container(cfg)
    torch.manual_seed(0)
    return SegmentationSystem(model=config["model"], optim=config["optim"], data=config["data"]).eval()


def predict_latency_ms(system, image: np.ndarray, repeats: int, device: torch.device) -> float:
    """One full-resolution image through ``make predict``'s Predictor (resize, model, upsample)."""
    from lk_segment.predict import Predictor

    predictor = Predictor(system, device=device.type)
    predictor.predict(image)
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        predictor.predict(image)
        sync(device)
        times.append(time.perf_counter() - start)
    return 1000 * median(times)


def model_latency_ms(model: torch.nn.Module, x: torch.Tensor, repeats: int, device: torch.device) -> float:
    """Median ms of one eval-mode forward of ``x`` (after one untimed call)."""
    return interleaved_latency_ms({"model": model}, x, repeats, device)["model"]


def interleaved_latency_ms(models: dict[str, torch.nn.Module], x: torch.Tensor, repeats: int,
                           device: torch.device) -> dict[str, float]:
    """Median ms of one eval-mode forward of ``x`` for each model, the models taking turns call
    by call (after one untimed call each), so a drift of the machine's speed hits them alike."""
    with torch.inference_mode():
        return in_turns_ms({name: functools.partial(model, x) for name, model in models.items()}, repeats, 1, device)


def bench_fused(cfg: DictConfig, repeats: int, device: torch.device) -> dict:
    """A re-parameterisable variant's U-Net, unfused against fused (``reparameterize()`` on a
    copy), one image at the size predict feeds it, timed in turns, and how far their outputs
    differ. (The Predictor always runs the fused form, so the comparison is of the model alone,
    in the Predictor's channels_last layout.)"""
    system = _system(cfg)
    h, w = training_size(cfg.data.height, cfg.data.width, system.model.size_multiple)
    cl = torch.channels_last
    x = torch.randn(1, 3, h, w, device=device).contiguous(memory_format=cl)
    unfused = system.model.to(device, memory_format=cl).eval()
    fused = copy.deepcopy(unfused).reparameterize().to(memory_format=cl)
    ms = interleaved_latency_ms({"unfused": unfused, "fused": fused}, x, repeats, device)
    with torch.inference_mode():
        ref = unfused(x)
        err = float((fused(x) - ref).abs().max() / ref.abs().max())
    return {"unfused_ms": ms["unfused"], "fused_ms": ms["fused"], "speedup": ms["unfused"] / ms["fused"],
            "max_rel_diff": err}


def full_resolution_image(cfg: DictConfig) -> np.ndarray:
    """A 1918x1280 RGB photo from the data root when there is one, else noise of that size."""
    import cv2

    root = Path(cfg.data.root) if cfg.data.root else Path("data/synthetic")
    photos = sorted((root / "train").glob("*.jpg"))[:1]
    bgr = cv2.imread(str(photos[0]), cv2.IMREAD_COLOR) if photos else None
    if bgr is None or bgr.shape[:2] != (1280, 1918):
        return np.random.default_rng(0).integers(0, 256, (1280, 1918, 3), dtype=np.uint8)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


# ----------------------------------------------------------------------------- kernels


def bench_dwconv(kernels: list[int], shape: list[int], device: torch.device) -> list[dict]:
    """Native depthwise K x K against FFT, forward + backward, float32 and under bf16 autocast."""
    from lk_segment.ops.dwconv import time_dw_impl

    b, c, h, w = shape
    rows = []
    for k in kernels:
        x = torch.randn(b, c, h, w, device=device)
        weight = torch.randn(c, 1, k, k, device=device)
        for dtype in ("float32", "bf16"):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bf16"):
                native = time_dw_impl("native", x, weight, backward=True, repeats=2)
                fft = time_dw_impl("fft", x, weight, backward=True, repeats=2)
            rows.append({"k": k, "dtype": dtype, "shape": list(shape), "native_ms": 1000 * native,
                         "fft_ms": 1000 * fft, "native_over_fft": native / fft,
                         "choice": "fft" if fft < native else "native"})
    return rows


def matmul_tflops(n: int, dtype: torch.dtype, device: torch.device, repeats: int = 3) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        a @ b
        sync(device)
        times.append(time.perf_counter() - start)
    return 2 * n**3 / median(times) / 1e12


# ----------------------------------------------------------------------------- the run


def environment(device: torch.device) -> dict:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()
    return {"device": device.type, "device_name": name, "torch": torch.__version__,
            "threads": torch.get_num_threads(), "cpus": psutil.cpu_count(), "python": platform.python_version()}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def run_bench(bcfg: BenchConfig, log=print) -> dict:
    """Every measurement, in one process; returns the results (``write_results`` saves them)."""
    import lightning  # noqa: F401  (its import sets its logger to INFO: quieten it afterwards)

    # No "GPU available", AMP, tip and "max_steps reached" lines for each of the dozens of fits.
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*val_dataloader.*")  # the bench fits without validation
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # lightning 2.6 against torch 2.13's pytree
    device = pick_device(bcfg.device)
    started = time.perf_counter()
    variants = bcfg.variants or available_variants()
    size = [f"data.height={bcfg.height}", f"data.width={'null' if bcfg.width is None else bcfg.width}"]
    cfgs = {v: load_config(v, [*bcfg.overrides, *size]) for v in variants}
    base = cfgs.get(bcfg.settings_variant) or load_config(bcfg.settings_variant, [*bcfg.overrides, *size])
    h, w = training_size(bcfg.height, bcfg.width, 2 ** base.model.depth)
    images, masks = random_batch(bcfg.batch_size, h, w)
    results: dict = {"config": asdict(bcfg), "env": environment(device), "size": [h, w]}
    t = base.trainer
    results["config_setting"] = setting_name(str(t.precision), bool(t.channels_last), bool(t.compile))
    log(f"bench on {results['env']['device_name']}: steps at {h}x{w}, batch {bcfg.batch_size}")

    # The settings sweep comes first: its fastest setting is the "fast" column of every variant.
    ref = reference_step(base, images, masks, bcfg.steps, bcfg.warmup, device)
    settings = {}
    for name in bcfg.settings:
        try:
            row = project_step(base, parse_setting(name), images, masks, bcfg.steps, bcfg.warmup, device)
        except Exception as exc:  # e.g. torch.compile without a working C++ compiler: say so, go on
            results.setdefault("errors", {})[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
            log(f"  {bcfg.settings_variant} {name}: failed ({results['errors'][name]})")
            continue
        row["ratio_to_reference"] = row["images_per_s"] / ref["images_per_s"]
        settings[name] = row
        log(f"  {bcfg.settings_variant} {name}: {row['images_per_s']:.2f} img/s (x{row['ratio_to_reference']:.2f}"
            f" the reference), first step {row['first_step_s']:.1f} s")
    results["settings"] = settings
    # Every variant's "fast" column runs the configured defaults (configs/base.yaml), which this
    # sweep is for choosing; the sweep's own pick is reported beside them.
    results["best_setting"] = pick_fast(settings) if settings else results["config_setting"]
    fast_name = results["config_setting"]
    results["fast_setting"] = fast_name
    if results["best_setting"] != fast_name and fast_name in settings:
        gain = settings[results["best_setting"]]["images_per_s"] / settings[fast_name]["images_per_s"]
        log(f"  note: {results['best_setting']} was x{gain:.2f} the configured defaults ({fast_name}) here")
    fast = parse_setting(fast_name)

    steps = {}
    for v, cfg in cfgs.items():
        same = v == bcfg.settings_variant
        ref_v = ref if same else reference_step(cfg, images, masks, bcfg.steps, bcfg.warmup, device)
        f32 = settings["32"] if same and "32" in settings else project_step(
            cfg, parse_setting("32"), images, masks, bcfg.steps, bcfg.warmup, device)
        fst = settings[fast_name] if same and fast_name in settings else project_step(
            cfg, fast, images, masks, bcfg.steps, bcfg.warmup, device)
        steps[v] = {"reference": ref_v, "project_32": f32, "project_fast": fst,
                    "ratio_32": f32["images_per_s"] / ref_v["images_per_s"],
                    "ratio_fast": fst["images_per_s"] / ref_v["images_per_s"]}
        log(f"  step {v}: reference {ref_v['images_per_s']:.2f} img/s, project fp32 x{steps[v]['ratio_32']:.2f}, "
            f"{fst['setting']} x{steps[v]['ratio_fast']:.2f}")
    results["steps"] = steps

    flops = training_flops(base, images.to(device))
    bf16_rate = matmul_tflops(bcfg.matmul_size, torch.bfloat16, device)
    f32_rate = matmul_tflops(bcfg.matmul_size, torch.float32, device)
    best = max(settings.values(), key=lambda r: r["images_per_s"]) if settings else steps[bcfg.settings_variant][
        "project_fast"]
    achieved = flops / best["step_s"] / 1e12
    results["matmul"] = {"bf16_tflops": bf16_rate, "float32_tflops": f32_rate, "size": bcfg.matmul_size,
                         "train_step_gflop": flops / 1e9, "best_setting": best["setting"],
                         "achieved_tflops": achieved, "mfu_vs_bf16_matmul": achieved / bf16_rate}
    log(f"  matmul bf16 {bf16_rate:.3f} TFLOP/s, fp32 {f32_rate:.3f}; {bcfg.settings_variant} MFU "
        f"{100 * achieved / bf16_rate:.1f}% ({best['setting']})")

    breakdown = {}
    uncompiled = {**fast, "compile": False}  # the profiler names aten ops; a compiled graph hides them
    for v, cfg in cfgs.items():
        breakdown[v] = step_breakdown(cfg, uncompiled, images, masks, bcfg.steps, bcfg.warmup, device)
        b = breakdown[v]
        log(f"  breakdown {v}: {b['step_ms']:.1f} ms per step, convolutions {100 * b['conv_share']:.0f}% "
            f"({b['step_gflop']:.1f} GFLOP at {_num(b['conv_tflops'], '.3f')} TFLOP/s), other {b['other_ms']:.1f} ms")
    results["breakdown"] = breakdown
    results["pairs"] = {}
    for a, b in [(a, b) for a, b in PAIRS if a in breakdown and b in breakdown]:
        pair = pair_ratios(breakdown, a, b)
        for key in ("project_32", "project_fast"):  # the timed steps of the table above, same ratio
            pair[f"timed_{key}"] = steps[a][key]["step_s"] / steps[b][key]["step_s"]
        ms = steps_in_turns_ms({a: cfgs[a], b: cfgs[b]}, uncompiled, images, masks, bcfg.pair_turns, bcfg.warmup,
                               device)
        pair.update({"turns_ms": ms, "turns": ms[a] / ms[b]})
        log(f"  pair {a}/{b}: step time ratio {pair['turns']:.2f} in {bcfg.pair_turns} turns "
            f"({ms[a]:.1f} / {ms[b]:.1f} ms), FLOP ratio {pair['flops']:.2f}, at equal conv efficiency "
            f"{pair['step_at_equal_conv_efficiency']:.2f}")
        results["pairs"][f"{a}/{b}"] = pair

    loader_cfg = load_config(bcfg.settings_variant, [*bcfg.overrides, f"data.height={bcfg.loader_height}"])
    lh, lw = training_size(bcfg.loader_height, None, 2 ** loader_cfg.model.depth)
    limages, lmasks = random_batch(bcfg.batch_size, lh, lw)
    loader = bench_loader(loader_cfg, bcfg, device)
    model = project_step(loader_cfg, fast, limages, lmasks, max(2, bcfg.steps // 2), bcfg.warmup, device)
    loader["model_images_per_s"] = model["images_per_s"]
    loader["model_setting"] = model["setting"]
    for key in [k for k in loader if k.startswith("cached_") and k.endswith("_images_per_s")]:
        loader[key.replace("_images_per_s", "_over_model")] = loader[key] / model["images_per_s"]
    results["loader"] = loader
    log(f"  loader at {lh}x{lw}: first epoch {loader['first_epoch_images_per_s']:.1f} img/s, cached "
        f"{loader['cached_cpu_aug_w0_images_per_s']:.1f} img/s, model {model['images_per_s']:.2f} img/s")

    image = full_resolution_image(base)
    inference = {}
    for v, cfg in cfgs.items():
        system = _system(cfg).to(device)
        inference[v] = {"predict_ms": predict_latency_ms(system, image, bcfg.inference_repeats, device)}
        if any(hasattr(block, "reparameterize") for block in system.model.encoder):  # e.g. replk
            inference[v]["fused"] = bench_fused(cfg, bcfg.fused_repeats, device)
        log(f"  predict {v}: {inference[v]['predict_ms']:.1f} ms per 1918x1280 image"
            + (f"; fused x{inference[v]['fused']['speedup']:.2f}" if "fused" in inference[v] else ""))
    results["inference"] = inference

    results["dwconv"] = bench_dwconv(bcfg.dw_kernels, bcfg.dw_shape, device)
    for row in results["dwconv"]:
        log(f"  depthwise K={row['k']} {row['dtype']}: native {row['native_ms']:.1f} ms, fft {row['fft_ms']:.1f} ms")
    results["bench_s"] = time.perf_counter() - started
    return results


def table(results: dict) -> str:
    """The results as markdown tables (what docs/performance.md shows)."""
    env = results["env"]
    lines = [f"Device: {env['device_name']} ({env['threads']} threads), torch {env['torch']}; "
             f"steps at {results['size'][0]}x{results['size'][1]}, batch {results['config']['batch_size']}; "
             f"fast setting = the configured defaults, {results['fast_setting']} (the sweep's pick: "
             f"{results.get('best_setting', results['fast_setting'])})", "",
             "| variant | reference img/s | project fp32 img/s | ratio | project fast img/s | ratio | "
             "peak mem fast (MB) | predict ms/img |", "|---|---|---|---|---|---|---|---|"]
    for v, s in results["steps"].items():
        inf = results["inference"].get(v, {})
        lines.append(f"| {v} | {s['reference']['images_per_s']:.2f} | {s['project_32']['images_per_s']:.2f} | "
                     f"{s['ratio_32']:.2f} | {s['project_fast']['images_per_s']:.2f} | {s['ratio_fast']:.2f} | "
                     f"{s['project_fast']['peak_mem_mb']:.0f} | {inf.get('predict_ms', float('nan')):.1f} |")
    lines += ["", f"| {results['config']['settings_variant']} setting | img/s | x reference | first step s | "
              "peak mem (MB) |", "|---|---|---|---|---|"]
    for name, r in results["settings"].items():
        lines.append(f"| {name} | {r['images_per_s']:.2f} | {r['ratio_to_reference']:.2f} | "
                     f"{r['first_step_s']:.1f} | {r['peak_mem_mb']:.0f} |")
    if results.get("breakdown"):
        setting = next(iter(results["breakdown"].values()))["setting"]
        lines += ["", f"Where a step goes ({setting}, plain loop under torch.profiler; GFLOP of forward + backward):",
                  "",
                  "| variant | step ms | convolutions ms | other ms | conv share | GFLOP | conv TFLOP/s |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {v} | {b['step_ms']:.1f} | {b['conv_ms']:.1f} | {b['other_ms']:.1f} | "
                  f"{100 * b['conv_share']:.0f}% | {b['step_gflop']:.1f} | {_num(b['conv_tflops'], '.3f')} |"
                  for v, b in results["breakdown"].items()]
    if results.get("pairs"):
        lines += ["", "| pair | step time ratio, fast, in turns | timed fp32 | timed fast | profiled fast | "
                  "FLOP ratio | conv ms ratio | other ms ratio | profiled, at equal conv efficiency |",
                  "|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {k} | {r['turns']:.2f} | {r['timed_project_32']:.2f} | {r['timed_project_fast']:.2f} | "
                  f"{r['step']:.2f} | {r['flops']:.2f} | {r['conv_ms']:.2f} | {r['other_ms']:.2f} | "
                  f"{r['step_at_equal_conv_efficiency']:.2f} |" for k, r in results["pairs"].items()]
    ld = results["loader"]
    lines += ["", f"Loader at {ld['size'][0]}x{ld['size'][1]}, batch {results['config']['batch_size']} "
              f"({ld['train_images']} train images): model consumes {ld['model_images_per_s']:.2f} img/s "
              f"({ld['model_setting']})", "", "| loader | img/s | x model |", "|---|---|---|",
              f"| first epoch (decode + cache) | {ld['first_epoch_images_per_s']:.1f} | "
              f"{ld['first_epoch_images_per_s'] / ld['model_images_per_s']:.2f} |"]
    for key in [k for k in ld if k.startswith("cached_") and k.endswith("_images_per_s")]:
        label = key.removeprefix("cached_").removesuffix("_images_per_s")
        lines.append(f"| cached, {label} | {ld[key]:.1f} | {ld[key] / ld['model_images_per_s']:.2f} |")
    fused = {v: r["fused"] for v, r in results["inference"].items() if "fused" in r}
    if fused:
        lines += ["", "| variant | unfused model ms/img | fused model ms/img | speedup | max rel diff |",
                  "|---|---|---|---|---|"]
        lines += [f"| {v} | {f['unfused_ms']:.1f} | {f['fused_ms']:.1f} | {f['speedup']:.2f} | "
                  f"{f['max_rel_diff']:.1e} |" for v, f in fused.items()]
    lines += ["", "| depthwise K | dtype | native fwd+bwd ms | fft fwd+bwd ms | native/fft |", "|---|---|---|---|---|"]
    lines += [f"| {r['k']} | {r['dtype']} | {r['native_ms']:.1f} | {r['fft_ms']:.1f} | {r['native_over_fft']:.2f} |"
              for r in results["dwconv"]]
    m = results["matmul"]
    lines += ["", f"Matmul {m['size']}^2: bf16 {m['bf16_tflops']:.3f} TFLOP/s, fp32 {m['float32_tflops']:.3f} "
              f"TFLOP/s; {results['config']['settings_variant']} step {m['train_step_gflop']:.1f} GFLOP at "
              f"{m['achieved_tflops']:.3f} TFLOP/s ({m['best_setting']}): MFU {100 * m['mfu_vs_bf16_matmul']:.1f}%"]
    return "\n".join(lines)


def _num(value: float | None, spec: str) -> str:
    return "n/a" if value is None or math.isnan(value) else format(value, spec)


def _numeric_leaves(d, prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    items = d.items() if isinstance(d, dict) else ((f"{r['k']}_{r['dtype']}", r) for r in d)
    for k, v in items:
        key = f"{prefix}{k}"
        if isinstance(v, (dict, list)) and k not in ("config", "size", "shape"):
            out.update(_numeric_leaves(v, key + "/"))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[key] = float(v)
    return out


def write_results(results: dict, out: str | Path, experiment: str = "bench") -> str:
    """The JSON file and an MLflow run in ``experiment`` (metrics, params, the JSON); the run id."""
    import mlflow

    from lk_segment.tracking import artifact_location, tracking_uri

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    mlflow.set_tracking_uri(tracking_uri())
    if mlflow.get_experiment_by_name(experiment) is None:
        mlflow.create_experiment(experiment, artifact_location=artifact_location())
    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name=f"bench-{results['env']['device']}") as run:
        mlflow.log_params({k: str(v)[:250] for k, v in results["config"].items()})
        mlflow.set_tags({"device_name": results["env"]["device_name"], "torch": results["env"]["torch"]})
        metrics = {k: v for k, v in _numeric_leaves(results).items() if not k.startswith("env/")}
        mlflow.log_metrics({k.replace("+", "_"): v for k, v in metrics.items()})
        mlflow.log_artifact(str(out))
        return run.info.run_id


def bench_config_from(args: dict) -> BenchConfig:
    """A BenchConfig from the CLI's options (None: keep the default)."""
    return BenchConfig(**{k: v for k, v in args.items() if v is not None})

