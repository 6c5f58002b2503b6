"""The bench in a tiny configuration, read through its typed results, and the correctness of
what it compares: the reference computes the project's function, the fast settings give the
float32 loss, fused = unfused. No timing is asserted: only what the figures are made of."""

from __future__ import annotations

import json

import pytest
import torch

from lk_segment.bench import BenchConfig, run_bench, table, write_results
from lk_segment.bench.config import parse_setting, with_device_defaults
from lk_segment.bench.inference import bench_fused
from lk_segment.bench.pairs import step_breakdown
from lk_segment.bench.results import Step
from lk_segment.bench.run import random_batch
from lk_segment.bench.settings import pick_fast
from lk_segment.bench.steps import training_cost
from lk_segment.commands.cli import main
from lk_segment.config import load_config, to_container
from lk_segment.data.augment_device import DeviceAugmentation
from lk_segment.errors import UserError
from lk_segment.reference import REFERENCE_BLOCKS, ReferenceUNet, reference_loss
from lk_segment.system import SegmentationSystem, soft_dice_loss
from lk_segment.unet import UNet
from tests.conftest import tiny_overrides

CPU = torch.device("cpu")


def tiny_bench(root, variants=("3x3",), **kw) -> BenchConfig:
    # bf16 named, not precision=auto: the fast column's figures are bf16's on any machine
    overrides = [*tiny_overrides(root), "model.depth=2", "trainer.precision=bf16-mixed"]
    opts = dict(variants=list(variants), overrides=overrides, height=64,
                steps=1, warmup=1, settings=["32", "bf16+cl"], loader_height=64, loader_images=32,
                loader_workers=[0], inference_repeats=1, fused_repeats=1, pair_turns=1, dw_kernels=[3, 7],
                dw_shapes=[[1, 2, 16, 16]], dw_repeats=1, matmul_size=64, copy_mb=4, peak_repeats=1)
    opts.update(kw)
    return BenchConfig(**opts)

@pytest.mark.slow
def test_tiny_bench_measures_everything_and_logs_to_mlflow(tiny_root, workdir):
    results = run_bench(tiny_bench(tiny_root), log=lambda *_: None)
    s = results.steps["3x3"]
    assert s.reference.kind == "reference" and s.project_32.kind == "project"
    assert s.project_32 is results.settings["32"]  # the sweep's own rows, not a second measurement
    assert s.ratio_32 == pytest.approx(s.project_32.images_per_s / s.reference.images_per_s)
    assert s.project_fast.images_per_s == pytest.approx(1000 * 8 / s.project_fast.step_ms)
    assert set(results.settings) == {"32", "bf16+cl"} and not results.errors
    assert results.config_setting == "bf16+cl" and results.best_setting in results.settings  # the configured one
    assert results.env.tf32 is False and results.config.matmul_size == 64
    # the roofline of a step: its own FLOPs and bytes, at its dtype's peak, against its own time
    fp32, fast = s.project_32.roofline, s.project_fast.roofline
    cost = training_cost(load_config("3x3", tiny_bench(tiny_root).overrides + ["data.height=64"]), (8, 3, 64, 96))
    assert fp32.gflop == fast.gflop == pytest.approx(cost.flops / 1e9)
    assert (fp32.mbytes, fast.mbytes) == (pytest.approx(cost.bytes(4) / 1e6), pytest.approx(cost.bytes(2) / 1e6))
    assert fast.peak_tflops == results.peaks.bf16_tflops and fp32.peak_tflops == results.peaks.float32_tflops
    assert fast.measured_ms == s.project_fast.step_ms and fast.copy_gbps == results.peaks.copy_gbps
    assert results.loader.train_images > 0
    assert set(results.loader.cached_images_per_s) == {"cpu_aug_w0", "device_aug_w0"}
    assert [(r.k, r.dtype, r.fft_grid) for r in results.dwconv] == [
        (3, "float32", [18, 18]), (3, "bf16", [18, 18]), (7, "float32", [24, 24]), (7, "bf16", [24, 24])]
    assert results.inference["3x3"].fused is None  # 3x3 has no deploy-time form
    text = table(results)
    assert "| 3x3 | bf16+cl |" in text and "Where a step goes" in text and "| 7 | bf16 | 1x2x16x16 | 24x24 |" in text

    run_id = write_results(results, workdir / "bench.json")
    saved = json.loads((workdir / "bench.json").read_text())
    assert saved["steps"]["3x3"]["project_fast"]["roofline"]["measured_over_roofline"] == pytest.approx(
        fast.measured_over_roofline)
    from lk_segment.tracking import client

    run = client().get_run(run_id)  # the project's store: write_results leaves MLflow's process-wide URI alone
    assert client().get_experiment(run.info.experiment_id).name == "bench"
    assert run.data.metrics["steps/3x3/ratio_32"] == pytest.approx(s.ratio_32)
    assert run.data.metrics["dwconv/k7_bf16_1x2x16x16/fft_ms"] == pytest.approx(results.dwconv[3].fft_ms)
    assert run.data.tags["tf32"] == "False"

def test_gpu_defaults_are_training_size_shapes_and_a_large_matmul():
    bcfg = BenchConfig(height=1024, width=1024, batch_size=8)
    gpu = with_device_defaults(bcfg, torch.device("cuda"), width=16, depth=4)
    assert gpu.dw_shapes == [[8, 16, 1024, 1024], [8, 64, 256, 256]]
    assert (gpu.matmul_size, gpu.copy_mb, gpu.peak_repeats) == (8192, 1024, 20)
    cpu = with_device_defaults(bcfg, CPU, width=16, depth=4)
    assert cpu.dw_shapes == [[4, 32, 64, 96]] and (cpu.matmul_size, cpu.peak_repeats) == (1024, 5)
    given = with_device_defaults(BenchConfig(dw_shapes=[[1, 2, 3, 4]], matmul_size=512), torch.device("cuda"), 16, 4)
    assert given.dw_shapes == [[1, 2, 3, 4]] and given.matmul_size == 512

@pytest.mark.slow
@pytest.mark.parametrize("setting", ["32", "bf16+cl"])
def test_step_breakdown_splits_the_step(tiny_cfg, setting):
    images, masks = random_batch(2, 64, 96)
    b = step_breakdown(tiny_cfg("5x5"), parse_setting(setting), images, masks, 2, 1, CPU, gflop=1.5)
    assert 0 < b.conv_ms < b.step_ms  # a U-Net step has convolutions and other work
    assert b.conv_ms + b.other_ms == pytest.approx(b.step_ms)
    assert b.step_gflop == 1.5 and b.conv_tflops == pytest.approx(1.5 / b.conv_ms)
    assert b.setting == setting

def test_training_cost_counts_the_flops_of_1x5_below_5x5(tiny_cfg):
    # 1x5 + 5x1 does fewer multiply-adds than 5x5 on every block but the 3-channel input one
    shape = (2, 3, 64, 96)
    assert training_cost(tiny_cfg("1x5"), shape).flops < training_cost(tiny_cfg("5x5"), shape).flops

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
def test_fast_settings_give_the_float32_loss(setting):
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

def test_fused_replk_agrees_with_unfused(tiny_root, workdir):
    cfg = load_config("3x3", [*tiny_overrides(tiny_root), "model.block=replk", "model.kernel_size=7",
                              "model.depth=2"])
    result = bench_fused(cfg, repeats=1, device=CPU)
    assert result.max_rel_diff < 1e-4
    assert result.speedup == pytest.approx(result.unfused_ms / result.fused_ms)

def test_training_cost_counts_large_kernels_as_direct_convolutions(tiny_cfg):
    shape = (2, 3, 32, 48)
    costs = {impl: training_cost(tiny_cfg("replk", "model.depth=1", f"model.block_args.dw_impl={impl}"), shape)
             for impl in ("native", "fft", "auto")}  # auto must not time anything on the meta device
    assert costs["fft"] == costs["auto"] == costs["native"]
    assert costs["native"].flops > training_cost(tiny_cfg("3x3", "model.depth=1"), shape).flops

@pytest.mark.slow
def test_bench_of_replk_reports_its_breakdown_as_not_applicable(tiny_root, workdir):
    results = run_bench(tiny_bench(tiny_root, variants=("replk",), settings=["32"]), log=lambda *_: None)
    assert results.breakdown["replk"].conv_tflops is None  # part of the convolutions ran by FFT
    assert results.inference["replk"].fused is not None
    assert "| replk |" in table(results) and "n/a" in table(results)
    assert "3x3" not in results.steps and results.settings_reference.kind == "reference"  # the sweep's own

@pytest.mark.slow
def test_bench_of_a_pair_reports_its_ratios(tiny_root, workdir):
    results = run_bench(tiny_bench(tiny_root, variants=("1x5", "5x5"), settings=["32"]), log=lambda *_: None)
    pair = results.pairs["1x5/5x5"]
    assert pair.turns == pytest.approx(pair.turns_ms["1x5"] / pair.turns_ms["5x5"])
    assert pair.flops < 1  # 1x5 + 5x1 does fewer multiply-adds
    b = results.breakdown
    assert pair.step_at_equal_conv_efficiency == pytest.approx(
        (b["1x5"].other_ms + pair.flops * b["5x5"].conv_ms) / b["5x5"].step_ms)
    assert "| 1x5/5x5 |" in table(results)

def test_augment_on_gpu_moves_augmentation_into_the_system(tiny_cfg):
    from lk_segment.data.module import CarvanaDataModule

    cfg = tiny_cfg("3x3", "data.augment=true", "data.augment_on=gpu")
    system = SegmentationSystem(**{k: to_container(cfg)[k] for k in ("model", "optim", "data")})
    assert isinstance(system.batch_augment, DeviceAugmentation)
    dm = CarvanaDataModule(cfg.data, progress=False)
    dm.setup("fit")
    assert dm.train_set.transform is None  # the loader only decodes and normalises
    with pytest.raises(UserError, match="augment_on"):
        CarvanaDataModule(tiny_cfg("3x3", "data.augment_on=tpu").data)

@pytest.mark.parametrize("argv,message", [
    (["--variants", "9x9"], "9x9"),
    (["--dw-shapes", "8x16x1024"], "B x C x H x W"),
    (["--dw-kernels", "7", "8"], "odd"),
    (["--matmul-size", "0"], "--matmul-size"),
    *([(["--device", "cuda"], "no CUDA GPU")] if not torch.cuda.is_available() else []),
])
def test_bad_bench_options_are_refused_in_one_line(capsys, argv, message):
    assert main(["bench", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1

def test_bad_setting_is_refused():
    with pytest.raises(ValueError, match="setting"):
        parse_setting("fp8")

def _step(images_per_s: float, setting: str) -> Step:
    return Step(setting=setting, batch=8, step_ms=8000 / images_per_s, peak_mem_mb=0.0)

def test_pick_fast_wants_compile_to_earn_its_compile_time():
    settings = {name: _step(v, name) for name, v in {"32": 1.0, "bf16+cl": 2.0, "bf16+cl+compile": 2.1}.items()}
    assert pick_fast(settings) == "bf16+cl"  # 5% faster does not pay for minutes of compiling
    settings["bf16+cl+compile"] = _step(3.0, "bf16+cl+compile")
    assert pick_fast(settings) == "bf16+cl+compile"
