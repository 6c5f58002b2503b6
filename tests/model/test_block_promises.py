"""The kernel-decomposition zoo: what each block promises beyond the registry's generic tests."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch
from torch import nn

from lk_segment.blocks import create_block
from lk_segment.blocks.interp import InterpolatedConv2d, control_positions
from lk_segment.config import load_config
from lk_segment.inference import Predictor
from lk_segment.system import SegmentationSystem
from lk_segment.training.checkpointing import fuse_checkpoint, load_system
from lk_segment.unet import BoundaryRefine, UNet


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> None:
    """Non-trivial BN statistics and affine parameters: a fresh BN is an identity and would
    hide a fusion mistake (a forgotten scale, shift or eps)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g))
                m.running_var.copy_(torch.rand(n, generator=g) * 2 + 0.2)
                m.weight.copy_(torch.randn(n, generator=g))
                m.bias.copy_(torch.randn(n, generator=g))


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def conv_kernel_shapes(module: nn.Module) -> list[tuple[int, int]]:
    return [tuple(m.weight.shape[-2:]) for m in module.modules() if isinstance(m, nn.Conv2d)]


def centre_support(block: nn.Module, side: int = 15) -> torch.Tensor:
    """(side, side) bool map of the input pixels the centre output pixel of a 1-channel-input
    block depends on; positive weights and eval-mode BN, so ReLU blocks no gradient."""
    block = block.eval()
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.rand_like(p) + 0.1)
    x = torch.zeros(1, 1, side, side, requires_grad=True)
    block(x)[0, :, side // 2, side // 2].sum().backward()
    return x.grad[0, 0] != 0


# --- gcn ---------------------------------------------------------------------------------


def test_gcn_branches_are_mirror_images():
    block = create_block("gcn", 3, 4, kernel_size=9)
    assert conv_kernel_shapes(block.left) == [(9, 1), (1, 9)]
    assert conv_kernel_shapes(block.right) == [(1, 9), (9, 1)]


def test_gcn_sees_a_dense_k_by_k_square():
    support = centre_support(create_block("gcn", 1, 2, kernel_size=7))
    assert support[4:11, 4:11].all() and support.sum() == 49


# --- dilated -----------------------------------------------------------------------------


def test_dilated_one_rate_leaves_holes_and_hybrid_rates_fill_them():
    grid = centre_support(create_block("dilated", 1, 1, rates=[2, 2]), side=31)
    assert grid.sum() == 25 and grid[15, 16] == 0  # only even offsets: the gridding artefact
    hybrid = centre_support(create_block("dilated", 1, 1, rates=[1, 2, 3]), side=31)
    side = create_block("dilated", 1, 1, rates=[1, 2, 3]).rf_extent
    assert side == 13 and hybrid.sum() == side * side  # every pixel of the 13 x 13 view


def test_dilated_rate_comes_from_the_config():
    cfg = load_config("dilated", ["model.block_args.dilation=3"])
    model = UNet(**cfg.model)
    assert {m.dilation for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)} == {(3, 3)}


# --- grouped -----------------------------------------------------------------------------


def test_grouped_uses_the_groups_that_divide_both_sides():
    assert create_block("grouped", 16, 32, groups=4)[0][0].groups == 4
    assert create_block("grouped", 3, 16, groups=4)[0][0].groups == 1  # the RGB input stays dense


# --- replk -------------------------------------------------------------------------------


@pytest.mark.parametrize("in_chs,out_chs,kernel_size,small_kernel", [(6, 8, 13, 5), (8, 8, 7, 3), (8, 8, 5, 5)])
def test_replk_fused_block_equals_unfused(in_chs, out_chs, kernel_size, small_kernel):
    torch.manual_seed(0)
    block = create_block("replk", in_chs, out_chs, kernel_size=kernel_size, small_kernel=small_kernel)
    randomize_batchnorm(block)
    block.eval()
    x = torch.randn(2, in_chs, 24, 20)
    with torch.no_grad():
        expected = block(x)
        block.reparameterize()
        fused = block(x)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in block.modules())
    assert isinstance(block.large_kernel, nn.Conv2d) and block.large_kernel.kernel_size == (kernel_size,) * 2
    assert relative_error(fused, expected) < 1e-5


def test_replk_whole_model_fused_equals_unfused():
    torch.manual_seed(0)
    model = UNet("replk", width=4, depth=2, kernel_size=9, block_args={"small_kernel": 3}, boundary_refine=True)
    randomize_batchnorm(model)
    model.eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        expected = model(x)
        fused = model.reparameterize()(x)
    assert relative_error(fused, expected) < 1e-5


def test_replk_fused_checkpoint_reloads_and_predicts_the_same(tmp_path):
    model_cfg = {"block": "replk", "width": 4, "depth": 2, "kernel_size": 7}
    system = SegmentationSystem(model=model_cfg, optim={"lr": 1e-3, "weight_decay": 0.0, "warmup_fraction": 0.1},
                                data={"height": 64})
    randomize_batchnorm(system.model, seed=1)
    src, dst = tmp_path / "trained.ckpt", tmp_path / "fused.ckpt"
    torch.save({"state_dict": system.state_dict(), "hyper_parameters": dict(system.hparams),
                "pytorch-lightning_version": L.__version__}, src)

    fuse_checkpoint(src, dst)
    fused_system = load_system(dst)
    assert fused_system.hparams["model"]["fused"] is True
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused_system.model.encoder.modules())

    image = np.random.default_rng(0).integers(0, 256, (90, 130, 3), dtype=np.uint8)
    unfused_predictor, fused_predictor = Predictor(load_system(src)), Predictor(fused_system)
    assert all(b.fused for b in unfused_predictor.model.encoder)  # predict runs the fused form
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        assert relative_error(fused_system.model(x), load_system(src).model(x)) < 1e-5
    np.testing.assert_array_equal(fused_predictor.predict(image), unfused_predictor.predict(image))


# --- interp ------------------------------------------------------------------------------


@pytest.mark.parametrize("kernel_size,positions", [(9, control_positions(9, 3)), (7, [0, 2, 3, 6]), (9, [1, 4, 6])])
def test_interp_kernel_passes_through_the_control_values(kernel_size, positions):
    torch.manual_seed(0)
    conv = InterpolatedConv2d(2, 3, kernel_size, positions)
    kernel = conv.kernel()
    assert kernel.shape == (3, 2, kernel_size, kernel_size)
    idx = torch.tensor(positions)
    assert torch.equal(kernel[:, :, idx][:, :, :, idx], conv.control.detach())
    x = torch.randn(2, 2, 16, 16)
    conv(x).square().mean().backward()
    assert (conv.control.grad != 0).all()


def test_interp_block_counts_control_points_not_kernel_area():
    block = create_block("interp", 4, 4, kernel_size=9, control_points=3)
    assert block[0].positions == [0, 4, 8] and block[0].control.numel() == 4 * 4 * 9
    assert block.rf_extent == 9


# --- U-Net options -----------------------------------------------------------------------


def test_pixelshuffle_upsampler_starts_free_of_checkerboard():
    model = UNet("3x3", width=4, depth=2, upsample="pixelshuffle")
    up = model.ups[0]
    y = up(torch.randn(1, 16, 5, 7))  # (1, 16, 5, 7) -> (1, 8, 10, 14)
    assert y.shape == (1, 8, 10, 14)
    blocks = y.unfold(2, 2, 2).unfold(3, 2, 2)  # each 2x2 output block comes from one input pixel
    assert torch.allclose(blocks, blocks[..., :1, :1].expand_as(blocks))


@pytest.mark.parametrize("upsample", ["bilinear", "pixelshuffle"])
def test_upsample_choices_keep_the_output_size(upsample):
    model = UNet("3x3", width=4, depth=3, upsample=upsample, boundary_refine=True)
    assert sum(isinstance(m, BoundaryRefine) for m in model.modules()) == 3
    assert model(torch.randn(1, 3, 50, 75)).shape == (1, 1, 50, 75)


def test_unknown_upsample_is_refused():
    with pytest.raises(ValueError, match="upsample"):
        UNet(upsample="nearest")
