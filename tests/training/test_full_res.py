"""Full-resolution Dice per image: the arithmetic, the scoring of files, the training callback."""

from __future__ import annotations

import csv

import cv2
import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from lk_segment.data.carvana import Sample
from lk_segment.training.full_res import FullResEval, ImageScore, dice_of, score_samples, summary


def two_cars() -> list[tuple[np.ndarray, np.ndarray]]:
    """(predicted, true) of a big car and a small one, on photos of two sizes, counted by hand:

    big:   true 100 px (10x10), predicted shifted by one column: 90 px shared, Dice 180/200 = 0.9
    small: true 10 px (2x5), predicted shifted by one row:        5 px shared, Dice  10/20  = 0.5
    mean 0.7 (each photo counts once); pooled 2 (90 + 5) / (200 + 20) = 0.8636 (the big car weighs more)
    """
    big_true, big_pred = np.zeros((40, 60), np.uint8), np.zeros((40, 60), np.uint8)
    big_true[10:20, 10:20] = 1
    big_pred[10:20, 11:21] = 1
    small_true, small_pred = np.zeros((12, 18), np.uint8), np.zeros((12, 18), np.uint8)
    small_true[3:5, 4:9] = 1
    small_pred[4:6, 4:9] = 1
    return [(big_pred, big_true), (small_pred, small_true)]


def test_mean_per_image_dice_is_not_the_pooled_one():
    big, small = two_cars()
    assert dice_of(*big) == (pytest.approx(0.9), 90, 200)
    assert dice_of(*small) == (pytest.approx(0.5), 5, 20)
    figures = summary([ImageScore("big_01.jpg", "big", *dice_of(*big)),
                       ImageScore("small_01.jpg", "small", *dice_of(*small))])
    assert figures["mean"] == pytest.approx(0.7)
    assert figures["pooled"] == pytest.approx(190 / 220)
    assert figures["worst"] == pytest.approx(0.5) and figures["images"] == 2


def test_two_empty_masks_agree_and_masks_of_two_sizes_are_refused():
    empty = np.zeros((4, 6), np.uint8)
    assert dice_of(empty, empty) == (1.0, 0, 0)
    with pytest.raises(ValueError, match="different sizes"):
        dice_of(empty, np.zeros((6, 4), np.uint8))


class FixedPredictor:
    """Stands in for ``Predictor``: the masks of ``two_cars``, by photo size."""

    batch_size = 1

    def __init__(self, masks: dict[tuple[int, int], np.ndarray]):
        self.by_size = masks

    def prepare(self, image):  # the photo "resized" and its own size, as Predictor.prepare
        return image[:4, :4], image.shape[:2]

    def masks(self, prepared):
        return [self.by_size[size] for _, size in prepared]


def test_score_samples_reads_each_photo_and_mask_at_its_own_size(tmp_path):
    samples, masks = [], {}
    for name, (predicted, true) in zip(["big_01", "small_01"], two_cars(), strict=True):
        h, w = true.shape
        cv2.imwrite(str(tmp_path / f"{name}.jpg"), np.full((h, w, 3), 128, np.uint8))
        gif = Image.fromarray(true, mode="P")  # palette indices 0/1, as Carvana's masks
        gif.save(tmp_path / f"{name}_mask.gif")
        samples.append(Sample(tmp_path / f"{name}.jpg", tmp_path / f"{name}_mask.gif"))
        masks[(h, w)] = predicted
    scores = score_samples(FixedPredictor(masks), samples, progress=False)
    assert [(s.image, s.car) for s in scores] == [("big_01.jpg", "big"), ("small_01.jpg", "small")]
    assert [s.dice for s in scores] == pytest.approx([0.9, 0.5])
    assert summary(scores)["mean"] == pytest.approx(0.7)


@pytest.mark.parametrize("every,max_epochs,due_epochs", [(0, 4, [4]), (1, 3, [1, 2, 3]), (2, 5, [2, 4, 5])])
def test_full_res_eval_is_due_after_the_last_epoch_and_every_n(every, max_epochs, due_epochs):
    callback = FullResEval(every)
    assert [e + 1 for e in range(max_epochs) if callback.due(e, max_epochs)] == due_epochs


@pytest.mark.slow
def test_training_logs_full_res_dice_per_eval_and_on_the_best_checkpoint(trained_run, tmp_path):
    """The shared run: 3 epochs, full-resolution Dice every 2 (tests/conftest.py)."""
    result, workdir = trained_run["result"], tmp_path
    client = MlflowClient(trained_run["uri"])
    run_id = result["run_id"]
    history = client.get_metric_history(run_id, "val/dice_full")
    assert len(history) == 2  # epochs 2 and 3 (the last); not epoch 1
    assert len(client.get_metric_history(run_id, "perf/full_res_eval_s")) >= 2
    assert all(0.0 <= m.value <= 1.0 for m in history)
    run = client.get_run(run_id)
    assert run.data.metrics["val/dice_full_worst"] <= run.data.metrics["val/dice_full"]
    best = run.data.metrics["val/dice_full_best"]
    assert result["metrics"]["val/dice_full_best"] == pytest.approx(best)
    artifacts = {a.path for a in client.list_artifacts(run_id, "full_res")}
    assert {"full_res/epoch_001.csv", "full_res/epoch_002.csv", "full_res/best.csv"} <= artifacts
    local = client.download_artifacts(run_id, "full_res/best.csv", str(workdir))
    rows = list(csv.DictReader(open(local)))
    assert len(rows) == 16  # the one validation car of 4, its 16 views
    assert {"image", "car", "dice"} <= set(rows[0])
    assert float(np.mean([float(r["dice"]) for r in rows])) == pytest.approx(best, abs=1e-9)
