"""The batch augmentation of data.augment_on=gpu, here on the CPU (tests/test_cuda.py runs it on a GPU)."""

from __future__ import annotations

import pytest
import torch

from lk_segment.data import augment_gpu
from lk_segment.data.augment_gpu import BatchAugmentation


def batch(b: int = 8, h: int = 48, w: int = 72, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    masks = (torch.rand(b, 1, h, w, generator=g) > 0.5).to(torch.uint8)
    images = torch.randint(0, 256, (b, 3, h, w), generator=g, dtype=torch.uint8)
    return images, masks


@pytest.fixture
def only(monkeypatch):
    """Turn on just the named transforms, always (p=1), the others off."""
    def set_(*names: str) -> None:
        for name in ("FLIP", "AFFINE", "COLOUR"):
            monkeypatch.setattr(augment_gpu, f"{name}_P", 1.0 if name in names else 0.0)
    return set_


def test_output_types_and_ranges():
    images, masks = batch()
    out_images, out_masks = BatchAugmentation()(images, masks)
    assert out_images.dtype == out_masks.dtype == torch.float32
    assert out_images.shape == images.shape and out_masks.shape == masks.shape
    assert 0 <= out_images.min() and out_images.max() <= 255
    assert set(out_masks.unique().tolist()) <= {0.0, 1.0}


def test_a_flip_moves_the_mask_with_the_image(only):
    only("FLIP")
    images, masks = batch()
    out_images, out_masks = BatchAugmentation()(images, masks)
    torch.testing.assert_close(out_images, images.flip(-1).float(), atol=1e-2, rtol=0)
    assert torch.equal(out_masks, masks.flip(-1).float())


def test_the_affine_map_fills_black_and_background_and_moves_the_mask_along(only):
    only("AFFINE")
    masks = torch.zeros(8, 1, 48, 72, dtype=torch.uint8)
    masks[:, :, 12:36, 10:50] = 1  # a "car" off-centre
    images = masks.expand(-1, 3, -1, -1) * 200 + 40  # the mask drawn into the photo (40 / 240, never 0)
    out_images, out_masks = BatchAugmentation()(images, masks)
    moved = (out_images - images.float()).abs().amax((1, 2, 3)) > 0
    assert moved.all()  # p=1: every image is transformed
    uncovered = out_images.amax(1) == 0  # exactly black: the fill, as the CPU path's border_mode=0
    assert uncovered.any(), "rotations and shifts uncover a corner somewhere in a batch of 8"
    assert (out_masks[:, 0][uncovered] == 0).all()  # the mask's fill is background
    # inside, the photo and its mask moved together (bilinear against nearest: edges may differ by a pixel)
    inside = out_images.amin(1) >= 40
    agree = ((out_images[:, 0] > 140) == (out_masks[:, 0] > 0.5))[inside].float().mean()
    assert agree > 0.97


def test_colour_jitter_keeps_a_grey_photo_grey(only):
    only("COLOUR")
    grey = torch.randint(0, 256, (8, 1, 32, 48), dtype=torch.uint8).expand(-1, 3, -1, -1)
    out, _ = BatchAugmentation()(grey, torch.zeros(8, 1, 32, 48, dtype=torch.uint8))
    assert not torch.allclose(out, grey.float())  # brightness and contrast did change it
    torch.testing.assert_close(out[:, 0], out[:, 1], atol=1e-2, rtol=0)  # saturation and hue leave grey alone
    torch.testing.assert_close(out[:, 0], out[:, 2], atol=1e-2, rtol=0)


def test_hue_turns_colours_but_keeps_the_luma(only, monkeypatch):
    only("COLOUR")
    monkeypatch.setattr(augment_gpu, "JITTER", 0.0)  # hue alone
    images, masks = batch()
    out, _ = BatchAugmentation()(images // 2 + 64, masks)  # mid-range: no clamping
    luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    assert not torch.allclose(out, (images // 2 + 64).float())
    torch.testing.assert_close((out * luma).sum(1), ((images // 2 + 64).float() * luma).sum(1), atol=1e-2, rtol=0)


def test_draws_follow_the_seed_and_differ_between_ranks():
    images, masks = batch()
    a, b = BatchAugmentation(seed=5), BatchAugmentation(seed=5)
    assert torch.equal(a(images, masks)[0], b(images, masks)[0])  # the same seed, the same draws
    c = BatchAugmentation()
    c.reseed(6)  # what rank 1 of a seed-5 run does
    assert not torch.equal(c(images, masks)[0], BatchAugmentation(seed=5)(images, masks)[0])
    first, second = a(images, masks)[0], a(images, masks)[0]
    assert not torch.equal(first, second)  # one generator, new draws every batch
