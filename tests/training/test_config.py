from __future__ import annotations

import pytest

from lk_segment.config import available_variants, load_config, to_container, training_size
from lk_segment.errors import UserError
from lk_segment.system import build_model


@pytest.mark.parametrize("variant", available_variants())
def test_every_variant_file_builds_a_model(variant):
    cfg = load_config(variant, ["model.width=4", "model.depth=2"])
    assert cfg.variant == variant
    model = build_model(to_container(cfg)["model"])
    assert model.receptive_field_px() > 1


def test_overrides_are_typed():
    cfg = load_config("5x5", ["trainer.max_epochs=3", "optim.lr=0.01", "data.root=/somewhere"])
    assert cfg.trainer.max_epochs == 3 and cfg.optim.lr == 0.01 and cfg.data.root == "/somewhere"


@pytest.mark.parametrize(
    "override,message",
    [
        ("trainer.max_epoch=3", "unknown config key 'trainer.max_epoch'"),
        ("modle.width=3", "unknown config key 'modle"),
        ("trainer.max_epochs=abc", "bad value for config key 'trainer.max_epochs'"),
        ("data.height", "not key=value"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(UserError, match=message):
        load_config("3x3", [override])


def test_unknown_variant_lists_the_valid_ones():
    with pytest.raises(UserError, match="choose one of 1x5, 3x3, 5x5"):
        load_config("9x9")


def test_training_size_keeps_carvana_aspect():
    assert training_size(128) == (128, 192)
    assert training_size(256) == (256, 384)
    assert training_size(100, 150) == (100, 150)


def test_the_gpu_profile_is_merged_after_the_variant_and_before_the_overrides():
    default = load_config("5x5")
    cfg = load_config("5x5", ["profile=gpu"])
    assert cfg.profile == "gpu" and cfg.model == default.model  # the variant's model, the profile's data
    assert (cfg.data.height, cfg.data.width, cfg.data.batch_size) == (512, 768, 32)
    assert training_size(cfg.data.height, cfg.data.width) == (512, 768)
    cfg = load_config("5x5", ["data.batch_size=16", "profile=gpu"])  # the command line wins, in any order
    assert cfg.data.batch_size == 16 and cfg.data.height == 512
    with pytest.raises(UserError, match="unknown profile 'tpu': choose one of gpu"):
        load_config("3x3", ["profile=tpu"])


@pytest.mark.parametrize(
    "overrides,expected",
    [
        ([], (128, 6)),  # synthetic data: the quick first run
        (["data.root=/photos"], (96, 16)),  # real photos: the study's sizing (REAL_PHOTO_DEFAULTS)
        (["data.root=/photos", "data.height=256"], (256, 16)),  # the command line still wins
        (["data.root=/photos", "trainer.max_epochs=3"], (96, 3)),
        (["data.root=/photos", "profile=gpu"], (512, 16)),  # so does a profile
        (["data.root=/photos", "data.root=null"], (128, 6)),  # the last word on data.root counts
    ],
)
def test_real_photos_train_at_the_studys_size_unless_told_otherwise(overrides, expected):
    cfg = load_config("3x3", overrides)
    assert (cfg.data.height, cfg.trainer.max_epochs) == expected
    if expected[0] == 96:
        assert training_size(cfg.data.height, cfg.data.width, 2**cfg.model.depth) == (96, 144)
