"""The results as markdown tables: what ``lk-segment bench`` prints and docs/performance.md shows."""

from __future__ import annotations

from lk_segment.bench.results import BenchResults, Step
from lk_segment.markdown import header, number, row


def _roofline_cells(step: Step) -> list[str]:
    r = step.roofline
    return [f"{r.gflop:.1f}", f"{r.mbytes:.0f}", f"{r.roofline_ms:.1f} ({r.bound})", f"{step.step_ms:.1f}",
            f"{r.measured_over_roofline:.1f}", f"{100 * r.mfu:.1f}%"]


def table(results: BenchResults) -> str:
    env, cfg, peaks = results.env, results.config, results.peaks
    lines = [f"Device: {env.device_name} ({env.threads} threads), torch {env.torch}; steps at {results.size[0]}x"
             f"{results.size[1]}, batch {cfg.batch_size}; float32 rows with TF32 {'on' if env.tf32 else 'off'}; "
             f"fast setting = the configured defaults, {results.config_setting} (the sweep's pick: "
             f"{results.best_setting})", "",
             f"Peaks measured in this run: matmul {peaks.matmul_size}^3 bf16 {peaks.bf16_tflops:.3f} TFLOP/s, "
             f"float32 {peaks.float32_tflops:.3f} TFLOP/s; device-to-device copy of {peaks.copy_mb} MB "
             f"{peaks.copy_gbps:.1f} GB/s (read + written)", ""]
    lines += header("variant", "reference img/s", "project fp32 img/s", "ratio", "project fast img/s", "ratio",
                     "peak mem fast (MB)", "predict ms/img")
    for v, s in results.steps.items():
        inf = results.inference.get(v)
        lines.append(row(v, f"{s.reference.images_per_s:.2f}", f"{s.project_32.images_per_s:.2f}",
                          f"{s.ratio_32:.2f}", f"{s.project_fast.images_per_s:.2f}", f"{s.ratio_fast:.2f}",
                          f"{s.project_fast.peak_mem_mb:.0f}", number(inf and inf.predict_ms, ".1f")))
    lines += ["", "Roofline of each step (docs/performance.md: the bytes estimate): roofline ms = max(GFLOP / "
              "matmul peak, MB / copy bandwidth) in the step's dtype; MFU = GFLOP / measured ms / matmul peak", ""]
    lines += header("variant", "setting", "GFLOP", "MB moved", "roofline ms", "measured ms", "measured/roofline",
                     "MFU")
    for v, s in results.steps.items():
        lines += [row(v, step.setting, *_roofline_cells(step)) for step in (s.project_32, s.project_fast)]
    ref = results.settings_reference
    lines += ["", *header(f"{cfg.settings_variant} setting", "img/s", "x reference", "first step s",
                           "peak mem (MB)", "measured/roofline")]
    for name, r in results.settings.items():
        lines.append(row(name, f"{r.images_per_s:.2f}", f"{r.images_per_s / ref.images_per_s:.2f}",
                          f"{r.first_step_ms / 1000:.1f}", f"{r.peak_mem_mb:.0f}",
                          f"{r.roofline.measured_over_roofline:.1f}"))
    lines += [f"\nSetting failed: {name}: {error}" for name, error in results.errors.items()]
    if results.breakdown:
        setting = next(iter(results.breakdown.values())).setting
        lines += ["", f"Where a step goes ({setting}, plain loop under torch.profiler; GFLOP of forward + "
                  "backward):", "", *header("variant", "step ms", "convolutions ms", "other ms", "conv share",
                                             "GFLOP", "conv TFLOP/s")]
        lines += [row(v, f"{b.step_ms:.1f}", f"{b.conv_ms:.1f}", f"{b.other_ms:.1f}", f"{100 * b.conv_share:.0f}%",
                       f"{b.step_gflop:.1f}", number(b.conv_tflops, ".3f")) for v, b in results.breakdown.items()]
    if results.pairs:
        lines += ["", *header("pair", "step time ratio, fast, in turns", "timed fp32", "timed fast",
                               "profiled fast", "FLOP ratio", "conv ms ratio", "other ms ratio",
                               "profiled, at equal conv efficiency")]
        lines += [row(k, f"{p.turns:.2f}", f"{p.timed_project_32:.2f}", f"{p.timed_project_fast:.2f}",
                       f"{p.step:.2f}", f"{p.flops:.2f}", f"{p.conv_ms:.2f}", f"{p.other_ms:.2f}",
                       f"{p.step_at_equal_conv_efficiency:.2f}") for k, p in results.pairs.items()]
    ld = results.loader
    lines += ["", f"Loader at {ld.size[0]}x{ld.size[1]}, batch {cfg.batch_size} ({ld.train_images} train images): "
              f"model consumes {ld.model_images_per_s:.2f} img/s ({ld.model_setting})", "",
              *header("loader", "img/s", "x model"),
              row("first epoch (decode + cache)", f"{ld.first_epoch_images_per_s:.1f}",
                   f"{ld.first_epoch_images_per_s / ld.model_images_per_s:.2f}")]
    lines += [row(f"cached, {label}", f"{rate:.1f}", f"{rate / ld.model_images_per_s:.2f}")
              for label, rate in ld.cached_images_per_s.items()]
    fused = {v: r.fused for v, r in results.inference.items() if r.fused}
    if fused:
        lines += ["", *header("variant", "unfused model ms/img", "fused model ms/img", "speedup", "max rel diff")]
        lines += [row(v, f"{f.unfused_ms:.1f}", f"{f.fused_ms:.1f}", f"{f.speedup:.2f}", f"{f.max_rel_diff:.1e}")
                  for v, f in fused.items()]
    lines += ["", *header("depthwise K", "dtype", "B x C x H x W", "FFT grid", "native fwd+bwd ms",
                           "fft fwd+bwd ms", "native/fft")]
    lines += [row(r.k, r.dtype, "x".join(map(str, r.shape)), "x".join(map(str, r.fft_grid)), f"{r.native_ms:.1f}",
                   f"{r.fft_ms:.1f}", f"{r.native_over_fft:.2f}") for r in results.dwconv]
    return "\n".join(lines)
