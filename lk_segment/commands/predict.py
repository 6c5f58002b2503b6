"""``make predict``: reload a trained model and write full-resolution masks and a Kaggle submission.

    lk-segment predict --run <mlflow run id> --input <folder of .jpg> --out <folder>
    lk-segment predict --ckpt <path.ckpt> --input ... --out ... [--device cpu|cuda] [--tta]

The architecture comes from the checkpoint's hyper-parameters. Each image is predicted at
the training size; the logits are upsampled to the image's own size and thresholded at 0 (``Predictor``).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import cv2
import numpy as np

from lk_segment.data.carvana import IMAGE_SUFFIXES
from lk_segment.data.rle import rle_encode
from lk_segment.errors import UserError
from lk_segment.inference import Predictor, decoded_chunks, read_rgb
from lk_segment.training.checkpointing import load_system


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
