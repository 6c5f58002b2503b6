"""The training augmentation on whole batches on the training device (``data.augment_on=gpu``).

The same transforms as ``train_augmentation()`` (flip, small shift-scale-rotate, colour
jitter), done by kornia on a (B, 3, H, W) batch after it reaches the device, for a GPU
whose CPU loader workers cannot keep up with it. Colour jitter needs pixel values in 0..1,
so the normalised batch is undone, jittered and normalised again.
"""

from __future__ import annotations

import kornia.augmentation as K
import torch
from torch import nn

from lk_segment.data.carvana import MEAN, STD


class BatchAugmentation(nn.Module):
    def __init__(self):
        super().__init__()
        self.geometric = K.AugmentationSequential(
            K.RandomHorizontalFlip(p=0.5),
            K.RandomAffine(degrees=10, translate=(0.0625, 0.0625), scale=(0.9, 1.1), p=0.5),
            data_keys=["input", "mask"],
        )
        self.colour = K.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02, p=0.5)
        self.register_buffer("mean", torch.from_numpy(MEAN / 255).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.from_numpy(STD / 255).view(1, 3, 1, 1), persistent=False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised (B, 3, H, W) images and (B, 1, H, W) 0/1 masks, augmented alike."""
        images, masks = self.geometric(images, masks)
        rgb = (images * self.std + self.mean).clamp(0, 1)
        images = (self.colour(rgb) - self.mean) / self.std
        return images.contiguous(), (masks > 0.5).to(masks.dtype)
