"""`make server` / `make ui`: the page they print, and trainings that log through the server."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from lk_segment.commands.cli import main
from lk_segment.commands.train import train
from lk_segment.config import load_config
from lk_segment.errors import UserError
from lk_segment.tracking import EXPERIMENT_KIND_TAG, TRAINING_KIND, VIEW_KEY, VIEW_TAG, prepare_store
from tests.conftest import copy_repository, free_port, start_ui, stop_ui, tiny_overrides

pytestmark = pytest.mark.slow  # each test starts an MLflow server


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`make server PORT=<port> WORKERS=1` as a user types it, from the root of a copy of the repository, over the
    copy's default store; one for the module (a start takes seconds); yields (url, the copy's folder). Each test logs to
    an experiment of its own and reads only that one."""
    served = copy_repository(tmp_path_factory.mktemp("served") / "repo")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MAKEFLAGS", "MAKELEVEL")}
    proc, first = start_ui([], served, port, cmd=["make", "server", f"PORT={port}", "WORKERS=1"], env=env)
    assert first.startswith(f"lk-segment: open http://127.0.0.1:{port}")
    yield f"http://127.0.0.1:{port}", served
    stop_ui(proc)


def test_a_training_against_the_server_uploads_its_artifacts_through_it(server, tiny_root, tmp_path_factory,
                                                                         monkeypatch):
    url, served = server
    work = tmp_path_factory.mktemp("client")  # another "machine": its own folder, no access to the store
    monkeypatch.chdir(work)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    result = train(load_config("3x3", tiny_overrides(tiny_root, "experiment=multi")))
    client = MlflowClient(url)
    run = client.get_run(result["run_id"])
    assert run.info.status == "FINISHED" and run.info.artifact_uri.startswith("mlflow-artifacts:")
    assert client.get_experiment(run.info.experiment_id).tags[EXPERIMENT_KIND_TAG] == TRAINING_KIND
    uploaded = [p for p in (served / "mlruns" / "artifacts").rglob("last.ckpt") if result["run_id"] in str(p)]
    assert len(uploaded) == 1  # on the server's disk
    assert not (work / "mlruns").exists()  # nothing of the store on the client's


def test_an_experiment_with_local_artifacts_is_refused_against_a_server(server, monkeypatch):
    url, _ = server
    local = "file:///nowhere/mlruns/artifacts"
    MlflowClient(url).create_experiment("local", artifact_location=local)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    with pytest.raises(UserError, match="other machines cannot write"):
        prepare_store("local")


def test_make_ui_prints_the_training_runs_page(tiny_root, workdir, monkeypatch, capsys):
    """What ``make ui`` prints and the shared view it writes, read before it becomes the server (the server
    answering that page: test_make_ui_as_typed_... below and tests/tracking/test_browser.py)."""
    result = train(load_config("3x3", tiny_overrides(tiny_root)))
    experiment_id = MlflowClient(f"sqlite:///{workdir}/mlruns/mlflow.db").get_run(result["run_id"]).info.experiment_id
    executed = []
    monkeypatch.setattr("os.execv", lambda path, cmd: executed.append(cmd))
    monkeypatch.setenv("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "")  # restored after the test: the command sets it
    main(["ui", "--experiment", "test", "--port", "5999"])
    first = capsys.readouterr().out.splitlines()[0]
    url = re.search(r"open (\S+)", first).group(1)
    assert url.startswith(f"http://127.0.0.1:5999/#/experiments/{experiment_id}/runs?")
    assert "workflowType=machine_learning" in url and f"viewStateShareKey={VIEW_KEY}" in url
    view = json.loads(MlflowClient(f"sqlite:///{workdir}/mlruns/mlflow.db").get_experiment(experiment_id).tags[VIEW_TAG])
    assert view["orderByKey"] == "metrics.`val/dice_full_best`" and not view["orderByAsc"]
    assert {"metrics.`val/dice`", "metrics.`val/dice_full_best`"} <= set(view["selectedColumns"])
    (cmd,) = executed  # then it becomes MLflow's server over this store
    assert cmd[1:4] == ["-m", "mlflow", "server"]
    assert cmd[cmd.index("--backend-store-uri") + 1] == f"sqlite:///{workdir}/mlruns/mlflow.db"


@pytest.mark.slow
def test_make_ui_as_typed_opens_the_newest_experiment_of_the_store_the_user_named(repo_copy, tmp_path):
    """``make ui`` from the repository root honours MLFLOW_TRACKING_URI as make train does, and prints first
    the page of the experiment whose latest run started last (not a fixed name that may not exist)."""
    uri = f"sqlite:///{tmp_path}/elsewhere/mlflow.db"
    (tmp_path / "elsewhere").mkdir()
    client = MlflowClient(uri)
    older = client.create_experiment("older", artifact_location=(tmp_path / "elsewhere" / "a").as_uri())
    newer = client.create_experiment("newer", artifact_location=(tmp_path / "elsewhere" / "b").as_uri())
    client.create_run(newer)  # the newer experiment's run first: the older one's run is the latest
    time.sleep(0.01)
    client.create_run(older)
    client.create_experiment("empty", artifact_location=(tmp_path / "elsewhere" / "c").as_uri())
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    proc, first = start_ui([], repo_copy, port, cmd=["make", "ui", f"PORT={port}"], env=env)
    try:
        assert f"/#/experiments/{older}/runs?" in first
        request = urllib.request.Request(f"http://127.0.0.1:{port}/ajax-api/2.0/mlflow/experiments/search",
                                         data=json.dumps({"max_results": 10}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as r:
            names = {e["name"] for e in json.load(r)["experiments"]}
        assert {"older", "newer", "empty"} <= names  # the UI serves the store the user named
    finally:
        stop_ui(proc)
    assert not (repo_copy / "mlruns" / "mlflow.db").exists()


def test_a_run_killed_on_one_machine_resumes_on_another_through_the_server(server, tiny_root, tmp_path_factory):
    from tests.training.test_resume_and_crashes import EPOCH_METRICS, STOPPING_TRAINING, _overrides, _wait_for

    url, _ = server
    env = {**os.environ, "MLFLOW_TRACKING_URI": url,
           "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    overrides = _overrides(tiny_root, "trainer.max_epochs=2", "experiment=resumed_elsewhere")
    first, second = tmp_path_factory.mktemp("machine_a"), tmp_path_factory.mktemp("machine_b")
    proc = subprocess.Popen([sys.executable, "-c", STOPPING_TRAINING, "sigkill", *overrides], cwd=first, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_for(first / "mid-epoch", proc)  # epoch 0's checkpoints are written (and uploaded) by then
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    client = MlflowClient(url)
    (killed,) = client.search_runs([client.get_experiment_by_name("resumed_elsewhere").experiment_id])
    run_id = killed.info.run_id
    assert killed.info.status == "RUNNING"
    assert "checkpoints/last.ckpt" in {a.path for a in client.list_artifacts(run_id, "checkpoints")}

    resumed = subprocess.run([sys.executable, "-m", "lk_segment", "train", "-v", "3x3", *overrides,
                              f"resume={run_id}"], cwd=second, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert client.get_run(run_id).info.status == "FINISHED"
    assert len(client.search_runs([killed.info.experiment_id])) == 1  # the same run went on
    for key in EPOCH_METRICS:
        steps = [m.step for m in client.get_metric_history(run_id, key)]
        assert len(steps) == len(set(steps)) == 2, key  # each epoch once
