"""The commands that train several runs, run as a user types them (see test_commands.py): ``make compare``
then ``make report``, ``make study`` (killed and resumed), ``make bench``. A module of their own, so that a
second test worker runs them beside test_commands.py's."""

from __future__ import annotations

import csv
import json
import shutil

import pytest

from tests.commands.test_commands import make, tiny_args

pytestmark = pytest.mark.skipif(shutil.which("make") is None or shutil.which("git") is None,
                                reason="needs make and git")


@pytest.mark.slow
def test_make_compare_then_make_report_from_mlflow_alone(copy, client, tiny_root):
    make(copy, ["make", "compare", "VARIANTS=3x3 1x5", "SEEDS=1", f"ARGS={tiny_args(tiny_root)}"])
    experiment = client.get_experiment_by_name("compare")  # EXPERIMENT=compare, the default
    runs = client.search_runs([experiment.experiment_id])
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(runs) == 3 and sorted(r.data.tags["variant"] for r in children) == ["1x5", "3x3"]
    assert all(r.info.status == "FINISHED" for r in children)
    report = copy / "reports" / "compare"
    assert (report / "results.md").is_file()

    shutil.rmtree(report)
    make(copy, ["make", "report", "EXPERIMENT=compare"])
    with open(report / "results.csv", newline="") as f:
        variants = {row["variant"] for row in csv.DictReader(f)}
    assert variants == {"3x3", "1x5"} and (report / "results.md").is_file()


@pytest.mark.slow
def test_make_study_of_a_study_file_in_the_repository(copy, client, tiny_root, monkeypatch):
    """``make study STUDY=<file.yaml>`` (README: a study file kept anywhere), the smallest study there is, its
    data named by a variable as cpu-sample's is; then run again."""
    monkeypatch.setenv("LK_TINY_STUDY_ROOT", str(tiny_root))
    overrides = [o for o in tiny_args(tiny_root).split() if not o.startswith("data.root=")]
    (copy / "tiny-study.yaml").write_text(json.dumps({  # JSON is YAML
        "name": "tiny_study", "variants": ["3x3", "1x5"], "reference": "3x3", "folds": 2,
        "data_root_env": "LK_TINY_STUDY_ROOT", "overrides": overrides, "bench_turns": 1, "erf": False,
        "resamples": 200}))
    make(copy, ["make", "study", "STUDY=tiny-study.yaml"])
    experiment = client.get_experiment_by_name("tiny_study")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 4 and all(r.info.status == "FINISHED" for r in children)
    assert sorted((r.data.tags["variant"], r.data.tags["fold"]) for r in children) == [
        ("1x5", "0"), ("1x5", "1"), ("3x3", "0"), ("3x3", "1")]
    assert {"bench/step_ms/3x3", "bench/step_ms/1x5"} <= set(parents[0].data.metrics)
    text = (copy / "reports" / "study-tiny_study" / "results.md").read_text()  # its default --out
    assert "## The answer" in text and "Against 3x3" in text
    assert "\nmake study STUDY=tiny-study.yaml\n" in text  # regenerated as it was typed: the file, no ARGS
    assert "| 1x5 | 64 (4) |" in text and "[95% CI]" in text  # every photo of the 4 cars, each validated once
    assert str(tiny_root) not in text  # the data by its variable, never a machine's path

    # run again: the finished trainings and the step times are kept, the report rewritten (a run a kill left
    # RUNNING is retrained by the same scheduler: tests/comparison/test_compare.py)
    (copy / "reports" / "study-tiny_study" / "results.md").unlink()
    output = make(copy, ["make", "study", "STUDY=tiny-study.yaml"])
    assert "4 already finished, 0 to train" in output and "clean step times already measured" in output
    assert (copy / "reports" / "study-tiny_study" / "results.md").is_file()
    assert len(client.search_runs([experiment.experiment_id])) == 5  # no run added


@pytest.mark.slow
def test_make_bench_writes_bench_json_and_an_mlflow_run(copy, client, tiny_root):
    # the overrides first: --dw-shapes takes every word after it
    args = (f"data.root={tiny_root} model.width=4 model.depth=2 --variants 3x3 --height 64 --steps 1 --warmup 1 "
            "--pair-turns 1 --settings 32 --loader-images 32 --matmul-size 64 --copy-mb 4 --dw-kernels 3 "
            "--dw-shapes 1x2x16x16")
    make(copy, ["make", "bench", f"ARGS={args}"])
    results = json.loads((copy / "bench.json").read_text())  # BENCH_OUT=bench.json
    assert results["steps"]["3x3"]["project_32"]["step_ms"] > 0
    (run,) = client.search_runs([client.get_experiment_by_name("bench").experiment_id])
    assert run.info.status == "FINISHED" and run.data.metrics["steps/3x3/ratio_32"] > 0
