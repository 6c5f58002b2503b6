"""The kornia batch augmentation of data.augment_on=gpu, here on the CPU (tests/training/test_cuda.py runs it on a GPU):
the CPU path's transforms and ranges, its own generator (seed + rank), black and background fill."""

from __future__ import annotations

import pytest
import torch

from lk_segment.data.augment_device import DeviceAugmentation
from lk_segment.data.module import train_augmentation


def batch(b: int = 8, h: int = 48, w: int = 72, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    masks = (torch.rand(b, 1, h, w, generator=g) > 0.5).to(torch.uint8)
    images = torch.randint(0, 256, (b, 3, h, w), generator=g, dtype=torch.uint8)
    return images, masks


def only(*names: str, seed: int = 0) -> DeviceAugmentation:
    """The named transforms (flip, affine, colour) always, the others never."""
    return DeviceAugmentation(seed, **{f"{n}_p": float(n in names) for n in ("flip", "affine", "colour")})


def test_output_types_and_ranges():
    images, masks = batch()
    out_images, out_masks = DeviceAugmentation()(images, masks)
    assert out_images.dtype == out_masks.dtype == torch.float32
    assert out_images.shape == images.shape and out_masks.shape == masks.shape
    assert 0 <= out_images.min() and out_images.max() <= 255
    assert set(out_masks.unique().tolist()) <= {0.0, 1.0}


def test_one_seed_gives_the_same_draws_and_ranks_draw_differently():
    images, masks = batch()
    a, b = DeviceAugmentation(seed=5), DeviceAugmentation(seed=5)
    first = a(images, masks)[0]
    assert torch.equal(first, b(images, masks)[0])  # the same seed, the same draws
    rank1 = DeviceAugmentation()
    rank1.reseed(6)  # what global rank 1 of a seed-5 run does
    assert not torch.equal(rank1(images, masks)[0], first)
    assert not torch.equal(a(images, masks)[0], first)  # one generator, new draws every batch


def test_the_global_generator_is_left_alone():
    """The draws come from the augmentation's own generator: the global one (Lightning's sampler seed, the
    other ranks' identical draws) neither moves nor feeds them."""
    images, masks = batch()
    augment = DeviceAugmentation(seed=3)
    torch.manual_seed(0)
    expected = torch.rand(4)
    torch.manual_seed(0)
    out = augment(images, masks)[0]
    assert torch.equal(torch.rand(4), expected)  # the global stream goes on as if nothing had drawn
    torch.manual_seed(1)  # another global seed: the same augmentation
    assert torch.equal(DeviceAugmentation(seed=3)(images, masks)[0], out)


def test_a_flip_moves_the_mask_with_the_image():
    images, masks = batch()
    out_images, out_masks = only("flip")(images, masks)
    torch.testing.assert_close(out_images, images.flip(-1).float(), atol=1e-3, rtol=0)
    assert torch.equal(out_masks, masks.flip(-1).float())


def test_the_affine_map_fills_black_and_background_and_moves_the_mask_along():
    masks = torch.zeros(8, 1, 48, 72, dtype=torch.uint8)
    masks[:, :, 12:36, 10:50] = 1  # a "car" off-centre
    images = masks.expand(-1, 3, -1, -1) * 200 + 40  # the mask drawn into the photo (40 / 240, never 0)
    out_images, out_masks = only("affine")(images, masks)
    moved = (out_images - images.float()).abs().amax((1, 2, 3)) > 0
    assert moved.all()  # p=1: every image is transformed
    uncovered = out_images.amax(1) == 0  # exactly black: the fill, as the CPU path's border_mode=0
    assert uncovered.any(), "rotations and shifts uncover a corner somewhere in a batch of 8"
    assert (out_masks[:, 0][uncovered] == 0).all()  # the mask's fill is background
    # inside, the photo and its mask moved together (bilinear against nearest: edges may differ by a pixel)
    inside = out_images.amin(1) >= 40
    agree = ((out_images[:, 0] > 140) == (out_masks[:, 0] > 0.5))[inside].float().mean()
    assert agree > 0.97


def test_colour_jitter_changes_the_photo_and_leaves_the_mask():
    images, masks = batch()
    out_images, out_masks = only("colour")(images // 2 + 64, masks)
    assert not torch.allclose(out_images, (images // 2 + 64).float())
    assert torch.equal(out_masks, masks.float())


def test_every_drawn_parameter_is_inside_the_cpu_paths_ranges():
    """kornia's record of its draws (``_params``) against the albumentations transforms of the CPU path."""
    flip, affine, colour = train_augmentation().transforms
    augment = DeviceAugmentation(seed=0)
    h, w = 48, 72
    applied = {"RandomHorizontalFlip": [], "RandomAffine": [], "ColorJitter": []}
    drawn: dict[str, list] = {"angle": [], "brightness": [], "contrast": [], "saturation": [], "hue": []}
    for i in range(40):  # 320 images
        augment(*batch(h=h, w=w, seed=i))
        for item in augment.parameters_drawn():
            name, p = item.name.rsplit("_", 1)[0], item.data
            on = p["batch_prob"] > 0.5
            applied[name].append(on.float())
            if name == "RandomAffine":
                low, high = affine.rotate
                assert (p["angle"] >= low).all() and (p["angle"] <= high).all()
                drawn["angle"].append(p["angle"])
                for axis, k in (("x", 0), ("y", 1)):
                    low, high = affine.scale[axis]
                    assert (p["scale"][:, k] >= low - 1e-6).all() and (p["scale"][:, k] <= high + 1e-6).all()
                    low, high = affine.translate_percent[axis]
                    side = w if axis == "x" else h
                    shift = p["translations"][:, k] / side
                    assert (shift >= low - 1e-6).all() and (shift <= high + 1e-6).all()
                assert (p["shear_x"] == 0).all() and (p["shear_y"] == 0).all()
                assert torch.equal(p["scale"][:, 0], p["scale"][:, 1])  # no stretching: a car keeps its shape
            if name == "ColorJitter":
                for key in ("brightness", "contrast", "saturation", "hue"):
                    low, high = getattr(colour, key)
                    factor = p[f"{key}_factor"]
                    assert (factor >= low - 1e-6).all() and (factor <= high + 1e-6).all(), key
                    drawn[key].append(factor)
    for name, cpu in (("RandomHorizontalFlip", flip), ("RandomAffine", affine), ("ColorJitter", colour)):
        rate = float(torch.cat(applied[name]).mean())
        assert rate == pytest.approx(cpu.p, abs=0.1), name  # 320 draws: p=0.5 lands within 0.1
    for key, values in drawn.items():  # the whole range is used, not a point of it
        low, high = affine.rotate if key == "angle" else getattr(colour, key)
        values = torch.cat(values)
        assert values.max() - values.min() > 0.8 * (high - low), key


def test_the_augmentation_is_no_part_of_the_system(tiny_cfg):
    """A plain attribute, no child module: no checkpoint state, and moving the system leaves its generator."""
    from lk_segment.config import to_container
    from lk_segment.system import SegmentationSystem

    cfg = to_container(tiny_cfg("3x3", "data.augment=true", "data.augment_on=gpu"))
    system = SegmentationSystem(model=cfg["model"], optim=cfg["optim"], data=cfg["data"])
    assert isinstance(system.batch_augment, DeviceAugmentation)
    assert not any("augment" in name for name, _ in system.named_modules())
    assert not any("augment" in key for key in system.state_dict())
    system.to(torch.float64)  # a move of the system's tensors: the augmentation's stay as they are
    assert system.batch_augment.generator.device.type == "cpu"
    assert system.batch_augment.pipeline[1].dtype == torch.float32  # kornia's samplers: not moved either


def test_the_device_draws_of_an_epoch_follow_the_seed_epoch_and_rank_alone():
    """A run resumed at epoch k draws what an uninterrupted one drew there: each epoch reseeds from (the run's
    seed, epoch, rank), never from the draws before it."""
    from lk_segment.system import SegmentationSystem

    def draws(epoch: int, rank: int = 0, before: int = 0) -> torch.Tensor:
        torch.manual_seed(7)  # the run's seed (seed_everything)
        system = SegmentationSystem(model={"block": "3x3", "width": 4, "depth": 2}, optim={},
                                    data={"augment": True, "augment_on": "gpu"})
        images, masks = batch()
        for _ in range(before):  # an uninterrupted run has drawn other epochs first
            system.batch_augment(images, masks)
        system.reseed_augmentation(epoch, rank)
        return system.batch_augment(images, masks)[0]

    assert torch.equal(draws(3), draws(3, before=2))
    assert not torch.equal(draws(3), draws(2))
    assert not torch.equal(draws(3), draws(3, rank=1))
