"""The bench in a tiny configuration, and the correctness of what it compares: the reference
computes the project's function, the fast settings give the float32 loss, fused = unfused."""

from __future__ import annotations

import json
import math

import pytest
import torch

from lk_segment.bench import (
    BenchConfig,
    bench_fused,
    interleaved_latency_ms,
    pair_ratios,
    parse_setting,
    pick_fast,
    random_batch,
    run_bench,
    step_breakdown,
    steps_in_turns_ms,
    table,
    training_flops,
    write_results,
)
from lk_segment.cli import main
from lk_segment.config import load_config, to_container
from lk_segment.data.augment_gpu import BatchAugmentation
from lk_segment.data.carvana import MEAN, STD
from lk_segment.errors import UserError
from lk_segment.reference import REFERENCE_BLOCKS, ReferenceUNet, reference_loss
from lk_segment.system import SegmentationSystem, soft_dice_loss
from lk_segment.unet import UNet
from tests.conftest import tiny_overrides


def tiny_bench(root, variants=("3x3",), **kw) -> BenchConfig:
    opts = dict(variants=list(variants), overrides=[*tiny_overrides(root), "model.depth=2"], height=64,
                steps=1, warmup=1, settings=["32", "bf16+cl"], loader_height=64, loader_images=32,
                loader_workers=[0], inference_repeats=1, fused_repeats=1, pair_turns=1, dw_kernels=[3, 7],
                dw_shape=[1, 2, 16, 16], matmul_size=64)
    opts.update(kw)
    return BenchConfig(**opts)


def positive_numbers(d) -> list[float]:
    values = d.values() if isinstance(d, dict) else d
    out = []
    for v in values:
        if isinstance(v, (dict, list)):
            out += positive_numbers(v)
        elif isinstance(v, float):
            out.append(v)
    return out


@pytest.mark.slow
def test_tiny_bench_measures_everything_and_logs_to_mlflow(tiny_root, workdir):
    results = run_bench(tiny_bench(tiny_root), log=lambda *_: None)
    s = results["steps"]["3x3"]
    assert s["reference"]["kind"] == "reference"
    assert s["ratio_32"] == pytest.approx(s["project_32"]["images_per_s"] / s["reference"]["images_per_s"])
    assert set(results["settings"]) == {"32", "bf16+cl"}
    assert results["fast_setting"] == results["config_setting"] == "bf16+cl"  # configs/base.yaml
    assert results["best_setting"] in results["settings"]
    assert results["loader"]["train_images"] > 0 and results["loader"]["model_images_per_s"] > 0
    assert {"cached_cpu_aug_w0_images_per_s", "cached_device_aug_w0_images_per_s"} <= set(results["loader"])
    assert [(r["k"], r["dtype"]) for r in results["dwconv"]] == [(3, "float32"), (3, "bf16"), (7, "float32"),
                                                                 (7, "bf16")]
    assert results["inference"]["3x3"]["predict_ms"] > 0
    numbers = [v for v in positive_numbers(results) if v != results["inference"]["3x3"].get("max_rel_diff")]
    assert numbers and all(math.isfinite(v) and v > 0 for v in numbers)  # a figure left at 0 was not measured
    assert "| 3x3 |" in table(results)
    assert set(results["breakdown"]) == {"3x3"} and "Where a step goes" in table(results)

    run_id = write_results(results, workdir / "bench.json")
    assert json.loads((workdir / "bench.json").read_text())["fast_setting"] == results["fast_setting"]
    import mlflow

    run = mlflow.get_run(run_id)
    assert mlflow.get_experiment(run.info.experiment_id).name == "bench"
    assert run.data.metrics["steps/3x3/ratio_32"] == pytest.approx(s["ratio_32"])


@pytest.mark.slow
@pytest.mark.parametrize("setting", ["32", "bf16+cl"])
def test_step_breakdown_splits_the_step_and_counts_its_flops(tiny_cfg, setting):
    images, masks = random_batch(2, 64, 96)
    rows = {}
    for variant in ("5x5", "1x5"):
        cfg = tiny_cfg(variant)
        rows[variant] = b = step_breakdown(cfg, parse_setting(setting), images, masks, 2, 1, torch.device("cpu"))
        assert b["conv_ms"] > 0 and b["other_ms"] > 0  # a U-Net step always has both
        assert b["conv_ms"] + b["other_ms"] == pytest.approx(b["step_ms"])
        assert b["step_gflop"] == pytest.approx(training_flops(cfg, images) / 1e9)  # the whole batch
        assert b["setting"] == setting
    # 1x5 + 5x1 does fewer multiply-adds than 5x5 on every block but the 3-channel input one
    assert rows["1x5"]["step_gflop"] < rows["5x5"]["step_gflop"]
    pair = pair_ratios(rows, "1x5", "5x5")
    assert pair["flops"] == pytest.approx(rows["1x5"]["step_gflop"] / rows["5x5"]["step_gflop"])
    expected = (rows["1x5"]["other_ms"] + pair["flops"] * rows["5x5"]["conv_ms"]) / rows["5x5"]["step_ms"]
    assert pair["step_at_equal_conv_efficiency"] == pytest.approx(expected)


@pytest.mark.parametrize("block,k", [("3x3", 3), ("5x5", 5), ("1x5", 5)])
def test_reference_computes_the_projects_function(block, k):
    assert block in REFERENCE_BLOCKS
    unet, ref = UNet(block, width=4, depth=2, kernel_size=k), ReferenceUNet(block, width=4, depth=2, kernel_size=k)
    # Same architecture, parameters created in the same order: copy them across by position.
    ref.load_state_dict(dict(zip(ref.state_dict().keys(), unet.state_dict().values(), strict=True)))
    x, target = torch.randn(2, 3, 32, 48), (torch.rand(2, 1, 32, 48) > 0.5).float()
    unet.eval(), ref.eval()
    torch.testing.assert_close(ref(x), unet(x))
    logits = unet(x)
    project_loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, target) + soft_dice_loss(logits, target)
    torch.testing.assert_close(reference_loss(logits, target), project_loss)


@pytest.mark.parametrize("setting", ["bf16", "bf16+cl", "32+cl"])
def test_fast_settings_give_the_float32_loss(tiny_cfg, setting):
    cfg = load_config("3x3", ["model.width=4", "model.depth=2"])
    config = to_container(cfg)
    torch.manual_seed(0)
    plain = SegmentationSystem(model=config["model"], optim=config["optim"]).eval()
    fast = SegmentationSystem(model=config["model"], optim=config["optim"]).eval()
    fast.load_state_dict(plain.state_dict())
    opts = parse_setting(setting)
    fast.configure_speed(channels_last=opts["channels_last"])
    x, target = torch.randn(2, 3, 64, 96), (torch.rand(2, 1, 64, 96) > 0.5).float()
    want = plain._loss(plain(x), target)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=opts["precision"] == "bf16-mixed"):
        got = fast._loss(fast(x), target)
    tolerance = 2e-2 if opts["precision"] == "bf16-mixed" else 1e-5  # bf16 keeps 8 bits of mantissa
    assert abs(float(got) - float(want)) <= tolerance * abs(float(want))
    if opts["channels_last"]:
        assert next(fast.model.parameters()).is_contiguous(memory_format=torch.channels_last)


@pytest.mark.slow
def test_fused_replk_agrees_with_unfused(tiny_root, workdir):
    cfg = load_config("3x3", [*tiny_overrides(tiny_root), "model.block=replk", "model.kernel_size=7",
                              "model.depth=2"])
    result = bench_fused(cfg, repeats=1, device=torch.device("cpu"))
    assert result["max_rel_diff"] < 1e-4
    assert result["unfused_ms"] > 0 and result["fused_ms"] > 0


@pytest.mark.slow
def test_training_flops_count_large_kernels_as_direct_convolutions(tiny_cfg):
    images, masks = random_batch(2, 64, 96)
    counts = {impl: training_flops(tiny_cfg("replk", f"model.block_args.dw_impl={impl}"), images)
              for impl in ("native", "fft", "auto")}  # auto must not count the timing runs it makes
    assert counts["fft"] == counts["auto"] == counts["native"] > 0
    b = step_breakdown(tiny_cfg("replk"), parse_setting("32"), images, masks, 1, 1, torch.device("cpu"))
    assert b["conv_tflops"] is None  # part of the convolution work ran by FFT, outside aten::convolution


@pytest.mark.slow
def test_bench_of_replk_reports_its_breakdown_as_not_applicable(tiny_root, workdir):
    lines: list[str] = []
    results = run_bench(tiny_bench(tiny_root, variants=("replk",), settings=["32"]), log=lines.append)
    assert any(line.startswith("  breakdown replk:") and "n/a TFLOP/s" in line for line in lines)
    assert "| replk |" in table(results)


class _Recorder(torch.nn.Module):
    def __init__(self, name: str, calls: list[str], tick=lambda name: None):
        super().__init__()
        self.name, self.calls, self.tick = name, calls, tick

    def forward(self, x):
        self.calls.append(self.name)
        self.tick(self.name)
        return x


def _clock_where_calls_take(monkeypatch, durations_ms: dict[str, list[float]]):
    """The bench's clock made to stand still but for the calls: returns ``tick(name)``, which
    advances it by the next of ``durations_ms[name]`` (one untimed turn first, then the timed ones)."""
    import lk_segment.bench as bench

    now, left = [0.0], {name: list(ms) for name, ms in durations_ms.items()}
    monkeypatch.setattr(bench.time, "perf_counter", lambda: now[0])

    def tick(name: str) -> None:
        now[0] += left[name].pop(0) / 1000

    return tick


# Per call: an untimed, slow first turn, then 3 timed ones whose median (2, 5) is not their mean.
TURN_MS = {"a": [50.0, 1.0, 2.0, 9.0], "b": [50.0, 4.0, 5.0, 30.0]}


def test_pair_steps_are_timed_in_turns(monkeypatch, tiny_cfg):
    import lk_segment.bench as bench

    calls: list[str] = []
    tick = _clock_where_calls_take(monkeypatch, {"1x5": TURN_MS["a"], "5x5": TURN_MS["b"]})

    def step(block: str) -> None:
        calls.append(block)
        tick(block)

    monkeypatch.setattr(bench, "plain_step", lambda cfg, *a: (lambda: step(cfg.model.block), None))
    ms = steps_in_turns_ms({"1x5": tiny_cfg("1x5"), "5x5": tiny_cfg("5x5")}, parse_setting("32"), None, None,
                           turns=3, warmup=1, device=torch.device("cpu"))
    assert calls == ["1x5", "5x5"] * 4  # one untimed turn, then 3 timed ones
    assert ms == pytest.approx({"1x5": 2.0, "5x5": 5.0})  # the median ms of the timed turns


@pytest.mark.slow
def test_bench_of_a_pair_reports_its_ratios(tiny_root, workdir):
    results = run_bench(tiny_bench(tiny_root, variants=("1x5", "5x5"), settings=["32"]), log=lambda *_: None)
    pair = results["pairs"]["1x5/5x5"]
    assert pair["turns"] == pytest.approx(pair["turns_ms"]["1x5"] / pair["turns_ms"]["5x5"])
    assert pair["flops"] < 1  # 1x5 + 5x1 does fewer multiply-adds
    assert "| 1x5/5x5 |" in table(results)


def test_fused_and_unfused_are_timed_in_turns(monkeypatch):
    calls: list[str] = []
    tick = _clock_where_calls_take(monkeypatch, TURN_MS)
    ms = interleaved_latency_ms({"a": _Recorder("a", calls, tick), "b": _Recorder("b", calls, tick)},
                                torch.zeros(1), 3, torch.device("cpu"))
    assert calls == ["a", "b"] * 4  # one untimed call each, then 3 timed turns
    assert ms == pytest.approx({"a": 2.0, "b": 5.0})  # the median ms of the timed turns


def test_batch_augmentation_moves_masks_with_images():
    torch.manual_seed(0)
    mean, std = (torch.from_numpy(v / 255).view(1, 3, 1, 1) for v in (MEAN, STD))
    images = (torch.rand(4, 3, 32, 48) - mean) / std  # normalised photos: pixels in 0..1 before
    masks = (torch.rand(4, 1, 32, 48) > 0.5).float()
    out_images, out_masks = BatchAugmentation()(images, masks)
    assert out_images.shape == images.shape and out_masks.shape == masks.shape
    assert set(out_masks.unique().tolist()) <= {0.0, 1.0}
    import kornia.augmentation as K

    flip = BatchAugmentation()  # a sure flip and no colour: the mask must move exactly as the image
    flip.geometric = K.AugmentationSequential(K.RandomHorizontalFlip(p=1.0), data_keys=["input", "mask"])
    flip.colour = torch.nn.Identity()
    got_images, got_masks = flip(images, masks)
    torch.testing.assert_close(got_images, images.flip(-1), atol=1e-5, rtol=1e-5)
    assert torch.equal(got_masks, masks.flip(-1))


def test_augment_on_gpu_moves_augmentation_into_the_system(tiny_cfg):
    from lk_segment.data.module import CarvanaDataModule

    cfg = tiny_cfg("3x3", "data.augment=true", "data.augment_on=gpu")
    system = SegmentationSystem(**{k: to_container(cfg)[k] for k in ("model", "optim", "data")})
    assert isinstance(system.batch_augment, BatchAugmentation)
    dm = CarvanaDataModule(cfg.data, progress=False)
    dm.setup("fit")
    assert dm.train_set.transform is None  # the loader only decodes and normalises
    with pytest.raises(UserError, match="augment_on"):
        CarvanaDataModule(tiny_cfg("3x3", "data.augment_on=tpu").data)


def test_bad_setting_and_unknown_variant_are_refused(capsys):
    with pytest.raises(ValueError, match="setting"):
        parse_setting("fp8")
    assert main(["bench", "--variants", "9x9"]) == 2
    assert "9x9" in capsys.readouterr().err


def test_pick_fast_wants_compile_to_earn_its_compile_time():
    rows = {"32": 1.0, "bf16+cl": 2.0, "bf16+cl+compile": 2.1}
    settings = {name: {"images_per_s": v} for name, v in rows.items()}
    assert pick_fast(settings) == "bf16+cl"  # 5% faster does not pay for minutes of compiling
    settings["bf16+cl+compile"]["images_per_s"] = 3.0
    assert pick_fast(settings) == "bf16+cl+compile"


def test_cpu_peak_memory_is_each_blocks_own_under_the_tuned_allocator():
    from lk_segment import malloc
    from lk_segment.bench import PeakMemory

    if not malloc.tune_malloc():
        pytest.skip("glibc only: elsewhere malloc is not tuned and gives freed memory back itself")
    cpu = torch.device("cpu")
    peaks = []
    for mb in (200, 20):  # below the 256 MiB mmap threshold: the heap keeps the first block's memory
        with PeakMemory(cpu) as mem:
            block = torch.ones(mb * 2**20 // 4)
            del block
        peaks.append(mem.peak_mb)
    assert peaks[1] < peaks[0] - 100  # not the 200 MB the first block left behind for reuse
