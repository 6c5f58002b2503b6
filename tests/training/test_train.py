"""End to end: a one-epoch fit writes an MLflow run; predict reloads it by run id."""

from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image

from lk_segment.commands.cli import main
from lk_segment.commands.predict import predict_folder
from lk_segment.data.rle import rle_decode
from lk_segment.device import cpu_name
from lk_segment.tracking import find_checkpoint, tracking_uri
from tests.conftest import (
    TRAINED_EPOCHS,
    requires_carvana,
    store_uri,
    use_working_folder,
)

EPOCH_METRICS = ["train/loss", "val/loss", "val/dice", "val/iou", "perf/epoch_time_s",
                 "perf/train_images_per_s", "perf/cpu_peak_rss_mb"]


@pytest.fixture
def trained(trained_run):
    """The session's shared tiny training (tests/conftest.py): (train() result, its folder)."""
    return trained_run["result"], trained_run["work"]


@pytest.mark.slow
def test_fit_writes_an_mlflow_run_with_every_metric(trained):
    result, work = trained
    client = MlflowClient(store_uri(work))
    run = client.get_run(result["run_id"])
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "5x5"
    assert run.data.tags["variant"] == "5x5" and run.data.tags["kernel_size"] == "5"
    for key in EPOCH_METRICS:
        history = client.get_metric_history(result["run_id"], key)
        assert len(history) == TRAINED_EPOCHS, key  # one value per epoch
        assert all(np.isfinite(m.value) for m in history)
    on_cuda = torch.cuda.is_available()  # trainer.accelerator=auto trains on the GPU where there is one
    assert run.data.params["trainer.device_name"] == (torch.cuda.get_device_name(0) if on_cuda else cpu_name())
    for key in ("perf/gpu_peak_mem_mb", "perf/gpu_peak_reserved_mb"):  # exactly when the run trained on CUDA
        assert (key in run.data.metrics) == on_cuda, key
    assert int(run.data.params["model/params"]) > 0
    assert run.data.params["model.block"] == "5x5" and run.data.params["trainer.max_epochs"] == str(TRAINED_EPOCHS)
    assert "model/block" not in run.data.params  # the config is logged once, under dotted keys
    artifacts = {a.path for a in client.list_artifacts(result["run_id"])}
    assert {"config.yaml", "checkpoints"} <= artifacts
    ckpts = {a.path for a in client.list_artifacts(result["run_id"], "checkpoints")}
    assert "checkpoints/last.ckpt" in ckpts and any(p.startswith("checkpoints/best-") for p in ckpts)
    assert 0.0 <= result["best_dice"] <= 1.0


@pytest.mark.slow
def test_predict_from_run_id_writes_full_size_masks_and_rle(trained, tiny_root, tmp_path, monkeypatch):
    result, work = trained
    use_working_folder(monkeypatch, work)
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ["synth0001_03.jpg", "synth0002_09.jpg"]:
        (inputs / name).write_bytes((tiny_root / "train" / name).read_bytes())
    ckpt = find_checkpoint(result["run_id"])
    assert ckpt.name.startswith("best-")
    csv_path = predict_folder(ckpt, inputs, tmp_path / "out", progress=False)
    rows = [line.split(",") for line in csv_path.read_text().splitlines()]
    assert rows[0] == ["img", "rle_mask"] and len(rows) == 3
    for name, rle in rows[1:]:
        image = cv2.imread(str(inputs / name))
        mask = cv2.imread(str(tmp_path / "out" / name.replace(".jpg", "_mask.png")), cv2.IMREAD_GRAYSCALE)
        assert mask.shape == image.shape[:2]
        assert set(np.unique(mask)) <= {0, 255}
        np.testing.assert_array_equal(rle_decode(rle, mask.shape), mask // 255)


@pytest.mark.slow
def test_predictor_runs_channels_last_and_predicts_the_nchw_masks(trained, tiny_root, monkeypatch):
    from lk_segment.inference import Predictor
    from lk_segment.training.checkpointing import load_system

    result, work = trained
    use_working_folder(monkeypatch, work)
    ckpt = find_checkpoint(result["run_id"])
    nhwc, nchw = Predictor(load_system(ckpt)), Predictor(load_system(ckpt), channels_last=False)
    weights = [next(p.model.encoder.parameters()) for p in (nhwc, nchw)]  # the first 5x5 conv's (8, 3, 5, 5)
    assert weights[0].is_contiguous(memory_format=torch.channels_last) and not weights[0].is_contiguous()
    assert weights[1].is_contiguous()
    image = cv2.cvtColor(cv2.imread(str(tiny_root / "train" / "synth0001_03.jpg")), cv2.COLOR_BGR2RGB)
    a, b = nhwc.predict(image), nchw.predict(image)
    assert a.shape == image.shape[:2] and a.any()
    assert (a != b).mean() < 1e-4  # the same masks, up to a pixel whose logit rounds across 0


@pytest.mark.slow
def test_cli_predict_by_run_id(trained, tiny_root, tmp_path, monkeypatch):
    result, work = trained
    use_working_folder(monkeypatch, work)
    code = main(["predict", "--run", result["run_id"], "--input", str(tiny_root / "train"),
                 "--out", str(tmp_path / "o")])
    assert code == 0
    assert len(list((tmp_path / "o").glob("*_mask.png"))) == 64


@pytest.mark.parametrize(
    "argv,message",
    [
        (["train", "--variant", "9x9"], "unknown variant '9x9': choose one of"),
        (["train", "trainer.max_epoch=1"], "unknown config key 'trainer.max_epoch'"),
        (["train", "data.root=/no/such/folder"], "does not exist"),
        (["predict", "--run", "0123456789abcdef", "--input", ".", "--out", "o"], "no MLflow run with id"),
        (["predict", "--ckpt", "missing.ckpt", "--input", ".", "--out", "o"], "does not exist"),
    ],
)
@pytest.mark.slow
def test_cli_errors_are_one_line_exit_2(workdir, argv, message):
    Image.new("RGB", (32, 24)).save(workdir / "car_01.jpg")  # predict checks its input folder first
    proc = subprocess.run([sys.executable, "-m", "lk_segment", *argv], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("lk-segment: error:")]
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_tracking_uri_defaults_to_sqlite(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri() == "sqlite:///mlruns/mlflow.db"
    assert (tmp_path / "mlruns").is_dir()


@requires_carvana
@pytest.mark.real_data
@pytest.mark.slow
def test_short_fit_on_real_photographs(real_run):
    # Three short epochs (the session's run on 6 real cars) already separate car from background far better
    # than chance (~0.4).
    assert 0.6 < real_run["result"]["best_dice"] <= 1.0
