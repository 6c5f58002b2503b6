"""Masks from a trained model: ``Predictor`` turns RGB photos of any size into 0/1 masks of that size.

What ``make predict``, the full-resolution validation, ``make evaluate``, the MLflow model and the bench
all predict with, so that their masks are the same. Each image is predicted at the training size; the
logits are upsampled to the image's own size and thresholded at 0.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from lk_segment.config import DataConfig, training_size
from lk_segment.data.normalize import Normalize
from lk_segment.device import native_bf16, resolve_device
from lk_segment.errors import UserError
from lk_segment.system import SegmentationSystem


class Predictor:
    """A reloaded model that turns RGB uint8 images of any size into 0/1 masks of that size.

    Each image is resized (INTER_AREA) to the training size, normalised on the device, run
    through the fused model (in batches; bf16 autocast on a GPU that has it), and its logits
    are upsampled bilinearly to the image's own size and thresholded at 0, on the device: a
    batch's masks reach the host as one uint8 copy. With ``tta`` the logits are the mean of
    those of the image and of its mirror image, mirrored back. ``prepare`` is the per-image CPU
    work, for the threads that decode the photos (``predict_folder``), ``masks`` the rest.
    """

    def __init__(self, system: SegmentationSystem, device: str | torch.device | None = "cpu",
                 channels_last: bool = True, tta: bool = False, batch_size: int = 8):
        self.device = resolve_device(device)
        # The deploy-time form: re-parameterisable blocks (replk) fused, same masks, faster.
        # NHWC: oneDNN's and cuDNN's preferred layout (the U-Net 25-35% faster per image on CPU).
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = system.model.eval().reparameterize().to(self.device, memory_format=self.memory_format)
        self.tta, self.batch_size = tta, max(1, int(batch_size))
        # bf16 autocast where the GPU has it (the training default); float32 on the CPU, as trained masks expect
        self.autocast = self.device.type == "cuda" and native_bf16("cuda")
        data = system.hparams.get("data") or {}
        self.size = training_size(data.get("height", DataConfig.height), data.get("width"), self.model.size_multiple)
        self.normalize = Normalize().to(self.device)

    def resize(self, image_rgb: np.ndarray) -> np.ndarray:
        """RGB uint8 (H, W, 3) at any size -> (h, w, 3) at the training size."""
        h, w = self.size
        if image_rgb.ndim != 3 or image_rgb.shape[2] != 3:
            raise UserError(f"expected an RGB image (H, W, 3), got an array of shape {tuple(image_rgb.shape)}")
        return cv2.resize(image_rgb, (w, h), interpolation=cv2.INTER_AREA)

    def prepare(self, image_rgb: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
        """The CPU work of one photo, done where it is decoded: (the photo at the training size, its own (H, W))."""
        return self.resize(image_rgb), image_rgb.shape[:2]

    @torch.inference_mode()
    def small_logits(self, images_rgb: list[np.ndarray]) -> torch.Tensor:
        """Float logits (B, 1, h, w) at the training size, on the device, for a list of RGB uint8 images."""
        return self._logits(np.stack([self.resize(im) for im in images_rgb]))

    def _logits(self, resized: np.ndarray) -> torch.Tensor:
        """(B, h, w, 3) uint8 at the training size -> float logits (B, 1, h, w) on the device."""
        batch = torch.from_numpy(resized)
        x = self.normalize(batch.to(self.device, non_blocking=True).permute(0, 3, 1, 2))  # uint8 travels
        x = x.contiguous(memory_format=self.memory_format)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            logits = self.model(x).float()
            if self.tta:  # mirror image, mirrored back: the mean of the two views
                logits = 0.5 * (logits + self.model(x.flip(-1)).float().flip(-1))
        return logits

    @torch.inference_mode()
    def logits(self, image_rgb: np.ndarray) -> torch.Tensor:
        """Float logits (H, W) of one image at its own size, on the device."""
        full_h, full_w = image_rgb.shape[:2]
        small = self.small_logits([image_rgb])
        return F.interpolate(small, size=(full_h, full_w), mode="bilinear", align_corners=False)[0, 0]

    @torch.inference_mode()
    def predict_batch(self, images_rgb: list[np.ndarray]) -> list[np.ndarray]:
        """0/1 uint8 masks, each at its image's own size; the model sees ``batch_size`` images at a time."""
        return self.masks([self.prepare(image) for image in images_rgb])

    @torch.inference_mode()
    def masks(self, prepared: list[tuple[np.ndarray, tuple[int, int]]]) -> list[np.ndarray]:
        """0/1 uint8 masks of ``prepare``-d photos, each at its own size: upsampled and thresholded on the
        device, then one copy to the host per batch of ``batch_size`` (uint8: a quarter of float logits)."""
        masks: list[np.ndarray] = []
        for i in range(0, len(prepared), self.batch_size):
            chunk = prepared[i : i + self.batch_size]
            small = self._logits(np.stack([resized for resized, _ in chunk]))
            shapes = [shape for _, shape in chunk]
            if len(set(shapes)) == 1:  # Carvana: every photo 1918x1280, one upsampling for the batch
                full = F.interpolate(small, size=shapes[0], mode="bilinear", align_corners=False) > 0
                flat = full.to(torch.uint8).flatten()
            else:  # each back to its own size, laid end to end
                flat = torch.cat([(F.interpolate(logit[None], size=shape, mode="bilinear", align_corners=False) > 0)
                                  .to(torch.uint8).flatten() for logit, shape in zip(small, shapes, strict=True)])
            host = flat.cpu().numpy()  # the batch's one copy to the host
            ends = np.cumsum([h * w for h, w in shapes])
            masks += [part.reshape(shape) for part, shape in zip(np.split(host, ends[:-1]), shapes, strict=True)]
        return masks

    def predict(self, image_rgb: np.ndarray) -> np.ndarray:
        """The 0/1 uint8 mask (H, W) of one RGB uint8 image (H, W, 3)."""
        return self.predict_batch([image_rgb])[0]


def decoded_chunks(items: list, load: Callable, chunk_size: int,
                   threads: int | None = None) -> Iterator[tuple[list, list]]:
    """Yield ``(chunk, [load(item) for item in chunk])`` in order, ``chunk_size`` items at a time.

    Threads (OpenCV and PIL release the GIL) decode the next chunk while the caller works on
    this one (e.g. the model runs on it); at most two chunks of decoded images are held at once.
    ``load`` runs in those threads: it may do more CPU work than decoding (``Predictor.prepare``).
    """
    from concurrent.futures import ThreadPoolExecutor

    chunks = [items[i : i + chunk_size] for i in range(0, len(items), chunk_size)]
    if not chunks:
        return
    with ThreadPoolExecutor(threads or min(4, os.cpu_count() or 1)) as pool:
        pending = [pool.submit(load, item) for item in chunks[0]]
        for k, chunk in enumerate(chunks):
            loaded = [future.result() for future in pending]
            if k + 1 < len(chunks):
                pending = [pool.submit(load, item) for item in chunks[k + 1]]
            yield chunk, loaded


def read_rgb(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise UserError(f"cannot read image {str(path)!r}: not a readable JPEG")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
