"""FLOPs, effective receptive field, the variants table and the erf command."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from torch import nn

from lk_segment.analysis.erf import erf_map, erf_sides, save_erf_png
from lk_segment.analysis.flops import count_gflops
from lk_segment.analysis.variants import format_table, readme_table, replace_readme_table, variants_table
from lk_segment.commands.cli import main
from lk_segment.config import available_variants

README = Path(__file__).resolve().parents[2] / "README.md"


def _support(erf: np.ndarray) -> tuple[int, int]:
    """(height, width) of the bounding box of the non-zero gradients."""
    ys, xs = np.nonzero(erf)
    return int(ys.max() - ys.min() + 1), int(xs.max() - xs.min() + 1)


@pytest.mark.parametrize("k", [1, 3, 5, 7])
def test_erf_of_one_conv_is_its_kernel(k):
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 1, k, padding=k // 2)
    erf = erf_map(conv, torch.randn(4, 3, 33, 33))
    assert erf.shape == (33, 33)
    assert _support(erf) == (k, k)
    assert erf[16, 16] > 0  # centred on the centre pixel
    assert erf_sides(erf, (1.0,))[1.0] == k


def test_erf_of_two_stacked_3x3_is_5x5():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 1, 3, padding=1))
    erf = erf_map(model, torch.randn(3, 3, 31, 40), batch_size=2)
    assert _support(erf) == (5, 5)
    ys, xs = np.nonzero(erf)
    assert (ys.min(), xs.min()) == (15 - 2, 20 - 2)


def test_erf_averages_over_images_and_leaves_the_model_alone():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.Conv2d(3, 1, 1)).train()
    model[3].eval()  # a submodule frozen on purpose must stay so
    images = torch.randn(5, 2, 17, 17)
    mean_of_singles = np.mean([erf_map(model, images[i : i + 1]) for i in range(5)], axis=0)
    np.testing.assert_allclose(erf_map(model, images, batch_size=2), mean_of_singles, rtol=1e-6)
    assert model.training and model[1].training and not model[3].training  # modes restored
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(model[1].running_mean, torch.zeros(3))  # eval mode: statistics untouched


def test_erf_sides_on_a_map_of_known_mass():
    erf = np.zeros((21, 25))
    cy, cx = 10, 12
    erf[cy, cx] = 20.0  # 20% at the centre
    erf[cy - 2, cx + 2] = 30.0  # 30% on the ring at Chebyshev distance 2 (side 5)
    erf[cy + 5, cx - 1] = 49.0  # 49% at distance 5 (side 11)
    erf[cy - 10, cx + 12] = 1.0  # the last 1% in a corner, distance 12 (side 25)
    assert erf_sides(erf) == {0.2: 1, 0.5: 5, 0.99: 11}
    assert erf_sides(erf, (0.21, 0.999, 1.0)) == {0.21: 5, 0.999: 25, 1.0: 25}
    with pytest.raises(ValueError, match="all zero"):
        erf_sides(np.zeros((5, 5)))


@pytest.mark.parametrize("k,c_in,c_out,size", [(3, 3, 8, (32, 48)), (5, 4, 6, (17, 20)), (1, 2, 2, (8, 8))])
def test_gflops_of_one_conv_is_analytic(k, c_in, c_out, size):
    conv = nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=False)
    h, w = size
    assert count_gflops(conv, size) == pytest.approx(2 * k * k * c_in * c_out * h * w / 1e9)


@pytest.mark.parametrize("impl", ["auto", "fft", "native"])
def test_gflops_count_a_depthwise_conv_as_direct_whatever_runs_it(impl):
    from lk_segment.ops import DepthwiseConv2d

    conv = DepthwiseConv2d(6, 13, impl=impl)
    assert count_gflops(conv, (24, 40)) == pytest.approx(2 * 13 * 13 * 6 * 24 * 40 / 1e9)
    assert conv.impl == impl


def test_gflops_grow_with_the_input_area_and_leave_batchnorm_alone():
    from lk_segment.unet import UNet

    model = UNet("5x5", width=4, depth=2, kernel_size=5).train()
    small, large = count_gflops(model, (32, 32)), count_gflops(model, (64, 64))
    assert large == pytest.approx(4 * small)
    assert model.training
    assert all(torch.equal(m.running_mean, torch.zeros_like(m.running_mean))
               for m in model.modules() if isinstance(m, nn.BatchNorm2d))


def test_save_erf_png_writes_an_image(tmp_path):
    yy, xx = np.mgrid[:40, :60]
    erf = np.exp(-((yy - 20) ** 2 + (xx - 30) ** 2) / 50.0)
    path = save_erf_png(erf, tmp_path / "sub" / "erf.png", "a Gaussian")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_variants_command_lists_every_variant(capsys):
    assert main(["variants", "--width", "4", "--depth", "2", "--height", "64"]) == 0
    out = capsys.readouterr().out
    names = [line.split()[0] for line in out.splitlines()[2:]]
    assert names == available_variants()
    assert main(["variants", "--width", "4", "--depth", "2", "--height", "64", "--markdown"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| `")]
    assert [row.split("`")[1] for row in rows] == available_variants()


@pytest.mark.slow
def test_variants_table_numbers_match_the_model():
    from lk_segment.system import build_model

    rows = {r["name"]: r for r in variants_table(width=4, height=64, depth=2)}
    row = rows["5x5"]
    model = build_model({"block": "5x5", "width": 4, "depth": 2, "kernel_size": 5})
    assert row["params"] == sum(p.numel() for p in model.parameters())
    assert row["size"] == (64, 96)
    assert row["gflops"] == pytest.approx(count_gflops(model, (64, 96)))
    assert row["receptive_field_px"] == model.receptive_field_px()
    assert row["params_formula"] and row["description"]


def test_readme_markers_replace_only_the_table():
    text = "intro\n<!-- variants:start -->\nold\n<!-- variants:end -->\nafter\n"
    new = replace_readme_table(text, "| new |")
    assert new == "intro\n<!-- variants:start -->\n| new |\n<!-- variants:end -->\nafter\n"
    assert readme_table(new) == "| new |"
    with pytest.raises(ValueError, match="markers"):
        replace_readme_table("no markers", "x")


@pytest.mark.slow
def test_readme_variants_table_is_generated():
    """The README's table is exactly what `lk-segment variants --markdown` prints now."""
    expected = format_table(variants_table(), markdown=True)
    assert readme_table(README.read_text()) == expected, (
        "README.md's variants table is stale: regenerate it with `make readme-variants`"
    )


@pytest.mark.slow
def test_erf_command_on_a_fresh_variant(tiny_root, workdir, capsys):
    code = main(["erf", "--variant", "1x5", "--images", "3", "--out", "erf_out", f"data.root={tiny_root}",
                 "data.height=64", "model.width=8", "model.depth=2"])
    assert code == 0
    out = capsys.readouterr().out
    for key in ["erf/side_20_px", "erf/side_50_px", "erf/side_99_px"]:
        assert key in out
    assert (workdir / "erf_out" / "1x5" / "erf.png").stat().st_size > 1000


def test_erf_command_refuses_both_or_neither(capsys):
    assert main(["erf"]) == 2
    assert main(["erf", "--run", "abc", "--variant", "5x5"]) == 2
    assert "exactly one of --run" in capsys.readouterr().err


@pytest.mark.slow
def test_erf_command_logs_to_a_trained_run(trained_copy, capsys):
    run_id = trained_copy["run_id"]  # the erf is logged to the run: a copy of the shared one
    client = MlflowClient(trained_copy["uri"])
    params = client.get_run(run_id).data.params
    assert float(params["model/gflops"]) > 0 and int(params["model/receptive_field_px"]) > 5

    assert main(["erf", "--run", run_id, "--images", "4"]) == 0
    printed = capsys.readouterr().out
    metrics = client.get_run(run_id).data.metrics
    sides = [metrics[f"erf/side_{p}_px"] for p in (20, 50, 99)]
    assert 1 <= sides[0] <= sides[1] <= sides[2]
    assert f"erf/side_99_px = {int(sides[2])}" in printed
    assert "erf/erf.png" in {a.path for a in client.list_artifacts(run_id, "erf")}
