"""The numbers a comparison concludes from, as plain functions of arrays (no MLflow here).

- ``car_bootstrap``: the difference in mean per-image Dice between two variants scored on the
  same photos, with a confidence interval from a bootstrap that resamples *cars*: a car's 16
  views share its shape, colour and background, so they are not 16 independent trials.
- ``verdict``: "better", "worse" or "no detectable difference", from that interval alone;
  ``family_confidence``: the level at which each of m intervals must be read for all m verdicts to hold
  together (Bonferroni).
- ``flattened``: has a Dice curve stopped climbing (the gain over its last quarter of epochs)?
- ``value_at``: a curve read at a given cumulative training time ("Dice at equal time").
- ``median_curve``, ``mean_std``: summaries over folds or seeds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 10_000
FLAT_GAIN = 0.002  # a curve has flattened when its last quarter of epochs gains less than this


@dataclass(frozen=True)
class Difference:
    """``variant`` minus ``reference`` in mean per-image Dice, with its bootstrap interval."""

    variant: str
    reference: str
    diff: float  # on the photos as they are
    low: float
    high: float
    cars: int
    images: int
    confidence: float = CONFIDENCE

    @property
    def verdict(self) -> str:
        return verdict(self.low, self.high)


def verdict(low: float, high: float) -> str:
    """What an interval of (variant - reference) allows one to say, and nothing more."""
    if low > 0:
        return "better"
    if high < 0:
        return "worse"
    return "no detectable difference"


def family_confidence(confidence: float, comparisons: int) -> float:
    """Bonferroni: each of ``comparisons`` intervals at this level, and the chance that any of them misses is at
    most 1 - ``confidence`` (0.95 over 8 comparisons: 99.375% each)."""
    return 1 - (1 - confidence) / max(1, comparisons)


def car_bootstrap(reference: np.ndarray, variant: np.ndarray, cars: np.ndarray, resamples: int = BOOTSTRAP_RESAMPLES,
                  confidence: float = CONFIDENCE, seed: int = 0) -> tuple[float, float, float]:
    """(difference, low, high) of mean(variant) - mean(reference) over paired per-image scores.

    ``reference[i]`` and ``variant[i]`` score the same photo, of car ``cars[i]``. Each resample draws
    as many cars as there are, with replacement, and takes every photo of each car drawn (a car drawn
    twice counts twice); the interval is the percentile interval of the resampled differences.
    """
    reference, variant, cars = np.asarray(reference, float), np.asarray(variant, float), np.asarray(cars)
    if not (reference.shape == variant.shape == cars.shape) or reference.ndim != 1 or len(reference) == 0:
        raise ValueError(f"paired scores need three equal 1-d arrays, got {reference.shape}, {variant.shape}, "
                         f"{cars.shape}")
    diff = variant - reference
    names, car_of = np.unique(cars, return_inverse=True)
    # per car: the sum of its photos' differences and its number of photos; a resample's mean is
    # sum over drawn cars of sums / sum over drawn cars of counts
    sums = np.bincount(car_of, weights=diff, minlength=len(names))
    counts = np.bincount(car_of, minlength=len(names)).astype(float)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(names), size=(resamples, len(names)))
    means = sums[draws].sum(axis=1) / counts[draws].sum(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(diff.mean()), float(low), float(high)


def paired(reference: dict[str, tuple[str, float]], variant: dict[str, tuple[str, float]]
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two variants' {photo: (car, dice)} -> the arrays ``car_bootstrap`` takes, on the photos both scored."""
    photos = sorted(set(reference) & set(variant))
    return (np.array([reference[p][1] for p in photos]), np.array([variant[p][1] for p in photos]),
            np.array([reference[p][0] for p in photos]))


def difference(reference_name: str, reference: dict, variant_name: str, variant: dict, **kwargs) -> Difference:
    ref, var, cars = paired(reference, variant)
    diff, low, high = car_bootstrap(ref, var, cars, **kwargs)
    return Difference(variant_name, reference_name, diff, low, high, len(set(cars)), len(cars),
                      kwargs.get("confidence", CONFIDENCE))


def last_quarter_gain(curve: list[float]) -> float:
    """Best value of the last quarter of epochs minus the best before it (nan under 4 epochs)."""
    if len(curve) < 4:
        return math.nan
    start = len(curve) - max(1, len(curve) // 4)
    return float(max(curve[start:]) - max(curve[:start]))


def flattened(curve: list[float], gain: float = FLAT_GAIN) -> bool:
    """The curve gained less than ``gain`` over its last quarter of epochs (False when too short to tell)."""
    value = last_quarter_gain(curve)
    return not math.isnan(value) and value < gain


def median_curve(curves: list[list[float]]) -> list[float]:
    """Epoch by epoch, the median over runs, up to the shortest run."""
    length = min((len(c) for c in curves), default=0)
    return [float(np.median([c[i] for c in curves])) for i in range(length)]


def value_at(times: list[float], values: list[float], t: float) -> float:
    """The best value among the epochs finished by cumulative training time ``t`` (``times``
    increasing): a training stopped at ``t`` keeps its best checkpoint. nan before the first epoch."""
    reached = [v for time, v in zip(times, values, strict=True) if time <= t * (1 + 1e-9)]
    return float(max(reached)) if reached else math.nan


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for one value)."""
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return math.nan, math.nan
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
