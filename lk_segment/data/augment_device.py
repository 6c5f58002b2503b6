"""The training augmentation on whole batches on the training device (``data.augment_on=gpu``), by kornia.

The transforms and ranges of ``train_augmentation()`` (the CPU path, albumentations): a horizontal
flip (p=0.5); an affine map about the centre (p=0.5: rotation ±10°, scale 0.9-1.1, shift ±6.25% of
each side) that fills what it uncovers as the CPU path does (image black, mask 0), applied before
normalisation; a colour jitter (p=0.5: brightness, contrast and saturation factors 0.8-1.2, hue
±0.02 of the HSV circle, the four in a random order). One ``kornia.augmentation.AugmentationSequential``
over image and mask (``data_keys``): the mask follows the geometric transforms (nearest) and skips
the colour ones.

Random draws: kornia draws its parameters from torch's global CPU generator, which is the same on
every DDP rank (Lightning seeds it with one seed) and which Lightning's sampler seed comes from.
So every draw is made inside ``torch.random.fork_rng``, from this object's own CPU generator
(seeded ``seed + global rank``: each rank augments its shard differently), and the global state is
left as it was. kornia (>= 0.9) then moves the drawn parameters to the device with non-blocking
copies. This is deliberately not an ``nn.Module``: a ``SegmentationSystem`` holds it as a plain
attribute, so it never enters a checkpoint and ``.to(cuda)`` never moves its generator.
"""

from __future__ import annotations

import torch

FLIP_P = AFFINE_P = COLOUR_P = 0.5
MAX_ROTATION_DEG = 10.0
SCALE_RANGE = (0.9, 1.1)
MAX_SHIFT = 0.0625  # of the image's width (x) and height (y)
JITTER = 0.2  # brightness, contrast and saturation factors in [1 - JITTER, 1 + JITTER]
MAX_HUE = 0.02  # of the hue circle


def kornia_pipeline(flip_p: float = FLIP_P, affine_p: float = AFFINE_P, colour_p: float = COLOUR_P):
    """The CPU path's transforms as one kornia pipeline over ``(image in 0..1, float 0/1 mask)``."""
    import kornia.augmentation as K

    return K.AugmentationSequential(
        K.RandomHorizontalFlip(p=flip_p),
        # zeros: black image, background mask where the map looks outside (albumentations' border_mode=0)
        K.RandomAffine(degrees=MAX_ROTATION_DEG, translate=(MAX_SHIFT, MAX_SHIFT), scale=SCALE_RANGE,
                       padding_mode="zeros", p=affine_p),
        K.ColorJitter(brightness=JITTER, contrast=JITTER, saturation=JITTER, hue=MAX_HUE, p=colour_p),
        data_keys=["input", "mask"],
    )


class DeviceAugmentation:
    """``augment(images, masks)``: uint8 (B, 3, H, W) images and (B, 1, H, W) 0/1 masks on any device ->
    float images on the 0..255 scale and float 0/1 masks, augmented alike (ready for ``Normalize``)."""

    def __init__(self, seed: int = 0, flip_p: float = FLIP_P, affine_p: float = AFFINE_P,
                 colour_p: float = COLOUR_P):
        self.pipeline = kornia_pipeline(flip_p, affine_p, colour_p)  # draws on the CPU: never moved
        self.generator = torch.Generator()  # CPU, this object's alone
        self.reseed(seed)

    def reseed(self, seed: int) -> None:
        """Draws from ``seed`` from the next batch on (each DDP rank passes seed + its global rank)."""
        self.seed = seed
        self.generator.manual_seed(seed)

    def parameters_drawn(self) -> list:
        """kornia's record of the last batch's draws: one ``ParamItem`` (name, data) per transform."""
        return list(self.pipeline._params)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # The global CPU generator lends its place to ours for the draws, then gets its own state back.
        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(self.generator.get_state())
            images, masks = self.pipeline(images.float() / 255, masks.float())
            self.generator.set_state(torch.get_rng_state())
        return images * 255, masks
