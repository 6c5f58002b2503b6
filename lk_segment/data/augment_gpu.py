"""The training augmentation on whole batches on the training device (``data.augment_on=gpu``).

The transforms of ``train_augmentation()`` (the CPU path, albumentations): a horizontal flip
(p=0.5), an affine map about the centre (p=0.5: rotation ±10°, scale 0.9-1.1, shift ±6.25% of
each side) that fills what it uncovers as the CPU path does (image black, mask 0), and a colour
jitter (p=0.5: brightness, contrast and saturation factors 0.8-1.2, hue ±0.02 of the circle).

Every random draw is made on the device from this module's own generator, so a batch costs no
host round trip, and the generator is seeded per rank (``reseed(seed + rank)``): under DDP each
rank augments its shard differently, where a global CPU generator with the same seed would have
given every rank the same draws.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

FLIP_P = AFFINE_P = COLOUR_P = 0.5
MAX_ROTATION_DEG = 10.0
SCALE_RANGE = (0.9, 1.1)
MAX_SHIFT = 0.0625  # of the image's width (x) and height (y)
JITTER = 0.2  # brightness, contrast and saturation factors in [1 - JITTER, 1 + JITTER]
MAX_HUE = 0.02  # of the hue circle

# RGB -> YIQ: Y is the luma (the grey that saturation blends with), I and Q span the chroma plane,
# in which a hue shift is a rotation (the linear form of HSV's hue shift).
_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


class BatchAugmentation(nn.Module):
    def __init__(self, seed: int = 0):
        super().__init__()
        self.seed = seed
        self.generator: torch.Generator | None = None  # made on the batch's device at the first batch
        self.register_buffer("rgb_to_yiq", _RGB_TO_YIQ.clone(), persistent=False)
        self.register_buffer("yiq_to_rgb", torch.linalg.inv(_RGB_TO_YIQ), persistent=False)

    def reseed(self, seed: int) -> None:
        """Draws from ``seed`` from the next batch on (each DDP rank passes seed + its rank)."""
        self.seed, self.generator = seed, None

    def _uniform(self, n: int, low: float, high: float, device: torch.device) -> torch.Tensor:
        if self.generator is None or self.generator.device != device:
            self.generator = torch.Generator(device=device).manual_seed(self.seed)
        return low + (high - low) * torch.rand(n, generator=self.generator, device=device)

    @torch.no_grad()
    def forward(self, images: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 (B, 3, H, W) images and (B, 1, H, W) 0/1 masks -> float images on the 0..255
        scale and float 0/1 masks, augmented alike (ready for ``Normalize``)."""
        images, masks = self.geometric(images.float(), masks.float())
        return self.colour(images), masks

    def geometric(self, images: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Flip then affine map, one resampling per batch: bilinear for images, nearest for masks,
        zeros (black, background) wherever the map looks outside the image."""
        b, _, h, w = images.shape
        dev = images.device
        flip = self._uniform(b, 0, 1, dev) < FLIP_P
        affine = self._uniform(b, 0, 1, dev) < AFFINE_P
        angle = torch.where(affine, self._uniform(b, -1, 1, dev) * math.radians(MAX_ROTATION_DEG), 0.0)
        scale = torch.where(affine, self._uniform(b, *SCALE_RANGE, dev), 1.0)
        shift_x = torch.where(affine, self._uniform(b, -MAX_SHIFT, MAX_SHIFT, dev), 0.0)
        shift_y = torch.where(affine, self._uniform(b, -MAX_SHIFT, MAX_SHIFT, dev), 0.0)
        # Output pixel p (centred, in pixels) samples the input at R(-angle) (p - shift) / scale. In
        # grid_sample's coordinates (-1..1 across each side) that is A p' + t with A = D^-1 R(-angle) D / scale,
        # D = diag(w/2, h/2) (non-square images rotate without shearing), t = -A (2 shift_x, 2 shift_y).
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        a = torch.stack([torch.stack([cos, sin * h / w], -1), torch.stack([-sin * w / h, cos], -1)], -2)  # (B, 2, 2)
        t = -(a @ torch.stack([2 * shift_x, 2 * shift_y], -1).unsqueeze(-1))  # (B, 2, 1)
        theta = torch.cat([a, t], -1)  # (B, 2, 3)
        theta[:, 0] *= torch.where(flip, -1.0, 1.0).unsqueeze(-1)  # flipped first: the input's x is mirrored
        grid = F.affine_grid(theta, [b, 1, h, w], align_corners=False)
        images = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        masks = F.grid_sample(masks, grid, mode="nearest", padding_mode="zeros", align_corners=False)
        return images, masks

    def colour(self, images: torch.Tensor) -> torch.Tensor:
        """Brightness, contrast, saturation, hue (in that order; the CPU path shuffles it), clamped to 0..255."""
        b, dev = images.shape[0], images.device
        on = self._uniform(b, 0, 1, dev) < COLOUR_P

        def factor(low: float, high: float, neutral: float) -> torch.Tensor:  # (B, 1, 1, 1); neutral where off
            return torch.where(on, self._uniform(b, low, high, dev), neutral).view(b, 1, 1, 1)

        brightness, contrast, saturation = (factor(1 - JITTER, 1 + JITTER, 1.0) for _ in range(3))
        hue = factor(-MAX_HUE, MAX_HUE, 0.0).view(b) * 2 * math.pi
        x = (images * brightness).clamp(0, 255)
        luma = torch.einsum("c,bchw->bhw", self.rgb_to_yiq[0], x).unsqueeze(1)  # (B, 1, H, W)
        x = (x * contrast + luma.mean((2, 3), keepdim=True) * (1 - contrast)).clamp(0, 255)
        luma = torch.einsum("c,bchw->bhw", self.rgb_to_yiq[0], x).unsqueeze(1)
        x = (x * saturation + luma * (1 - saturation)).clamp(0, 255)
        cos, sin, one, zero = torch.cos(hue), torch.sin(hue), torch.ones_like(hue), torch.zeros_like(hue)
        rotate = torch.stack([torch.stack([one, zero, zero], -1), torch.stack([zero, cos, -sin], -1),
                              torch.stack([zero, sin, cos], -1)], -2)  # (B, 3, 3): turns the (I, Q) plane
        to_rgb = self.yiq_to_rgb @ rotate @ self.rgb_to_yiq  # (B, 3, 3)
        return torch.einsum("bij,bjhw->bihw", to_rgb, x).clamp(0, 255)
