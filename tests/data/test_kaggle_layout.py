from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from PIL import Image

from lk_segment.config import DataConfig
from lk_segment.data.carvana import DecodedCache, list_samples, read_mask, split_by_car
from lk_segment.data.module import CarvanaDataModule, validation_photos
from lk_segment.data.rle import rle_decode, rle_encode
from lk_segment.errors import UserError
from tests.conftest import carvana_root, requires_carvana


def test_layout_is_kaggle(tiny_root):
    samples = list_samples(tiny_root)
    assert len(samples) == 4 * 16
    assert samples[0].image.name == "synth0000_01.jpg"
    assert samples[0].mask.name == "synth0000_01_mask.gif"
    mask = read_mask(samples[0].mask)
    assert set(np.unique(mask)) == {0, 1}
    assert Image.open(samples[0].mask).mode == "P"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_split_keeps_cars_apart(tiny_root, seed):
    train, val = split_by_car(list_samples(tiny_root), 0.25, seed)
    train_cars, val_cars = {s.car for s in train}, {s.car for s in val}
    assert train_cars and val_cars and not train_cars & val_cars
    assert len(train) + len(val) == 64 and len(val) == 16


def test_split_is_seeded(tiny_root):
    samples = list_samples(tiny_root)
    assert split_by_car(samples, 0.5, 3) == split_by_car(samples, 0.5, 3)


def test_cache_is_built_once_and_reused(tiny_root, tmp_path):
    cfg = DataConfig(root=str(tiny_root), height=32, width=48, cache_dir=str(tmp_path / "cache"), augment=False)
    before = DecodedCache.decode_count
    dm = CarvanaDataModule(cfg, progress=False)
    dm.prepare_data()
    dm.setup("fit")
    assert DecodedCache.decode_count - before == 64
    for _ in range(2):  # two epochs
        for images, masks in dm.train_dataloader():
            assert images.shape[1:] == (3, 32, 48) and masks.shape[1:] == (1, 32, 48)
    again = CarvanaDataModule(cfg, progress=False)  # a later run
    again.prepare_data()
    again.setup("fit")
    assert DecodedCache.decode_count - before == 64  # nothing decoded the second time
    assert len(list((tmp_path / "cache").iterdir())) == 1


@pytest.mark.parametrize("folds", [0, 2])
def test_validation_photos_are_the_validation_sets_own_without_a_cache(tiny_root, tmp_path, folds):
    """The ERF's short way in: the same photos, the same pixels as the DataModule's validation set, spread over
    its cars, and nothing decoded into a cache."""
    cfg = DataConfig(root=str(tiny_root), height=32, width=48, cache_dir=str(tmp_path / "cache"), augment=False,
                     folds=folds, fold=1 if folds else 0)
    before = DecodedCache.decode_count
    photos = validation_photos(cfg, size_multiple=16, count=5)
    assert DecodedCache.decode_count == before and not (tmp_path / "cache").exists()
    dm = CarvanaDataModule(cfg, size_multiple=16, progress=False)
    dm.prepare_data()
    dm.setup("fit")
    val = dm.val_set
    picks = np.unique(np.linspace(0, len(val) - 1, 5).round().astype(int))
    expected = torch.stack([val[int(i)][0] for i in picks])
    assert photos.shape == expected.shape == (5, 3, 32, 48) and photos.dtype == expected.dtype
    assert torch.equal(photos, expected)
    # spread over the cars, not the first car's views (the 4 tiny cars: 2 per fold, 1 in the plain split)
    assert len({dm.val_samples[int(i)].car for i in picks}) == len(dm.val_cars)


def test_missing_root_and_missing_mask(tmp_path, tiny_root):
    with pytest.raises(UserError, match="does not exist"):
        list_samples(tmp_path / "nowhere")
    with pytest.raises(UserError, match="no train/ folder"):
        list_samples(tmp_path)
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "car_01.jpg").write_bytes((tiny_root / "train" / "synth0000_01.jpg").read_bytes())
    with pytest.raises(UserError, match="has no mask"):
        list_samples(tmp_path)


def test_rle_round_trip():
    rng = np.random.default_rng(0)
    mask = (rng.random((37, 53)) > 0.6).astype(np.uint8)
    mask[0, 0] = mask[-1, -1] = 1  # runs that touch both ends
    rle = rle_encode(mask)
    assert rle.split()[0] == "1"
    np.testing.assert_array_equal(rle_decode(rle, mask.shape), mask)
    assert rle_encode(np.zeros((4, 4))) == ""


def test_rle_is_row_major_one_based():
    mask = np.array([[0, 1, 1], [1, 0, 0]])
    assert rle_encode(mask) == "2 3"


@pytest.mark.real_data
@requires_carvana
def test_rle_matches_kaggle_reference_csv():
    root = carvana_root()
    with open(root / "train_masks.csv") as f:
        rows = list(csv.DictReader(f))[:5]
    for row in rows:
        mask = read_mask(root / "train_masks" / row["img"].replace(".jpg", "_mask.gif"))
        assert rle_encode(mask) == row["rle_mask"]
        np.testing.assert_array_equal(rle_decode(row["rle_mask"], mask.shape), mask)
