"""``make gpu-check``'s record: the bench and the cuda tests summarised, and ``gpu-check.md``."""

from __future__ import annotations

from lk_segment import names
from lk_segment.markdown import header, number, row


def summarise_bench(bench: dict) -> dict:
    """The figures docs/performance.md quotes, out of the bench's JSON."""
    steps, inference, peaks = bench["steps"], bench["inference"], bench["peaks"]

    def mfu(step: dict) -> float | None:
        roofline = step.get("roofline") or {}
        return roofline.get("mfu")

    return {"size": bench["size"], "batch": bench["config"]["batch_size"], "device_name": bench["env"]["device_name"],
            "setting": bench["config_setting"],
            "variants": {v: {"images_per_s": row["project_fast"]["images_per_s"],
                             "peak_mem_mb": row["project_fast"]["peak_mem_mb"],
                             "reference_images_per_s": row["reference"]["images_per_s"],
                             "mfu": mfu(row["project_fast"]),
                             "predict_ms": inference.get(v, {}).get("predict_ms")} for v, row in steps.items()},
            "bf16_matmul_tflops": peaks["bf16_tflops"], "copy_gbps": peaks["copy_gbps"]}


def pytest_counts(log: str) -> dict:
    """'3 passed, 19 skipped in 4.2s' -> {'passed': 3, 'skipped': 19}; skip reasons kept (-ra)."""
    counts: dict = {}
    for line in log.splitlines()[::-1]:
        if " in " in line and any(w in line for w in ("passed", "skipped", "failed", "error", "deselected")):
            for part in line.strip("= ").split(" in ")[0].split(","):
                count, _, what = part.strip().partition(" ")
                if count.isdigit():
                    counts[what] = int(count)
            break
    counts["skip_reasons"] = sorted({ln.split(": ", 1)[-1] for ln in log.splitlines() if ln.startswith("SKIPPED")})
    return counts


def markdown(results: dict) -> str:
    env = results.get("environment") or {}
    lines = [f"# gpu-check ({results['mode']} mode): {'all steps passed' if results['passed'] else 'FAILED'}", "",
             f"Device: {env.get('device_name', '?')}; torch {env.get('torch', '?')}, CUDA {env.get('cuda')}, "
             f"bf16 {env.get('bf16')}, {env.get('cpus')} CPUs, python {env.get('python')}.", "",
             *header("step", "status", "seconds", "limit s")]
    lines += [row(s["name"], s["status"], s["seconds"], s.get("limit_s", "")) for s in results["steps"]]
    tests = results.get("cuda_tests") or {}
    lines += ["", "`cuda` tests: " + ", ".join(f"{v} {k}" for k, v in tests.items() if k != "skip_reasons")]
    lines += [f"  (skipped: {r})" for r in tests.get("skip_reasons", [])[:1]]
    lines += ["", *header("training (2 epochs)", "size", "status", names.VAL_DICE, "epoch s", "img/s", "GPU peak MB",
                          "reserved MB")]
    for variant, t in results["trainings"].items():
        if t:
            size = "x".join(map(str, t["size"]))
            lines.append(row(variant, size, t["status"], number(t["val_dice"], ".4f"), number(t["epoch_time_s"], ".2f"),
                             number(t["train_images_per_s"], ".2f"), number(t["gpu_peak_mem_mb"], ".0f"),
                             number(t["gpu_peak_reserved_mb"], ".0f")))
        else:
            lines.append(row(variant, "", "failed", *[""] * 5))
    bench = results.get("bench")
    if bench:
        h, w = bench["size"]
        lines += ["", f"Bench at {h}x{w}, batch {bench['batch']}, {bench['setting']} (training step; predict: "
                  "one 1918x1280 image):",
                  "",
                  *header("variant", "img/s", "x plain fp32 reference", "MFU", "peak MB", "predict ms/img")]
        for v, b in bench["variants"].items():
            ratio = b["images_per_s"] / b["reference_images_per_s"]
            mfu = f"{100 * b['mfu']:.1f}%" if b.get("mfu") is not None else "n/a"
            lines.append(row(v, f"{b['images_per_s']:.1f}", f"{ratio:.2f}", mfu, f"{b['peak_mem_mb']:.0f}",
                             number(b["predict_ms"], ".2f")))
        lines.append(f"\nMeasured in the same run: bf16 matmul {bench['bf16_matmul_tflops']:.3g} TFLOP/s, "
                     f"device copy {bench['copy_gbps']:.0f} GB/s (the MFU's and the roofline's denominators)")
    loader = results.get("loader")
    if loader:
        h, w = loader["size"]
        lines += ["", f"Loader at {h}x{w}, batch {loader['batch_size']}, {loader['workers']} workers: "
                  f"{loader['loader_images_per_s']:.1f} img/s (device augmentation, 0 workers: "
                  f"{loader['loader_device_aug_images_per_s']:.1f}) against the 3x3 step's "
                  f"{loader['model_images_per_s']:.1f} img/s: x{loader['loader_over_model']:.2f}"]
    p = results.get("predict") or {}
    lines += ["", f"Predict: {p.get('masks')} masks for {p.get('photos')} photos on {p.get('device')}, "
              f"{p.get('seconds')} s for the whole command."]
    return "\n".join(lines) + "\n"
