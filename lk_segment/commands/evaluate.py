"""Score a trained model on any labelled folder at full resolution: ``make evaluate``.

    lk-segment evaluate --run <mlflow run id> --data <Kaggle-layout folder> [--tta] [--device cpu|cuda]
    lk-segment evaluate --ckpt <path.ckpt> --data ...

The folder holds ``train/<car>_<NN>.jpg`` and ``train_masks/<car>_<NN>_mask.gif`` (photos the
model never saw, or the ones it did). Every photo gets its mask exactly as ``make predict``
makes it and is scored against its own mask (``lk_segment.training.full_res``). Written under
``--out/<folder name>[-tta]/``: the per-image CSV and the 5 worst images as overlays (true
contour green, predicted magenta); with ``--run`` they and the figures are logged to that run
under ``eval/<folder name>/`` (``eval/<folder name>/tta/`` with ``--tta``).
"""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from lk_segment.data.carvana import Sample, find_samples, read_mask
from lk_segment.errors import UserError
from lk_segment.inference import Predictor, read_rgb
from lk_segment.training.checkpointing import load_system
from lk_segment.training.full_res import ImageScore, score_samples, summary, write_scores_csv

WORST_SHOWN = 5
TRUE_BGR, PREDICTED_BGR = (0, 200, 0), (255, 0, 255)  # green and magenta: apart for most colour vision


def labelled_samples(folder: str | Path) -> list[Sample]:
    """Every photo of a Kaggle-layout folder with its mask, checked before any model is loaded:
    a missing folder, no masks, a photo without its mask, a mask of another size: ``UserError``."""
    root = Path(folder)
    layout = "a folder in the Kaggle layout (train/<car>_<NN>.jpg, train_masks/<car>_<NN>_mask.gif)"
    if not root.is_dir():
        raise UserError(f"DATA folder {str(root)!r} does not exist: give {layout}")
    if not (root / "train").is_dir():
        raise UserError(f"DATA folder {str(root)!r} has no train/ folder of photos: give {layout}")
    if not (root / "train_masks").is_dir():
        raise UserError(f"DATA folder {str(root)!r} has no masks (no train_masks/ folder): evaluation needs "
                        f"the true mask of every photo; give {layout}")
    samples, bad = find_samples(root)
    if not samples:
        raise UserError(f"DATA folder {str(root)!r} has no masks: none of its photos has its "
                        "train_masks/<name>_mask.gif")
    if bad:
        raise UserError(bad[0].reason)
    for sample in samples:  # headers only: a wrong size stops here, not after minutes of scoring
        with Image.open(sample.image) as image, Image.open(sample.mask) as mask:
            if image.size != mask.size:
                raise UserError(f"mask {str(sample.mask)!r} is {mask.size[0]}x{mask.size[1]} but its image is "
                                f"{image.size[0]}x{image.size[1]}: replace the mask with one of its image's size")
    return samples


def overlay(image_rgb: np.ndarray, true: np.ndarray, predicted: np.ndarray, caption: str) -> np.ndarray:
    """BGR picture: the photo with the true and the predicted contours, a caption, halved if wide."""
    picture = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR)
    thickness = max(2, round(min(picture.shape[:2]) / 320))  # 4 px at 1280: 2 px once halved
    for mask, colour in ((true, TRUE_BGR), (predicted, PREDICTED_BGR)):
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(picture, contours, -1, colour, thickness)
    if picture.shape[1] > 1000:
        picture = cv2.resize(picture, (picture.shape[1] // 2, picture.shape[0] // 2), interpolation=cv2.INTER_AREA)
    scale = picture.shape[1] / 1000
    for text, colour, y in ((caption, (255, 255, 255), 1), ("true", TRUE_BGR, 2), ("predicted", PREDICTED_BGR, 3)):
        origin = (10, round(y * 32 * scale))
        cv2.putText(picture, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 4 * thickness, cv2.LINE_AA)
        cv2.putText(picture, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, colour, thickness, cv2.LINE_AA)
    return picture


def metric_prefix(folder: str | Path, tta: bool) -> str:
    """``eval/<folder name>/`` (``.../tta/``), with what MLflow refuses in a key replaced by ``_``."""
    name = re.sub(r"[^\w\-. ]", "_", Path(folder).resolve().name) or "data"
    return f"eval/{name}/" + ("tta/" if tta else "")


def evaluate(ckpt: str | Path, data: str | Path, out_dir: str | Path = "evaluations", run_id: str | None = None,
             device: str | None = "auto", tta: bool = False, progress: bool = True, batch_size: int = 8) -> dict:
    """Score every photo of ``data``; write the CSV and the overlays; log them to ``run_id`` if given.

    Returns the summary (``mean``, ``pooled``, ``worst``, ``images``), the scores, the files and
    the metric prefix.
    """
    samples = labelled_samples(data)
    predictor = Predictor(load_system(ckpt), device=device, tta=tta, batch_size=batch_size)
    scores = score_samples(predictor, samples, progress=progress,
                           desc=f"scoring {len(samples)} photos on {predictor.device.type}")
    prefix = metric_prefix(data, tta)
    out = Path(out_dir) / prefix.removeprefix("eval/").rstrip("/").replace("/tta", "-tta")
    out.mkdir(parents=True, exist_ok=True)
    files = [write_scores_csv(scores, out / "per_image.csv")]
    by_name = {s.image.name: s for s in samples}
    worst = sorted(scores, key=lambda s: s.dice)[:WORST_SHOWN]
    for rank, score in enumerate(worst, 1):  # predicted again: 5 images, rather than every mask held
        sample = by_name[score.image]
        image, true = read_rgb(sample.image), read_mask(sample.mask)
        picture = overlay(image, true, predictor.predict(image), f"{score.image}: Dice {score.dice:.4f}")
        files.append(out / f"worst_{rank}_{Path(score.image).stem}.png")
        cv2.imwrite(str(files[-1]), picture)
    figures = summary(scores)
    if run_id is not None:
        from lk_segment.tracking import client

        mlflow = client()
        for key in ("mean", "pooled", "worst"):
            mlflow.log_metric(run_id, f"{prefix}dice_{key}", figures[key])
        mlflow.log_metric(run_id, f"{prefix}images", figures["images"])
        for path in files:
            mlflow.log_artifact(run_id, str(path), prefix.rstrip("/"))
    return {**figures, "scores": scores, "worst_images": worst, "files": files, "out": out, "prefix": prefix,
            "device": predictor.device.type}


def format_table(result: dict, what: str, data: str | Path, tta: bool) -> str:
    """The short table ``make evaluate`` prints."""
    cars = len({s.car for s in result["scores"]})
    worst: list[ImageScore] = result["worst_images"]
    lines = [
        f"full-resolution Dice of {what} on {Path(data).resolve().name} ({result['images']} photos, {cars} cars; "
        f"TTA {'on' if tta else 'off'}; {result['device']}):",
        f"  mean per image  {result['mean']:.4f}   (Kaggle's metric)",
        f"  pooled          {result['pooled']:.4f}   (all pixels together)",
        f"  the {len(worst)} worst images:",
        *[f"    {s.dice:.4f}  {s.image}" for s in worst],
        f"  per-image CSV and overlays: {result['out']}",
    ]
    return "\n".join(line for line in lines if line)
