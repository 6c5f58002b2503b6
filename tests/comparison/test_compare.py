"""The sweep (nested runs, resume) and its report (table, plots, conclusions from MLflow alone)."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from lk_segment.commands.cli import main
from lk_segment.comparison.report import RunRecord, conclusions, exceeds_spread, pareto_front, summarise, write_report
from lk_segment.comparison.sweep import PARENT_TAG, ROLE_TAG, compare, sweep_key
from lk_segment.errors import UserError
from tests.conftest import use_working_folder

PLOTS = {"dice_vs_epoch_time.png", "dice_vs_params.png", "training_curves.png"}


def record(variant: str, seed: int, dice: float, epoch_time_s: float, params: int = 1000) -> RunRecord:
    return RunRecord(
        variant,
        seed,
        f"{variant}-{seed}",
        dice,
        epoch_time_s,
        100.0 / epoch_time_s,
        500.0,
        "CPU RSS",
        {"model/params": str(params)},
        {},
        {"val/dice": [dice]},
    )


def records(table: dict[str, tuple[list[float], list[float]]]) -> list[RunRecord]:
    return [
        record(v, s, d, t) for v, (dice, time) in table.items() for s, (d, t) in enumerate(zip(dice, time, strict=True))
    ]


def test_summary_is_mean_and_sample_std_over_seeds():
    rows = summarise(records({"a": ([0.8, 0.9, 1.0], [1.0, 2.0, 3.0]), "b": ([0.5], [4.0])}), order=["b", "a"])
    assert [r.variant for r in rows] == ["b", "a"]
    a = rows[1].stats
    assert a["best_dice"] == pytest.approx((0.9, 0.1)) and a["epoch_time_s"] == pytest.approx((2.0, 1.0))
    assert rows[0].seeds == 1 and rows[0].stats["best_dice"][1] == 0.0
    assert rows[1].params == 1000 and rows[1].gflops is None  # not logged: n/a, not 0


def test_pareto_front_keeps_only_undominated_variants():
    rows = summarise(
        records(
            {
                "fast": ([0.80, 0.80], [1.0, 1.0]),
                "good": ([0.90, 0.90], [3.0, 3.0]),
                "worse": ([0.85, 0.85], [4.0, 4.0]),  # slower and worse than "good"
                "mid": ([0.86, 0.86], [2.0, 2.0]),
            }
        )
    )
    assert pareto_front(rows) == ["fast", "good", "mid"]


def test_conclusions_separate_real_differences_from_seed_noise():
    rows = summarise(
        records(
            {
                "3x3": ([0.90, 0.91, 0.92], [10.0, 10.5, 11.0]),
                "5x5": ([0.80, 0.81, 0.82], [20.0, 20.5, 21.0]),  # clearly worse, clearly slower
                "1x5": ([0.88, 0.92, 0.90], [10.2, 10.9, 10.4]),  # within the spread on both
            }
        ),
        order=["3x3", "5x5", "1x5"],  # the first is the reference for epoch time
    )
    assert exceeds_spread(rows[1].stats["best_dice"], rows[0].stats["best_dice"])
    assert not exceeds_spread(rows[2].stats["best_dice"], rows[0].stats["best_dice"])
    text = conclusions(rows)
    assert "Highest best val/dice: 3x3" in text
    assert "Below it by more than the spread: 5x5 (-0.1000)" in text
    assert "Within the spread of it (not distinguishable at this budget): 1x5" in text
    assert "Epoch time against 3x3's, slower by more than the spread: 5x5 x1.95; within the spread: 1x5 x1.00." in text
    assert "The effective receptive field was not measured" in text


def test_conclusions_with_one_seed_claim_nothing():
    text = conclusions(summarise(records({"a": ([0.9], [1.0]), "b": ([0.5], [2.0])})))
    assert text.startswith("With one seed per variant the seed-to-seed spread is unknown")


def test_sweep_key_ignores_override_order_but_not_seeds():
    assert sweep_key(["3x3"], [0, 1], ["a=1", "b=2"]) == sweep_key(["3x3"], [0, 1], ["b=2", "a=1"])
    assert sweep_key(["3x3"], [0, 1], ["a=1"]) != sweep_key(["3x3"], [0, 1, 2], ["a=1"])


@pytest.mark.parametrize(
    "variants,overrides,message",
    [
        (["3x3", "3x3"], [], "listed twice"),
        (["3x3"], ["seed=4"], "set by the sweep"),
        (["3x3", "9x9"], [], "unknown variant '9x9'"),
        (["3x3"], ["trainer.max_epoch=1"], "unknown config key 'trainer.max_epoch'"),
    ],
)
def test_compare_refuses_bad_requests_before_training(workdir, variants, overrides, message):
    with pytest.raises(UserError, match=message):
        compare(variants, 2, overrides)
    assert not (workdir / "checkpoints").exists()


@pytest.mark.slow
def test_report_of_a_missing_experiment_is_a_user_error(workdir):
    with pytest.raises(UserError, match="no MLflow experiment 'nothing'"):
        write_report("nothing", workdir / "r")


@pytest.mark.slow
def test_sweep_nests_every_variant_and_seed_under_one_parent(tiny_comparison):
    client = MlflowClient(tiny_comparison["uri"])
    parent = client.get_run(tiny_comparison["parent_run_id"])
    assert parent.data.tags[ROLE_TAG] == "comparison" and parent.info.status == "FINISHED"
    exp_id = parent.info.experiment_id
    children = client.search_runs([exp_id], f"tags.`{PARENT_TAG}` = '{parent.info.run_id}'")
    finished = [r for r in children if r.info.status == "FINISHED"]
    assert sorted((r.data.tags["variant"], r.data.tags["seed"]) for r in finished) == [
        ("1x5", "0"),
        ("1x5", "1"),
        ("3x3", "0"),
        ("3x3", "1"),
    ]
    for run in finished:
        assert run.info.run_name == f"{run.data.tags['variant']} seed {run.data.tags['seed']}"
        assert "val/dice" in run.data.metrics and run.data.params["trainer.max_epochs"] == "1"
        assert run.data.params["data.split_seed"] == "0" and run.data.params["seed"] == run.data.tags["seed"]
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {f"report/{name}" for name in PLOTS | {"results.csv", "results.md"}} <= artifacts


@pytest.mark.slow
def test_report_table_and_regeneration_from_mlflow_alone(tiny_comparison, tmp_path, monkeypatch):
    rows = list(csv.DictReader(open(tiny_comparison["work"] / "report" / "results.csv")))
    assert [r["variant"] for r in rows] == ["3x3", "1x5"]
    assert all(r["seeds"] == "2" and 0.0 <= float(r["best_dice_mean"]) <= 1.0 for r in rows)
    assert all(float(r["epoch_time_s_mean"]) > 0 and int(r["params"]) > 0 for r in rows)
    assert float(rows[0]["params"]) > float(rows[1]["params"])  # 3x3's two 3x3 convs outweigh 1x5's 1x5 + 5x1

    monkeypatch.setenv("MLFLOW_TRACKING_URI", tiny_comparison["uri"])
    monkeypatch.chdir(tmp_path)  # no checkpoints, no data here: MLflow alone
    assert main(["report", "tiny_compare", "--out", "again", "--markdown", "docs/again.md"]) == 0
    assert (tmp_path / "again" / "results.csv").read_text() == (
        tiny_comparison["work"] / "report" / "results.csv"
    ).read_text()
    assert PLOTS <= {p.name for p in (tmp_path / "again").glob("*.png")}
    text = (tmp_path / "docs" / "again.md").read_text()
    assert "| 3x3 | 2 |" in text and "| 1x5 | 2 |" in text and "## Conclusions" in text
    assert "![training_curves](../again/training_curves.png)" in text  # links relative to the Markdown file
    assert 'make compare EXPERIMENT=tiny_compare VARIANTS="3x3 1x5" SEEDS=2 ARGS="' in text


@pytest.mark.slow
def test_restarted_sweep_trains_only_what_did_not_finish(comparison_copy, tiny_comparison, monkeypatch, capfd):
    work = use_working_folder(monkeypatch, comparison_copy["work"])
    client = MlflowClient(comparison_copy["uri"])
    before = {
        (r.data.tags["variant"], r.data.tags["seed"]): r.info.run_id
        for r in client.search_runs(
            [client.get_experiment_by_name("tiny_compare").experiment_id],
            f"tags.`{PARENT_TAG}` = '{comparison_copy['parent_run_id']}' and attributes.status = 'FINISHED'",
        )
    }
    interrupted = before[("1x5", "1")]
    client.update_run(interrupted, status="RUNNING")  # as a killed sweep leaves it

    result = compare(["3x3", "1x5"], 2, comparison_copy["overrides"], experiment="tiny_compare",
                     report_dir=work / "report")
    assert result["parent_run_id"] == comparison_copy["parent_run_id"]  # the same comparison, resumed
    assert [(p.variant, p.seed) for p in result["trained"]] == [("1x5", 1)]
    assert len(result["skipped"]) == 3
    assert client.get_run(interrupted).info.status == "KILLED"
    out = capfd.readouterr().out
    assert "3 already finished, 1 to train" in out and "run 4/4 (1x5 seed 1): epoch 1/1" in out and "left" in out
    assert np.isfinite(result["report"]["rows"][1].stats["best_dice"][0])
    assert MlflowClient(tiny_comparison["uri"]).get_run(interrupted).info.status == "FINISHED"  # the shared one
