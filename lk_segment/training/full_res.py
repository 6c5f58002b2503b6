"""The score Kaggle gives: the mean over images of the Dice at the photo's own resolution.

``val/dice`` pools every validation pixel at the training size (128x192) against masks that
were themselves downsampled: big cars weigh more and the boundary errors that upsampling makes
are invisible. Here each original JPEG gets its mask exactly as ``make predict`` makes it (the
``Predictor``: resize, model, bilinear upsampling to 1918x1280, threshold) and is scored
against its original GIF mask; the mean over images is the leaderboard's metric.

``FullResEval`` runs it during training (``val/dice_full``, ``val/dice_full_worst``,
``perf/full_res_eval_s`` and a per-image CSV; ``val/dice_full_best`` on the best checkpoint at
the end); ``lk_segment.commands.evaluate`` runs it on any labelled folder (``make evaluate``).
"""

from __future__ import annotations

import csv
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import lightning as L
import numpy as np

from lk_segment import names
from lk_segment.data.carvana import Sample, find_samples, read_mask
from lk_segment.errors import UserError
from lk_segment.inference import Predictor, decoded_chunks, read_rgb


@dataclass(frozen=True)
class ImageScore:
    image: str  # file name of the photo
    car: str
    dice: float
    intersection: int  # |predicted AND true| in pixels: with ``total``, what pooling adds up
    total: int  # |predicted| + |true| in pixels


def dice_of(predicted: np.ndarray, true: np.ndarray) -> tuple[float, int, int]:
    """(Dice, |P and T|, |P| + |T|) of two 0/1 masks of one size; two empty masks agree: Dice 1."""
    if predicted.shape != true.shape:
        raise ValueError(f"masks of different sizes: {predicted.shape} and {true.shape}")
    p, t = predicted.astype(bool), true.astype(bool)
    intersection = int(np.count_nonzero(p & t))
    total = int(np.count_nonzero(p)) + int(np.count_nonzero(t))
    return (2 * intersection / total if total else 1.0), intersection, total


def summary(scores: list[ImageScore]) -> dict[str, float]:
    """``mean``: the leaderboard's metric (each image counts once); ``pooled``: 2 sum(P and T) /
    sum(|P| + |T|) over all pixels (a big car counts more; ``val/dice``'s way); ``worst``; ``images``."""
    total = sum(s.total for s in scores)
    return {
        "mean": float(np.mean([s.dice for s in scores])),
        "pooled": 2 * sum(s.intersection for s in scores) / total if total else 1.0,
        "worst": min(s.dice for s in scores),
        "images": len(scores),
    }


def score_samples(predictor: Predictor, samples: list[Sample], progress: bool = True,
                  desc: str = "full-resolution Dice") -> list[ImageScore]:
    """Each sample's photo through ``predictor`` at its own size, scored against its mask."""
    from tqdm.auto import tqdm

    def load(sample: Sample) -> tuple[tuple[np.ndarray, tuple[int, int]], np.ndarray]:  # in a decode thread
        return predictor.prepare(read_rgb(sample.image)), read_mask(sample.mask)

    scores = []
    with tqdm(total=len(samples), desc=desc, unit="img", disable=not progress, leave=False) as bar:
        for chunk, pairs in decoded_chunks(samples, load, predictor.batch_size):
            predicted = predictor.masks([prepared for prepared, _ in pairs])
            for sample, ((_, (height, width)), true), mask in zip(chunk, pairs, predicted, strict=True):
                if true.shape != (height, width):
                    raise UserError(f"mask {str(sample.mask)!r} is {true.shape[1]}x{true.shape[0]} but its image is "
                                    f"{width}x{height}: replace the mask with one of its image's size")
                scores.append(ImageScore(sample.image.name, sample.car, *dice_of(mask, true)))
            bar.update(len(chunk))
    return scores


def write_scores_csv(scores: list[ImageScore], path: str | Path) -> Path:
    """``image, car, dice`` per row (worst first), plus the pixel counts pooling needs."""
    path = Path(path)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(ImageScore.__dataclass_fields__))
        writer.writeheader()
        writer.writerows(asdict(s) for s in sorted(scores, key=lambda s: s.dice))
    return path


def validation_samples(datamodule) -> list[Sample]:
    """The validation photos of a set-up ``CarvanaDataModule``, as files (its split, its skipped files)."""
    samples, _ = find_samples(datamodule.root)
    if datamodule.cfg.limit_images:
        samples = samples[: datamodule.cfg.limit_images]
    cars, unusable = set(datamodule.val_cars), {b.path for b in datamodule.skipped}
    val = [s for s in samples if s.car in cars and s.image not in unusable]
    if len(val) != len(datamodule.val_set):
        raise RuntimeError(f"{len(val)} validation photos found on disk, {len(datamodule.val_set)} in the "
                           "validation set: the data module's split has changed")
    return val


class FullResEval(L.Callback):
    """``val/dice_full`` after the last epoch and every ``every_n_epochs`` (0: the last only), on the
    training device; ``val/dice_full_best`` on the best checkpoint when training ends.

    An epoch where it is not due costs one integer comparison. Global rank 0 scores, the other
    ranks wait for its figures (one broadcast), so every rank logs the same values.
    """

    def __init__(self, every_n_epochs: int = 0, progress: bool = True):
        if every_n_epochs < 0:
            raise UserError(f"trainer.full_res_eval_every={every_n_epochs}: give 0 (after the last epoch only) or "
                            "a number of epochs")
        self.every, self.progress = every_n_epochs, progress
        self.scores: dict[int, list[ImageScore]] = {}  # epoch -> its scores (the best checkpoint's may be one)
        self.metrics: dict[str, float] = {}  # the latest figures, for train()'s result

    def due(self, epoch: int, max_epochs: int) -> bool:
        """``epoch`` counts from 0."""
        return epoch + 1 == max_epochs or (self.every > 0 and (epoch + 1) % self.every == 0)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.due(trainer.current_epoch, trainer.max_epochs):
            return
        from lk_segment.system import SegmentationSystem

        def system():  # a copy, as a checkpoint would reload it: the predictor fuses and moves its model
            copy = SegmentationSystem(**pl_module.hparams)
            copy.load_state_dict(pl_module.state_dict())
            return copy

        scores, seconds = self._score(trainer, pl_module, system)
        self.scores[trainer.current_epoch] = scores
        figures = summary(scores)
        self.metrics.update({names.DICE_FULL: figures["mean"], names.DICE_FULL_WORST: figures["worst"]})
        pl_module.log(names.DICE_FULL, figures["mean"])
        pl_module.log(names.DICE_FULL_WORST, figures["worst"])
        pl_module.log(names.FULL_RES_EVAL_TIME, seconds)
        self._log_csv(trainer, scores, f"epoch_{trainer.current_epoch:03d}.csv")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The best checkpoint's score: reused when it is that of an epoch already scored. Global rank 0
        alone reads the checkpoint (another node may not hold the file) and the others get its figures."""
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        if not best:
            return
        result = self._score_best(trainer, pl_module, best) if trainer.is_global_zero else None
        scores, timing = trainer.strategy.broadcast(result)
        figures = summary(scores)
        best_metrics = {names.DICE_FULL_BEST: figures["mean"], names.DICE_FULL_BEST_WORST: figures["worst"]}
        self.metrics.update(best_metrics)
        if trainer.is_global_zero and trainer.logger is not None:
            # pl_module.log is not allowed once training has ended: straight to the logger
            trainer.logger.log_metrics({**best_metrics, **timing}, step=trainer.global_step)
        self._log_csv(trainer, scores, "best.csv")

    def _score_best(self, trainer: L.Trainer, pl_module: L.LightningModule, best: str) -> tuple[list, dict]:
        """On global rank 0: (the best checkpoint's scores, its scoring time as a metric when it was scored now)."""
        from lk_segment.training.checkpointing import load_checkpoint, system_from_checkpoint

        checkpoint = load_checkpoint(best)
        scores = self.scores.get(checkpoint["epoch"])
        if scores is not None:
            return scores, {}
        scores, seconds = self._score_here(trainer, pl_module, lambda: system_from_checkpoint(best, checkpoint))
        return scores, {names.FULL_RES_EVAL_TIME: seconds}

    def _score(self, trainer: L.Trainer, pl_module: L.LightningModule, system) -> tuple[list[ImageScore], float]:
        """Scored on global rank 0, its result sent to every rank."""
        result = self._score_here(trainer, pl_module, system) if trainer.is_global_zero else None
        return trainer.strategy.broadcast(result)

    def _score_here(self, trainer: L.Trainer, pl_module: L.LightningModule, system) -> tuple[list[ImageScore], float]:
        start = time.perf_counter()
        samples = validation_samples(trainer.datamodule)
        predictor = Predictor(system(), device=pl_module.device, batch_size=trainer.datamodule.cfg.batch_size)
        scores = score_samples(predictor, samples, progress=self.progress,
                               desc=f"full-resolution Dice of {len(samples)} validation photos")
        return scores, time.perf_counter() - start

    @staticmethod
    def _log_csv(trainer: L.Trainer, scores: list[ImageScore], name: str) -> None:
        if not trainer.is_global_zero or trainer.logger is None:
            return
        with tempfile.TemporaryDirectory() as tmp:
            path = write_scores_csv(scores, Path(tmp) / name)
            trainer.logger.experiment.log_artifact(trainer.logger.run_id, str(path), names.CSV_ARTIFACT_DIR)
