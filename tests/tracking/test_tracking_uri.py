"""MLflow's fluent API is pointed at a store for one block only: nothing of it outlives the call."""

import os

import mlflow
import pytest

from lk_segment.tracking import fluent_store
from lk_segment.training.run_logger import RunLogger


@pytest.fixture
def no_uri_in_environment(monkeypatch):
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.delenv(name, raising=False)


def test_inside_the_block_tracking_and_registry_follow_the_store(tmp_path, no_uri_in_environment):
    store = f"sqlite:///{tmp_path}/a.db"
    with fluent_store(store) as uri:
        assert uri == store
        assert mlflow.get_tracking_uri() == store and mlflow.get_registry_uri() == store


@pytest.mark.parametrize("ends", ["normally", "with an error"])
def test_after_the_block_the_environment_a_later_caller_names_wins_again(tmp_path, monkeypatch,
                                                                         no_uri_in_environment, ends):
    before = mlflow.get_tracking_uri()
    with pytest.raises(RuntimeError) if ends == "with an error" else _nothing():
        with fluent_store(f"sqlite:///{tmp_path}/a.db"):
            if ends == "with an error":
                raise RuntimeError("inside the block")
    assert mlflow.get_tracking_uri() == before
    assert "MLFLOW_TRACKING_URI" not in os.environ and "MLFLOW_REGISTRY_URI" not in os.environ

    later = f"sqlite:///{tmp_path}/b.db"  # a served model's test, say, names its store by the environment
    monkeypatch.setenv("MLFLOW_TRACKING_URI", later)
    assert mlflow.get_tracking_uri() == later and mlflow.get_registry_uri() == later


def test_a_uri_the_user_set_in_the_environment_is_there_after_the_block(tmp_path, monkeypatch):
    users = f"sqlite:///{tmp_path}/users.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", users)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    with fluent_store(f"sqlite:///{tmp_path}/a.db"):
        pass
    assert os.environ["MLFLOW_TRACKING_URI"] == users and "MLFLOW_REGISTRY_URI" not in os.environ
    assert mlflow.get_tracking_uri() == users


def test_a_training_runs_logger_leaves_the_process_where_it_was(tmp_path, monkeypatch, no_uri_in_environment):
    """Lightning's MLFlowLogger points the process-wide URI at its store on its first use and leaves it."""
    before = mlflow.get_tracking_uri()
    logger = RunLogger(experiment_name="t", tracking_uri=f"sqlite:///{tmp_path}/a.db")
    assert logger.run_id and logger.experiment.get_run(logger.run_id).info.experiment_id == logger.experiment_id
    assert mlflow.get_tracking_uri() == before and "MLFLOW_TRACKING_URI" not in os.environ


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
