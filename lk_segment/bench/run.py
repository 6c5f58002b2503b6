"""Every measurement of the bench, in one process, in order; ``run_bench`` returns them typed."""

from __future__ import annotations

import logging
import time
import warnings

import torch

from lk_segment.bench.config import PAIRS, BenchConfig, parse_setting, setting_name, with_device_defaults
from lk_segment.bench.inference import bench_inference, full_resolution_image
from lk_segment.bench.kernels import bench_dwconv
from lk_segment.bench.loader import bench_loader
from lk_segment.bench.pairs import pair, step_breakdown, steps_in_turns_ms
from lk_segment.bench.peaks import measure_peaks
from lk_segment.bench.results import BenchResults, Env, Step, VariantSteps
from lk_segment.bench.roofline import roofline_of
from lk_segment.bench.settings import pick_fast, sweep_settings
from lk_segment.bench.steps import project_step, reference_step, training_cost
from lk_segment.config import available_variants, load_config, training_size
from lk_segment.device import environment, resolve_device, resolve_precision
from lk_segment.timing import float32_mode


def random_batch(batch: int, height: int, width: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, height, width, generator=g)
    masks = (torch.rand(batch, 1, height, width, generator=g) > 0.5).float()
    return images, masks


def run_bench(bcfg: BenchConfig, log=print) -> BenchResults:
    """Every measurement, in one process, float32 rows with TF32 as ``bcfg.tf32`` says."""
    import lightning  # noqa: F401  (its import sets its logger to INFO: quieten it afterwards)

    # No "GPU available", AMP, tip and "max_steps reached" lines for each of the dozens of fits.
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*val_dataloader.*")  # the bench fits without validation
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # lightning 2.6 against torch 2.13's pytree
    device = resolve_device(bcfg.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: cuDNN picks its fastest kernels in the warm-up
    with float32_mode(bcfg.tf32):
        return _run(bcfg, device, log)


def _run(bcfg: BenchConfig, device: torch.device, log) -> BenchResults:
    started = time.perf_counter()
    size = [f"data.height={bcfg.height}", f"data.width={'null' if bcfg.width is None else bcfg.width}"]
    cfgs = {v: load_config(v, [*bcfg.overrides, *size]) for v in bcfg.variants or available_variants()}
    base = cfgs.get(bcfg.settings_variant) or load_config(bcfg.settings_variant, [*bcfg.overrides, *size])
    bcfg = with_device_defaults(bcfg, device, base.model.width, base.model.depth)
    h, w = training_size(bcfg.height, bcfg.width, 2**base.model.depth)
    images, masks = random_batch(bcfg.batch_size, h, w)
    env = bench_environment(device, bcfg.tf32)
    log(f"bench on {env.device_name}: steps at {h}x{w}, batch {bcfg.batch_size}, float32 rows with TF32 "
        f"{'on' if bcfg.tf32 else 'off'}")

    peaks = measure_peaks(bcfg.matmul_size, bcfg.copy_mb, device, bcfg.peak_repeats)
    log(f"  peaks: matmul {bcfg.matmul_size}^3 bf16 {peaks.bf16_tflops:.3f} TFLOP/s, float32 "
        f"{peaks.float32_tflops:.3f}; copy {peaks.copy_gbps:.1f} GB/s")
    costs = {v: training_cost(cfg, tuple(images.shape)) for v, cfg in {bcfg.settings_variant: base, **cfgs}.items()}

    def with_roofline(step: Step, variant: str) -> Step:
        step.roofline = roofline_of(costs[variant], step.setting, step.step_ms, peaks)
        return step

    # The settings sweep first: every variant's "fast" column runs the configured defaults
    # (configs/base.yaml), which this sweep is for choosing; its own pick is reported beside them.
    reference = reference_step(base, images, masks, bcfg.steps, bcfg.warmup, device)
    log(f"  settings of {bcfg.settings_variant} (reference {reference.images_per_s:.2f} img/s):")
    settings, errors = sweep_settings(base, bcfg.settings, images, masks, bcfg.steps, bcfg.warmup, device, log)
    settings = {name: with_roofline(step, bcfg.settings_variant) for name, step in settings.items()}
    t = base.trainer
    precision = resolve_precision(t.precision, "cuda" if device.type == "cuda" else "cpu")
    config_setting = setting_name(precision, bool(t.channels_last), bool(t.compile))
    best_setting = pick_fast(settings) if settings else config_setting
    fast = parse_setting(config_setting)

    steps = {}
    for v, cfg in cfgs.items():
        reused = v == bcfg.settings_variant
        ref = reference if reused else reference_step(cfg, images, masks, bcfg.steps, bcfg.warmup, device)
        step_32 = settings["32"] if reused and "32" in settings else with_roofline(project_step(
            cfg, parse_setting("32"), images, masks, bcfg.steps, bcfg.warmup, device), v)
        step_fast = settings[config_setting] if reused and config_setting in settings else with_roofline(project_step(
            cfg, fast, images, masks, bcfg.steps, bcfg.warmup, device), v)
        steps[v] = both = VariantSteps(reference=ref, project_32=step_32, project_fast=step_fast)
        roofline = step_fast.roofline
        log(f"  step {v}: reference {ref.images_per_s:.2f} img/s, project fp32 x{both.ratio_32:.2f}, "
            f"{step_fast.setting} x{both.ratio_fast:.2f}; {step_fast.setting} {roofline.measured_over_roofline:.1f}x "
            f"its roofline ({roofline.bound}-bound), MFU {100 * roofline.mfu:.1f}%")

    breakdown, pairs = {}, {}
    uncompiled = {**fast, "compile": False}  # the profiler names aten ops; a compiled graph hides them
    for v, cfg in cfgs.items():
        breakdown[v] = b = step_breakdown(cfg, uncompiled, images, masks, bcfg.steps, bcfg.warmup, device,
                                          costs[v].flops / 1e9)
        log(f"  breakdown {v}: {b.step_ms:.1f} ms per step, convolutions {100 * b.conv_share:.0f}%")
    for a, b in [(a, b) for a, b in PAIRS if a in cfgs and b in cfgs]:
        turns = steps_in_turns_ms({a: cfgs[a], b: cfgs[b]}, uncompiled, images, masks, bcfg.pair_turns,
                                  bcfg.warmup, device)
        pairs[f"{a}/{b}"] = p = pair(a, b, breakdown, steps, turns)
        log(f"  pair {a}/{b}: step time ratio {p.turns:.2f} in {bcfg.pair_turns} turns, FLOP ratio {p.flops:.2f}")

    loader_cfg = load_config(bcfg.settings_variant, [*bcfg.overrides, f"data.height={bcfg.loader_height}"])
    lh, lw = training_size(bcfg.loader_height, None, 2**loader_cfg.model.depth)
    model = project_step(loader_cfg, fast, *random_batch(bcfg.batch_size, lh, lw), max(2, bcfg.steps // 2),
                         bcfg.warmup, device)
    loader = bench_loader(loader_cfg, bcfg, model, device)
    log(f"  loader at {lh}x{lw}: first epoch {loader.first_epoch_images_per_s:.1f} img/s, model "
        f"{model.images_per_s:.2f} img/s")

    image = full_resolution_image(base)
    inference = {}
    for v, cfg in cfgs.items():
        inference[v] = r = bench_inference(cfg, image, bcfg.inference_repeats, bcfg.fused_repeats, device)
        log(f"  predict {v}: {r.predict_ms:.1f} ms per 1918x1280 image"
            + (f"; fused x{r.fused.speedup:.2f}" if r.fused else ""))

    dwconv = bench_dwconv(bcfg.dw_kernels, bcfg.dw_shapes, bcfg.dw_repeats, device)
    for row in dwconv:
        log(f"  depthwise K={row.k} {row.dtype} {'x'.join(map(str, row.shape))}: native {row.native_ms:.1f} ms, "
            f"fft {row.fft_ms:.1f} ms")
    return BenchResults(
        config=bcfg, env=env, size=[h, w], config_setting=config_setting, best_setting=best_setting,
        settings_reference=reference, settings=settings, errors=errors, steps=steps, peaks=peaks, breakdown=breakdown,
        pairs=pairs, loader=loader, inference=inference, dwconv=dwconv, bench_s=time.perf_counter() - started)


def bench_environment(device: torch.device, tf32: bool) -> Env:
    env = environment(device)
    return Env(device=env["device"], device_name=env["device_name"], torch=env["torch"], threads=env["threads"],
               cpus=env["cpus"], python=env["python"], tf32=tf32)
