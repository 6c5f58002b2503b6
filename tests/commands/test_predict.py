"""The Predictor on an untrained model (no training: fast): batches, sizes, TTA, devices."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lk_segment.device import resolve_device
from lk_segment.errors import UserError
from lk_segment.inference import Predictor
from lk_segment.system import SegmentationSystem

OPTIM = {"lr": 1e-3, "weight_decay": 0.0, "warmup_fraction": 0.1}


def untrained(block: str = "3x3") -> SegmentationSystem:
    torch.manual_seed(0)
    return SegmentationSystem(model={"block": block, "width": 4, "depth": 2, "kernel_size": 3}, optim=OPTIM,
                              data={"height": 32, "width": 48})


def photos(*sizes: tuple[int, int]) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]


def test_a_batch_of_mixed_sizes_gives_the_masks_of_one_image_at_a_time():
    images = photos((90, 130), (64, 96), (200, 300))
    predictor = Predictor(untrained(), batch_size=2)
    batch = predictor.predict_batch(images)
    assert [m.shape for m in batch] == [im.shape[:2] for im in images]
    for image, mask in zip(images, batch, strict=True):
        single = predictor.predict(image)
        assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
        assert (single != mask).mean() < 1e-3  # batched convolutions may round a logit across 0


def test_tta_averages_the_mirror_view_and_keeps_the_mask_shape():
    image = photos((90, 130))[0]
    system = untrained()
    plain, tta = Predictor(system), Predictor(system, tta=True)
    a, b = plain.small_logits([image]), tta.small_logits([image])
    assert not torch.allclose(a, b)  # the mirror view changes the logits
    mirror = plain.small_logits([image[:, ::-1].copy()]).flip(-1)
    torch.testing.assert_close(b, 0.5 * (a + mirror), rtol=1e-4, atol=1e-5)
    assert tta.predict(image).shape == image.shape[:2]


def test_a_mirrored_photo_gets_the_mirrored_tta_mask():
    image = photos((64, 96))[0]
    predictor = Predictor(untrained(), tta=True)
    a = predictor.small_logits([image])
    b = predictor.small_logits([image[:, ::-1].copy()])
    torch.testing.assert_close(a, b.flip(-1), rtol=1e-4, atol=1e-5)  # TTA is mirror-symmetric


def test_device_cuda_without_a_gpu_is_a_user_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="no CUDA"):
        resolve_device("cuda")
    assert resolve_device("auto").type == "cpu"
    with pytest.raises(UserError, match="choose auto, cpu or cuda"):
        resolve_device("tpu")


def test_a_grey_image_is_refused_in_one_line():
    with pytest.raises(UserError, match=r"RGB image"):
        Predictor(untrained()).predict(np.zeros((64, 96), np.uint8))
