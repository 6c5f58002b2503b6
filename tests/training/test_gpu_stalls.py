"""What would cost a GPU run its speed or hang it, proved on the CPU: the metrics' host syncs, predict's
copies and serial CPU work, the best checkpoint read on every node."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
from torchmetrics import Metric

from lk_segment.commands import predict as predict_module
from lk_segment.commands.predict import predict_folder
from lk_segment.inference import Predictor
from lk_segment.system import SegmentationSystem
from lk_segment.training.full_res import FullResEval, ImageScore

OPTIM = {"lr": 1e-3, "weight_decay": 0.0, "warmup_fraction": 0.1}


def untrained() -> SegmentationSystem:
    torch.manual_seed(0)
    return SegmentationSystem(model={"block": "3x3", "width": 4, "depth": 2, "kernel_size": 3}, optim=OPTIM,
                              data={"height": 32, "width": 48})


def photos(*sizes: tuple[int, int]) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]


def test_the_validation_metrics_skip_their_input_checks(monkeypatch):
    """torchmetrics' checks (unique, all) read device values on the host: every validation step would wait."""
    system = untrained()
    metrics = [m for m in system.modules() if isinstance(m, Metric)]
    assert len(metrics) == 2

    def no_host_read(*args, **kwargs):
        raise AssertionError("torch.unique: a host sync on a GPU")

    monkeypatch.setattr(torch, "unique", no_host_read)
    prob, target = torch.rand(2, 1, 8, 8), (torch.rand(2, 1, 8, 8) > 0.5).int()
    for metric in metrics:
        metric.update(prob, target)
        assert 0 <= float(metric.compute()) <= 1


@pytest.mark.parametrize("sizes", [[(90, 130)] * 5, [(90, 130), (64, 96), (200, 300), (64, 96), (33, 47)]])
def test_predict_thresholds_on_the_device_and_copies_once_per_batch(monkeypatch, sizes):
    images = photos(*sizes)
    predictor = Predictor(untrained(), batch_size=3)
    # the reference: each image's logits at its own size, thresholded
    expected = [(predictor.logits(image) > 0).to(torch.uint8).numpy() for image in images]
    copies = []
    cpu = torch.Tensor.cpu

    def counted(tensor, *args, **kwargs):
        copies.append(tensor.dtype)
        return cpu(tensor, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "cpu", counted)
    masks = predictor.predict_batch(images)
    assert copies == [torch.uint8, torch.uint8]  # 5 images in batches of 3: two copies, of 0/1 bytes
    assert [m.shape for m in masks] == [im.shape[:2] for im in images]
    for mask, want in zip(masks, expected, strict=True):
        assert mask.dtype == np.uint8 and (mask != want).mean() < 1e-3  # batched convs may round a logit across 0


def test_predict_folder_leaves_the_cpu_work_to_threads(tmp_path, monkeypatch):
    """Resizing happens where the photo is decoded, PNG and run-length encoding in writer threads: the main
    thread only feeds the device."""
    system = untrained()
    ckpt = tmp_path / "model.ckpt"
    torch.save({"hyper_parameters": dict(system.hparams), "state_dict": system.state_dict(), "epoch": 0}, ckpt)
    folder = tmp_path / "in"
    folder.mkdir()
    for i, image in enumerate(photos(*[(64, 96)] * 5)):
        cv2.imwrite(str(folder / f"car_{i:02d}.jpg"), image)
    threads: dict[str, set[str]] = {"resize": set(), "imwrite": set(), "rle": set()}

    def recorded(name, function):
        def wrapper(*args, **kwargs):
            threads[name].add(threading.current_thread().name)
            return function(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(predict_module.cv2, "resize", recorded("resize", cv2.resize))
    monkeypatch.setattr(predict_module.cv2, "imwrite", recorded("imwrite", cv2.imwrite))
    monkeypatch.setattr(predict_module, "rle_encode", recorded("rle", predict_module.rle_encode))
    csv_path = predict_folder(ckpt, folder, tmp_path / "out", progress=False, device="cpu", batch_size=2)
    main = threading.main_thread().name
    for name, seen in threads.items():
        assert seen and main not in seen, f"{name} ran on the main thread"
    rows = csv_path.read_text().splitlines()
    assert rows[0] == "img,rle_mask" and [r.split(",")[0] for r in rows[1:]] == [f"car_{i:02d}.jpg" for i in range(5)]
    assert len(list((tmp_path / "out").glob("*_mask.png"))) == 5


def test_only_global_rank_0_reads_the_best_checkpoint():
    """A second node need not hold rank 0's checkpoint: it takes rank 0's figures from the broadcast (reading
    the file there raised while rank 0 waited in that broadcast: a hang until the collective timed out)."""
    scores = [ImageScore("a.jpg", "a", 0.8, 8, 20), ImageScore("b.jpg", "b", 0.6, 6, 20)]
    sent = []
    trainer = SimpleNamespace(
        checkpoint_callback=SimpleNamespace(best_model_path="/nowhere/on/this/node/best-001.ckpt"),
        is_global_zero=False, logger=None,
        strategy=SimpleNamespace(broadcast=lambda obj: sent.append(obj) or (scores, {})))
    callback = FullResEval()
    callback.on_train_end(trainer, pl_module=None)
    assert sent == [None]  # nothing computed here: rank 0's result arrives
    assert callback.metrics["val/dice_full_best"] == pytest.approx(0.7)
    assert callback.metrics["val/dice_full_best_worst"] == pytest.approx(0.6)

