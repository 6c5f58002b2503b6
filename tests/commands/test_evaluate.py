"""``make evaluate``: bad input in one line, and the same Dice as decoding ``make predict``'s submission."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from lk_segment.commands.cli import main
from lk_segment.data.carvana import read_mask
from lk_segment.data.rle import rle_decode
from lk_segment.training.full_res import dice_of
from tests.conftest import carvana_root


def kaggle_folder(root: Path, images: dict[str, tuple[int, int]], masks: dict[str, tuple[int, int]]) -> Path:
    """A Kaggle-layout folder with grey photos and empty masks of the given (H, W) sizes."""
    from PIL import Image

    (root / "train").mkdir(parents=True)
    (root / "train_masks").mkdir()
    for name, (h, w) in images.items():
        cv2.imwrite(str(root / "train" / f"{name}.jpg"), np.full((h, w, 3), 128, np.uint8))
    for name, (h, w) in masks.items():
        Image.fromarray(np.zeros((h, w), np.uint8), mode="P").save(root / "train_masks" / f"{name}_mask.gif")
    return root


@pytest.mark.parametrize(
    "layout,message",
    [
        (None, "DATA folder"),  # not the missing checkpoint: the folder is checked first
        (({"car_01": (20, 30)}, {}), "no masks"),
        (({"car_01": (20, 30), "car_02": (20, 30)}, {"car_01": (20, 30)}), "'car_02.jpg' has no mask"),
        (({"car_01": (20, 30)}, {"car_01": (30, 20)}), "is 20x30 but its image is 30x20"),
    ],
)
def test_bad_evaluation_folders_stop_in_one_line_with_exit_2(workdir, capsys, layout, message):
    data = workdir / "cars"
    if layout is not None:
        kaggle_folder(data, *layout)
    assert main(["evaluate", "--ckpt", "model.ckpt", "--data", str(data)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert "model.ckpt" not in err  # the data's own fault named, not the checkpoint's


def test_a_run_without_a_checkpoint_stops_in_one_line(workdir, capsys, tiny_root):
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    run_id = client.create_run(client.create_experiment("empty")).info.run_id
    assert main(["evaluate", "--run", run_id, "--data", str(tiny_root)]) == 2
    assert "has no checkpoint" in capsys.readouterr().err


def subset(source: Path, dest: Path, photos: int) -> Path:
    """The first ``photos`` photos of a Kaggle-layout folder with their masks, linked (not copied)."""
    (dest / "train").mkdir(parents=True)
    (dest / "train_masks").mkdir()
    for image in sorted((source / "train").glob("*.jpg"))[:photos]:
        (dest / "train" / image.name).symlink_to(image)
        mask = f"{image.stem}_mask.gif"
        (dest / "train_masks" / mask).symlink_to(source / "train_masks" / mask)
    return dest


@pytest.mark.slow
@pytest.mark.parametrize("source", ["synthetic", pytest.param("real", marks=pytest.mark.real_data)])
def test_evaluate_gives_the_dice_of_the_decoded_submission(tiny_root, trained_copy, source):
    if source == "real" and carvana_root() is None:
        pytest.skip("LK_CARVANA_ROOT is unset: point it at the real Carvana sample to run this test")
    run_id, workdir = trained_copy["run_id"], trained_copy["work"]  # evaluate logs to the run: a copy
    data = subset(tiny_root if source == "synthetic" else carvana_root(), workdir / "photos", 12)

    assert main(["evaluate", "--run", run_id, "--data", str(data), "--out", "ev"]) == 0
    assert main(["predict", "--run", run_id, "--input", str(data / "train"), "--out", "pred"]) == 0

    scored = {r["image"]: float(r["dice"]) for r in csv.DictReader(open(workdir / "ev" / "photos" / "per_image.csv"))}
    decoded = {}
    for row in csv.DictReader(open(workdir / "pred" / "submission.csv")):
        true = read_mask(data / "train_masks" / f"{Path(row['img']).stem}_mask.gif")
        decoded[row["img"]] = dice_of(rle_decode(row["rle_mask"], true.shape), true)[0]
    assert scored.keys() == decoded.keys() and len(scored) == 12
    for name, dice in decoded.items():
        assert scored[name] == pytest.approx(dice, abs=1e-12), name

    run = MlflowClient(os.environ["MLFLOW_TRACKING_URI"]).get_run(run_id)
    assert run.data.metrics["eval/photos/dice_mean"] == pytest.approx(np.mean(list(decoded.values())))
    assert run.data.metrics["eval/photos/images"] == 12
    assert run.data.metrics["eval/photos/dice_worst"] == pytest.approx(min(decoded.values()))
    overlays = sorted((workdir / "ev" / "photos").glob("worst_*.png"))
    assert len(overlays) == 5 and cv2.imread(str(overlays[0])) is not None
    logged = {a.path for a in MlflowClient(os.environ["MLFLOW_TRACKING_URI"]).list_artifacts(run_id, "eval/photos")}
    assert "eval/photos/per_image.csv" in logged and len([p for p in logged if p.endswith(".png")]) == 5

    assert main(["evaluate", "--run", run_id, "--data", str(data), "--out", "ev", "--tta"]) == 0
    run = MlflowClient(os.environ["MLFLOW_TRACKING_URI"]).get_run(run_id)
    assert 0.0 <= run.data.metrics["eval/photos/tta/dice_mean"] <= 1.0  # its own keys, beside the plain ones
    assert (workdir / "ev" / "photos-tta" / "per_image.csv").is_file()
