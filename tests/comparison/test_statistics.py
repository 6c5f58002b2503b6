"""The study's statistics on constructed data with known answers (lk_segment/comparison/statistics.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lk_segment.comparison import statistics as st


def views(cars: int = 24, per_car: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per-photo Dice of a made-up variant: a car effect shared by its views plus photo noise."""
    rng = np.random.default_rng(seed)
    car = np.repeat(np.arange(cars), per_car)
    dice = 0.96 + rng.normal(0, 0.01, cars)[car] + rng.normal(0, 0.004, len(car))
    return dice, car


def test_identical_variants_give_an_interval_that_covers_zero():
    dice, cars = views()
    diff, low, high = st.car_bootstrap(dice, dice.copy(), cars)
    assert diff == 0 and low <= 0 <= high
    assert st.verdict(low, high) == "no detectable difference"


@pytest.mark.parametrize("d", [0.01, -0.006])
def test_a_shifted_copy_is_detected_and_its_shift_is_inside_the_interval(d):
    dice, cars = views()
    # the shift plus noise of its own per car and per photo, mean zero by construction
    rng = np.random.default_rng(1)
    noise = rng.normal(0, 0.002, 24)[cars] + rng.normal(0, 0.001, len(cars))
    noise -= noise.mean()
    diff, low, high = st.car_bootstrap(dice, dice + d + noise, cars)
    assert diff == pytest.approx(d)
    assert low <= d <= high
    assert not low <= 0 <= high
    assert st.verdict(low, high) == ("better" if d > 0 else "worse")


def test_the_family_level_widens_every_interval_so_that_all_hold_together():
    assert st.family_confidence(0.95, 8) == pytest.approx(1 - 0.05 / 8)
    assert st.family_confidence(0.95, 1) == pytest.approx(0.95) and st.family_confidence(0.95, 0) == 0.95
    rng = np.random.default_rng(3)
    cars = np.repeat(np.arange(24), 16)
    ref = rng.normal(0.97, 0.01, cars.size)
    var = ref + 0.001 + rng.normal(0, 0.002, cars.size)
    _, low, high = st.car_bootstrap(ref, var, cars, confidence=0.95)
    _, family_low, family_high = st.car_bootstrap(ref, var, cars, confidence=st.family_confidence(0.95, 8))
    assert family_low < low < high < family_high


def test_the_interval_resamples_cars_not_photos():
    """A car-level difference (one car much better, the rest equal) is not 16 independent wins: the car
    bootstrap's interval is wider than a photo bootstrap's would be, and here it covers 0."""
    dice, cars = views(cars=12)
    variant = dice.copy()
    variant[cars == 0] += 0.05  # one car of 12 improves
    diff, low, high = st.car_bootstrap(dice, variant, cars)
    assert diff == pytest.approx(0.05 / 12)
    assert low <= 0 <= high  # resampling photos instead would exclude 0: 16 photos of one car agreeing
    photos = np.arange(len(cars))
    _, photo_low, _ = st.car_bootstrap(dice, variant, photos)
    assert photo_low > 0


def test_the_interval_covers_the_true_difference_about_as_often_as_it_claims():
    """200 simulated studies, each with its own cars: a 95% interval should hold the true shift ~95% of the time
    (a percentile bootstrap over 24 clusters runs a little short of it)."""
    rng = np.random.default_rng(7)
    true, hits = 0.004, 0
    for i in range(200):
        cars = np.repeat(np.arange(24), 16)
        reference = 0.96 + rng.normal(0, 0.01, 24)[cars] + rng.normal(0, 0.004, len(cars))
        variant = reference + true + rng.normal(0, 0.006, 24)[cars] + rng.normal(0, 0.002, len(cars))
        _, low, high = st.car_bootstrap(reference, variant, cars, resamples=1000, seed=i)
        hits += low <= true <= high
    assert 0.85 <= hits / 200 <= 0.99


def test_paired_scores_are_matched_by_photo_not_by_order():
    reference = {"b.jpg": ("car2", 0.9), "a.jpg": ("car1", 0.8)}
    variant = {"a.jpg": ("car1", 0.85), "b.jpg": ("car2", 0.95), "c.jpg": ("car3", 0.1)}
    ref, var, cars = st.paired(reference, variant)
    assert list(var - ref) == pytest.approx([0.05, 0.05]) and list(cars) == ["car1", "car2"]


def test_unequal_arrays_are_refused():
    with pytest.raises(ValueError, match="equal"):
        st.car_bootstrap(np.ones(3), np.ones(4), np.arange(3))


@pytest.mark.parametrize("curve, gain, flat", [
    ([0.5, 0.9, 0.95, 0.96, 0.961, 0.9615, 0.962, 0.9621], 0.0006, True),  # last 2 of 8 epochs
    ([0.5, 0.8, 0.9, 0.95], 0.05, False),
    ([0.5, 0.9, 0.95], math.nan, False),  # too short to tell
    ([0.9, 0.95, 0.97, 0.96], -0.01, True),  # a worse last epoch gains nothing
])
def test_a_curve_has_flattened_when_its_last_quarter_gains_little(curve, gain, flat):
    value = st.last_quarter_gain(curve)
    assert (math.isnan(value) and math.isnan(gain)) or value == pytest.approx(gain)
    assert st.flattened(curve) is flat


def test_value_at_equal_time_is_the_best_epoch_finished_by_then():
    times, dice = [10.0, 20.0, 30.0], [0.8, 0.9, 0.85]
    assert math.isnan(st.value_at(times, dice, 5.0))
    assert st.value_at(times, dice, 19.0) == 0.8
    assert st.value_at(times, dice, 20.0) == 0.9
    assert st.value_at(times, dice, 99.0) == 0.9  # the best checkpoint is kept


def test_median_curve_is_per_epoch_up_to_the_shortest_run():
    assert st.median_curve([[1, 2, 3], [3, 4], [2, 6, 9]]) == [2, 4]
