"""What a training run records beyond its metrics: system metrics, the learning rate, its data."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from lk_segment.commands.train import train
from lk_segment.config import load_config
from lk_segment.data.carvana import list_samples, split_by_car
from lk_segment.tracking import tracking_uri
from lk_segment.training.run_records import log_datasets, split_digest
from tests.conftest import tiny_overrides


def dataset_inputs(client: MlflowClient, run_id: str) -> dict[str, object]:
    """{context: dataset} of a run's dataset inputs."""
    inputs = client.get_run(run_id).inputs.dataset_inputs
    return {next(t.value for t in i.tags if t.key == "mlflow.data.context"): i for i in inputs}


def test_the_split_is_logged_as_two_datasets_whose_digests_follow_the_split(tiny_root, workdir):
    client = MlflowClient(tracking_uri())
    samples = list_samples(tiny_root)
    runs = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        train_set, val_set = split_by_car(samples, 0.25, seed)
        run_id = client.create_run(client.create_experiment(name)).info.run_id
        log_datasets(client, run_id, str(tiny_root), train_set, val_set)
        runs[name] = (run_id, train_set, val_set)

    run_a, train_a, val_a = runs["a"]
    inputs = dataset_inputs(client, run_a)
    assert set(inputs) == {"training", "validation"}
    tags = {t.key: t.value for t in inputs["validation"].tags}
    assert tags["photos"] == str(len(val_a)) and tags["cars"] == str(len({s.car for s in val_a}))
    assert inputs["training"].dataset.digest == split_digest(train_a)
    assert inputs["training"].dataset.digest != inputs["validation"].dataset.digest
    assert str(tiny_root) in inputs["training"].dataset.source
    # the same split gives the same digests; another split, other ones
    same, other = dataset_inputs(client, runs["b"][0]), dataset_inputs(client, runs["c"][0])
    assert same["validation"].dataset.digest == inputs["validation"].dataset.digest
    assert other["validation"].dataset.digest != inputs["validation"].dataset.digest
    cars = client.download_artifacts(run_a, "val_cars.txt")
    assert open(cars).read().split() == sorted({s.car for s in val_a})


def test_the_digest_sees_a_file_that_changed_size(tiny_root, tmp_path):
    samples = list_samples(tiny_root)[:3]
    before = split_digest(samples)
    copy = tmp_path / "train"
    copy.mkdir()
    from lk_segment.data.carvana import Sample

    moved = [Sample(copy / s.image.name, s.mask) for s in samples]
    for s, m in zip(samples, moved, strict=True):
        m.image.write_bytes(s.image.read_bytes())
    assert split_digest(moved) == before  # names and sizes, not the folder
    moved[1].image.write_bytes(samples[1].image.read_bytes() + b"\0")
    assert split_digest(moved) != before


@pytest.mark.slow
def test_a_training_run_has_system_metrics_the_learning_rate_per_step_and_its_data(tiny_root, workdir):
    cfg = load_config("3x3", tiny_overrides(tiny_root, "trainer.max_epochs=2", "trainer.log_every_n_steps=1",
                                            "tracking.system_metrics_interval_s=0.2"))
    result = train(cfg)
    client = MlflowClient(tracking_uri())
    run = client.get_run(result["run_id"])
    assert run.info.status == "FINISHED"
    for key in ("system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"):
        assert key in run.data.metrics, sorted(run.data.metrics)
        assert len(client.get_metric_history(result["run_id"], key)) >= 2  # sampled, not logged once
    lr = client.get_metric_history(result["run_id"], "train/lr")
    steps = sorted(m.step for m in lr)
    assert steps == list(range(len(steps))) and len(steps) >= 4  # every optimizer step (log_every_n_steps=1)
    values = [m.value for m in sorted(lr, key=lambda m: m.step)]
    assert max(values) <= cfg.optim.lr * (1 + 1e-6) and values[-1] < max(values)  # warm-up, then decay
    assert set(dataset_inputs(client, result["run_id"])) == {"training", "validation"}
    assert "val_cars.txt" in {a.path for a in client.list_artifacts(result["run_id"])}


@pytest.mark.slow
def test_system_metrics_can_be_turned_off(tiny_root, workdir):
    result = train(load_config("3x3", tiny_overrides(tiny_root, "tracking.system_metrics_interval_s=0",
                                                     "trainer.log_every_n_steps=1")))
    metrics = MlflowClient(tracking_uri()).get_run(result["run_id"]).data.metrics
    assert not any(k.startswith("system/") for k in metrics) and "train/lr" in metrics
