"""The comparison ranks by full-resolution Dice (``val/dice_full_best``), the low-resolution one beside it."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from lk_segment.comparison.report import (
    RunRecord,
    conclusions,
    headline,
    pareto_front,
    regenerate_command,
    summarise,
    table_rows,
)


def run(variant: str, seed: int, low: float, full: float | None, epoch_time_s: float = 1.0) -> RunRecord:
    metrics = {} if full is None else {"val/dice_full_best": full}
    return RunRecord(variant, seed, f"{variant}-{seed}", low, epoch_time_s, 100.0, 500.0, "CPU RSS",
                     {"model/params": "1000"}, metrics, {"val/dice": [low]})


# "a" is best at the training size, "b" at full resolution; "b" is also the faster one.
RUNS = [run("a", 0, 0.95, 0.90, 2.0), run("a", 1, 0.96, 0.91, 2.0),
        run("b", 0, 0.93, 0.97, 1.0), run("b", 1, 0.94, 0.98, 1.0)]


def test_the_headline_column_is_val_dice_full_best():
    rows = summarise(RUNS, order=["a", "b"])
    assert headline(rows) == "dice_full"
    assert rows[1].stats["dice_full"] == pytest.approx((0.975, 0.00707), abs=1e-5)
    header, cells = table_rows(rows)
    assert header[2] == "val/dice_full_best (headline)" and header[3] == "best val/dice (training size)"
    assert cells[1][2] == "0.9750 ± 0.0071" and cells[1][3] == "0.9350 ± 0.0071"


def test_conclusions_and_pareto_front_rank_by_the_headline():
    rows = summarise(RUNS, order=["a", "b"])
    assert pareto_front(rows) == ["b"]  # better at full resolution and faster: "a" is dominated
    text = conclusions(rows)
    assert "Highest val/dice_full_best: b (0.9750 ± 0.0071)" in text
    assert ("Ranked by the means of val/dice_full_best: b > a; by those of the low-resolution best val/dice: "
            "a > b") in text
    assert "places that change (low resolution -> full resolution): b 2 -> 1, a 1 -> 2" in text


def test_runs_without_full_resolution_dice_rank_by_the_low_resolution_one():
    rows = summarise([run("a", 0, 0.95, None), run("b", 0, 0.93, 0.97)])
    assert headline(rows) == "best_dice"
    assert "Highest best val/dice: a" in conclusions(rows)
    assert table_rows(rows)[1][0][2] == "n/a"


def test_the_regeneration_command_names_the_data_by_its_variable(monkeypatch):
    parent = SimpleNamespace(data=SimpleNamespace(params={
        "compare.variants": "3x3 5x5", "compare.seeds": "0 1 2",
        "compare.overrides": "data.root=/data/carvana-sample trainer.max_epochs=2"}))
    monkeypatch.setenv("LK_CARVANA_ROOT", "/data/carvana-sample")
    assert regenerate_command(parent, "cpu") == ('make compare EXPERIMENT=cpu VARIANTS="3x3 5x5" SEEDS=3 '
                                                 'ARGS="data.root=$LK_CARVANA_ROOT trainer.max_epochs=2"')
