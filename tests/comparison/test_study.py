"""make study: the k-fold split, the study file, the shared-machine flag and a whole tiny study, resumed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from lk_segment import names
from lk_segment.comparison.records import RunRecord
from lk_segment.comparison.study import load_study
from lk_segment.comparison.study_report import shared_machine
from lk_segment.config import available_variants
from lk_segment.data.carvana import list_samples, split_by_car
from lk_segment.errors import UserError


@pytest.mark.parametrize("folds", [2, 3, 4])
def test_k_folds_validate_every_car_exactly_once(tiny_root, folds):
    samples = list_samples(tiny_root)
    val_cars = []
    for fold in range(folds):
        train, val = split_by_car(samples, 0.2, seed=5, folds=folds, fold=fold)
        assert not {s.car for s in train} & {s.car for s in val}  # a car's views stay on one side
        assert len(train) + len(val) == len(samples)
        val_cars.append({s.car for s in val})
    every = [car for cars in val_cars for car in cars]
    assert sorted(every) == sorted({s.car for s in samples})  # each car once, none twice
    assert max(map(len, val_cars)) - min(map(len, val_cars)) <= 1


@pytest.mark.parametrize("folds, fold, message", [(1, 0, "data.folds=1"), (3, 3, "data.fold=3"),
                                                  (99, 0, "data.folds=99")])
def test_bad_folds_are_user_errors(tiny_root, folds, fold, message):
    with pytest.raises(UserError, match=message):
        split_by_car(list_samples(tiny_root), 0.2, 0, folds=folds, fold=fold)


def record(others: list[float], load: list[float] | None = None) -> RunRecord:
    curves = {"perf/others_cpu_share": others, "perf/load_avg_1m": load or [1.0] * len(others)}
    return RunRecord("3x3", 0, "run", 0.9, 10.0, 1.0, 100.0, "CPU RSS", {}, {}, curves)


def test_a_run_with_the_machine_to_itself_is_not_flagged():
    assert shared_machine(record([0.01, 0.03, names.SHARED_MACHINE_THRESHOLD])) is None


def test_a_run_that_shared_the_machine_is_flagged_with_its_worst_epoch():
    reason = shared_machine(record([0.02, 0.45, 0.3], load=[2.0, 3.2, 3.0]))
    assert "45%" in reason and "epoch 2" in reason and "load average 3.2" in reason and "2 of 3 epochs" in reason


def test_a_run_without_the_share_recorded_is_not_taken_as_clean():
    assert "not recorded" in shared_machine(record([]))


def test_the_shipped_study_names_every_variant_and_3x3_as_reference():
    study = load_study("cpu-sample")
    assert sorted(study.variants) == available_variants() and study.reference == "3x3" and study.folds == 3


@pytest.mark.parametrize("text, message", [
    ({"variants": ["3x3", "7x7"]}, "unknown variants 7x7"),
    ({"variants": ["5x5", "1x5"]}, "reference '3x3' is not among"),
    ({"overrides": ["seed=3"]}, "set by the study itself"),
    ({"folds": 1}, "folds=1"),
    ({"foldz": 3}, "foldz"),
])
def test_bad_study_files_are_user_errors(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(text))
    with pytest.raises(UserError, match=message):
        load_study(str(path))


def test_an_unknown_study_name_lists_the_known_ones():
    with pytest.raises(UserError, match="cpu-sample"):
        load_study("no-such-study")


@pytest.mark.slow
def test_a_cpu_hog_beside_a_training_flags_the_run(tiny_cfg):
    """Two busy loops (one per core here) beside a tiny training: its epochs record others' share of the
    machine above the threshold and the report's flag names the reason."""
    from lk_segment.commands.train import train
    from lk_segment.comparison.records import record as read_record
    from lk_segment.tracking import client

    def hog() -> int:
        """A busy loop that is not this process's child (a shell starts it and exits): another process of the
        machine, as a child would count as the training's own (its loader workers are)."""
        started = subprocess.run(["sh", "-c", f"'{sys.executable}' -c 'while True: pass' >/dev/null 2>&1 & echo $!"],
                                 capture_output=True, text=True, check=True)
        return int(started.stdout.strip())

    hogs = [hog() for _ in range(2)]
    try:
        time.sleep(0.5)
        result = train(tiny_cfg("3x3", "trainer.max_epochs=2"))
    finally:
        for pid in hogs:
            os.kill(pid, signal.SIGKILL)
    run = read_record(client(), client().get_run(result["run_id"]))
    others = run.curves["perf/others_cpu_share"]
    assert len(others) == 2 and max(others) > names.SHARED_MACHINE_THRESHOLD
    assert len(run.curves["perf/train_time_cum_s"]) == 2
    assert run.curves["perf/train_time_cum_s"][1] == pytest.approx(sum(run.curves["perf/epoch_time_s"]))
    assert "other processes used" in shared_machine(run)


def test_the_study_report_from_its_runs_answers_with_intervals_costs_and_time_to_accuracy(tmp_path):
    """The report as `make study` writes it, from runs made up as MLflow would give them (no training: the whole
    command, trained and resumed, is tests/commands/test_commands.py's `make study`)."""
    from types import SimpleNamespace

    from lk_segment.comparison.study import StudyConfig
    from lk_segment.comparison.study_report import render_study_report, report_places

    study = StudyConfig(name="tiny_study", variants=["3x3", "5x5"], folds=2, resamples=300)
    records = [made_run("3x3", 0), made_run("3x3", 1), made_run("5x5", 0, epoch_s=20.0, shift=0.01),
               made_run("5x5", 1, others=0.5, epoch_s=20.0, shift=0.01)]  # 5x5's fold 1 shared the machine
    parent = SimpleNamespace(info=SimpleNamespace(run_id="parent-id"), data=SimpleNamespace(
        params={"study.overrides": "trainer.max_epochs=4", "bench.machine": "CPU X"},
        metrics={"bench/step_ms/3x3": 100.0, "bench/step_ms/5x5": 250.0}))
    report = render_study_report(study, parent, records, tmp_path / "report")
    text = report["markdown"].read_text()
    assert "## The answer" in text and "Against 3x3" in text
    # its report's folder too, then the overrides its file (not in configs/study/) does not give
    assert f'make study STUDY=tiny_study STUDY_OUT={tmp_path / "report"} ARGS="trainer.max_epochs=4"\n' in text
    assert report_places(study, Path("reports/study-tiny_study"), Path("reports/study-tiny_study/results.md")) == []
    assert report_places(study, Path("docs/results"), Path("docs/results.md")) == [
        "STUDY_OUT=docs/results", "STUDY_MD=docs/results.md"]
    assert "all at once (Bonferroni)" in text and "Read together, as" in text
    assert "| 5x5 | 128 (8) |" in text  # every photo of the 8 cars, each validated once
    assert "+0.0100 [+0.0100, +0.0100] | better |" in text  # a constant shift: the interval is the shift
    assert "[95% CI]" in text and "## Time to accuracy" in text and "| 5x5 | 250 | 2.50 |" in text  # x 3x3
    assert "Runs left out of the time columns (1)" in text and "5x5 fold 1 (`5x5-1`)" in text
    assert (tmp_path / "report" / "time_to_accuracy.png").stat().st_size > 0
    assert len((tmp_path / "report" / "runs.csv").read_text().splitlines()) == 1 + 4


def made_run(variant: str, fold: int, machine: str = "CPU X", others: float = 0.01, epoch_s: float = 10.0,
             dice: tuple[float, ...] = (0.8, 0.9, 0.95, 0.96), shift: float = 0.0) -> RunRecord:
    """A run record as MLflow would give it: curves per epoch, the machine, per-photo scores of its fold's cars."""
    epochs = len(dice)
    curves = {"val/dice": list(dice), "perf/train_time_cum_s": [epoch_s * (i + 1) for i in range(epochs)],
              "perf/others_cpu_share": [others] * epochs, "perf/load_avg_1m": [2.0] * epochs}
    photos = {f"car{c}_{v:02d}.jpg": (f"car{c}", 0.95 + 0.001 * c + shift) for c in range(fold * 4, fold * 4 + 4)
              for v in range(16)}
    params = {"trainer.device_name": machine, "trainer.precision": "32", "model/params": "100", "model/gflops": "1"}
    return RunRecord(variant, fold, f"{variant}-{fold}", max(dice), epoch_s, 1.0, 100.0, "CPU RSS", params, {},
                     curves, fold=fold, photo_scores=photos)


def test_a_study_of_the_reference_alone_compares_nothing_and_says_so():
    """A pilot (variants: [3x3]) tells how far the reference trains; its answer claims no comparison."""
    from lk_segment.comparison.study import StudyConfig
    from lk_segment.comparison.study_report import answer, results

    study = StudyConfig(name="pilot", variants=["3x3"], folds=2, resamples=100)
    text = answer(study, results(study, [made_run("3x3", 0), made_run("3x3", 1)]), {})
    assert text.startswith("3x3 alone (mean per-photo full-resolution Dice ") and "nothing compared" in text
    assert "bootstrap" not in text and "interval" not in text and "Against" not in text
    assert "Still climbing at the end of training" in text  # 0.95 -> 0.96 in its last quarter: still said


def test_the_answer_names_the_variant_ahead_at_equal_time_when_it_is_not_the_reference():
    from lk_segment.comparison.study import StudyConfig
    from lk_segment.comparison.study_report import answer, results

    study = StudyConfig(name="s", variants=["3x3", "5x5"], folds=2, resamples=100)
    fast = [made_run("5x5", fold, epoch_s=10.0) for fold in (0, 1)]  # 4 epochs in 40 s
    text = answer(study, results(study, [made_run("3x3", 0, epoch_s=20.0), made_run("3x3", 1, epoch_s=20.0), *fast]),
                  {})
    assert "Given only the fastest variant's training time (0.7 min), 5x5 reaches the highest val/dice (0.9600 " \
           "against 3x3's 0.9000" in text  # 3x3 had finished 2 of its epochs by then
    text = answer(study, results(study, [made_run("3x3", 0), made_run("3x3", 1), *fast]), {})
    assert "Given only" not in text  # the reference ahead (tied here): nothing to add
    worse = [made_run("5x5", fold, shift=-0.01) for fold in (0, 1)]
    text = answer(study, results(study, [made_run("3x3", 0), made_run("3x3", 1), *worse]), {"3x3": 1.0, "5x5": 0.5})
    assert "worse: 5x5" in text and "No other variant is as accurate as 3x3" in text and "cheapest" not in text


def test_costs_keep_machines_apart_and_leave_shared_runs_out():
    from lk_segment.comparison.study import StudyConfig
    from lk_segment.comparison.study_report import equal_time, machines, results

    study = StudyConfig(name="s", variants=["3x3", "5x5"], folds=2, resamples=500)
    records = [made_run("3x3", 0), made_run("3x3", 1, others=0.5),  # fold 1 shared the machine
               made_run("5x5", 0, epoch_s=20.0, shift=0.01), made_run("5x5", 1, machine="GPU Y", epoch_s=2.0,
                                                                      shift=0.01)]
    found = results(study, records)
    assert [r.run_id for r in found["3x3"].clean] == ["3x3-0"]
    assert machines(found) == {"CPU X, precision 32": ["3x3", "5x5"], "GPU Y, precision 32": ["5x5"]}
    d = found["5x5"].difference
    assert d.diff == pytest.approx(0.01) and d.images == 128 and d.cars == 8 and d.verdict == "better"
    # the time curves are the CPU's (most clean runs): 3x3's clean fold 0 (40 s in all), 5x5's fold 0 (80 s);
    # 5x5's GPU run is not mixed in. At equal time (40 s) 5x5 has finished 2 of its 4 epochs.
    assert found["5x5"].curve_times == [20.0, 40.0, 60.0, 80.0]
    budget, at = equal_time(found)
    assert budget == pytest.approx(40.0) and at == {"3x3": pytest.approx(0.96), "5x5": pytest.approx(0.9)}
