"""Reload a trained model and write full-resolution masks and a Kaggle submission.

    lk-segment predict --run <mlflow run id> --input <folder of .jpg> --out <folder>
    lk-segment predict --ckpt <path.ckpt> --input ... --out ... [--device cpu|cuda] [--tta]

The architecture comes from the checkpoint's hyper-parameters. Each image is predicted at
the training size; the logits are upsampled to the image's own size and thresholded at 0 (``Predictor``).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from lk_segment.checkpointing import atomic_torch_save, describe_load_error, load_checkpoint
from lk_segment.config import training_size
from lk_segment.data.carvana import IMAGE_SUFFIXES
from lk_segment.data.normalize import Normalize
from lk_segment.data.rle import rle_encode
from lk_segment.device import native_bf16
from lk_segment.errors import UserError
from lk_segment.system import SegmentationSystem


def load_system(ckpt: str | Path, map_location: str = "cpu") -> SegmentationSystem:
    """The trained system in eval mode, rebuilt from the checkpoint's own hyper-parameters."""
    return system_from_checkpoint(ckpt, load_checkpoint(ckpt, map_location=map_location)).eval()


def system_from_checkpoint(path: str | Path, checkpoint: dict) -> SegmentationSystem:
    """A ``SegmentationSystem`` with the weights of ``checkpoint`` (already loaded from ``path``)."""
    try:
        system = SegmentationSystem(**checkpoint["hyper_parameters"])
        system.load_state_dict(checkpoint["state_dict"])
        system.on_load_checkpoint(checkpoint)
    except Exception as exc:  # missing hyper-parameters, other keys or shapes: another model's file
        raise UserError(describe_load_error(Path(path), exc)) from exc
    return system


def fuse_checkpoint(src: str | Path, dst: str | Path) -> Path:
    """Write ``dst``: the checkpoint ``src`` with its model re-parameterised (``replk``'s
    deploy-time form) and ``model.fused`` set in its hyper-parameters, so it reloads into the
    fused architecture (``load_system``) and predicts the same masks."""
    checkpoint = load_checkpoint(src)  # a missing or unreadable file stops here with a UserError
    system = system_from_checkpoint(src, checkpoint).eval()
    system.model.reparameterize()
    checkpoint["state_dict"] = system.state_dict()  # Lightning's other keys are kept as they were
    checkpoint["hyper_parameters"]["model"] = {**checkpoint["hyper_parameters"]["model"], "fused": True}
    atomic_torch_save(checkpoint, dst)
    return Path(dst)


def resolve_device(device: str | None = None) -> torch.device:
    """``auto`` (or None): the GPU when there is one, else the CPU; ``cuda`` without CUDA is a ``UserError``."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise UserError(f"device {device!r}: choose auto, cpu or cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {device!r} asked for, but this torch sees no CUDA GPU "
                        f"(torch {torch.__version__}): use DEVICE=cpu")
    return torch.device(device)


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
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        # The deploy-time form: re-parameterisable blocks (replk) fused, same masks, faster.
        # NHWC: oneDNN's and cuDNN's preferred layout (the U-Net 25-35% faster per image on CPU).
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = system.model.eval().reparameterize().to(self.device, memory_format=self.memory_format)
        self.tta, self.batch_size = tta, max(1, int(batch_size))
        # bf16 autocast where the GPU has it (the training default); float32 on the CPU, as trained masks expect
        self.autocast = self.device.type == "cuda" and native_bf16("cuda")
        data = system.hparams.get("data") or {}
        self.size = training_size(data.get("height", 128), data.get("width"), self.model.size_multiple)
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


def predict_folder(ckpt: str | Path, input_dir: str | Path, out_dir: str | Path, progress: bool = True,
                   device: str | None = "auto", tta: bool = False, batch_size: int = 8) -> Path:
    """Write ``<name>_mask.png`` (0/255) per image and ``submission.csv``; return the CSV path.

    ``device``: auto (the GPU when there is one), cpu or cuda; ``tta``: flip test-time augmentation.
    The main thread only feeds the model: decoding and resizing run in the decode threads, PNG encoding
    and run-length encoding in writer threads (a chunk's rows are written while the next one predicts).
    """
    from concurrent.futures import ThreadPoolExecutor

    from tqdm.auto import tqdm

    system = load_system(ckpt)  # a missing or foreign checkpoint is named first
    input_dir, out_dir = Path(input_dir), Path(out_dir)
    if not input_dir.is_dir():
        raise UserError(f"input folder {str(input_dir)!r} does not exist")
    images = sorted(p for p in input_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise UserError(f"input folder {str(input_dir)!r} holds no .jpg images")
    predictor = Predictor(system, device=device, tta=tta, batch_size=batch_size)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = out_dir / "submission.csv"
    def write(path: Path, mask: np.ndarray) -> list[str]:  # in a writer thread: its PNG, its CSV row
        if not cv2.imwrite(str(out_dir / f"{path.stem}_mask.png"), mask * 255):
            raise UserError(f"cannot write {str(out_dir / (path.stem + '_mask.png'))!r}")
        return [path.name, rle_encode(mask)]

    with open(csv_path, "w", newline="") as f, ThreadPoolExecutor(min(4, os.cpu_count() or 1)) as writers, \
            tqdm(total=len(images), desc=f"predicting on {predictor.device.type}", unit="img",
                 disable=not progress) as bar:
        writer = csv.writer(f)
        writer.writerow(["img", "rle_mask"])
        pending: list = []  # the previous chunk's rows, in order

        def flush() -> None:
            for future in pending:
                writer.writerow(future.result())
            bar.update(len(pending))
            pending.clear()

        load = lambda path: predictor.prepare(read_rgb(path))
        for chunk, prepared in decoded_chunks(images, load, predictor.batch_size):
            masks = predictor.masks(prepared)
            flush()
            pending.extend(writers.submit(write, path, mask) for path, mask in zip(chunk, masks, strict=True))
        flush()
    return csv_path
