"""Load: two trainings started at once on one SQLite store both finish with all their metrics
and checkpoints, while an MLflow UI (bound to 127.0.0.1) serves that store.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import free_port, tiny_overrides

EPOCH_METRICS = ["train/loss", "val/loss", "val/dice", "val/iou", "perf/epoch_time_s"]


def _get(url: str) -> int:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status


def _search(url: str) -> str:
    """One experiments search through the UI: "ok", or what went wrong (an HTTP error, no answer, not JSON)."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.load(response)
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}"
    except (OSError, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return "ok" if isinstance(body.get("experiments", []), list) else f"unexpected answer {body}"


@pytest.mark.slow
def test_two_trainings_at_once_on_one_store_while_the_ui_serves_it(tiny_root, workdir):
    uri = os.environ["MLFLOW_TRACKING_URI"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    port = free_port()
    # as make ui starts it: no MLflow job runner (eight more interpreters, nothing here submits a job)
    ui = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
                           "--default-artifact-root", str(workdir / "mlruns" / "artifacts"),
                           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                          env={**env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          start_new_session=True)  # its own process group: its workers go with it
    trainings = []
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while True:
            assert ui.poll() is None, "mlflow ui exited"
            try:
                if _get(f"{base}/health") == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "mlflow ui did not answer"
            time.sleep(0.5)

        overrides = tiny_overrides(tiny_root, "model.depth=2", "data.limit_images=32", "data.batch_size=4",
                                   "trainer.max_epochs=2")
        trainings = [subprocess.Popen([sys.executable, "-m", "lk_segment", "train", "-v", "3x3", *overrides,
                                       f"seed={seed}"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True) for seed in (1, 2)]
        answers = []
        deadline = time.monotonic() + 600
        while any(t.poll() is None for t in trainings) and time.monotonic() < deadline:
            answers.append(_search(f"{base}/ajax-api/2.0/mlflow/experiments/search?max_results=10"))
            time.sleep(0.5)
        assert all(t.poll() is not None for t in trainings), "the trainings did not end within 10 minutes"
        outputs = [t.communicate() for t in trainings]
        answers.append(_search(f"{base}/ajax-api/2.0/mlflow/experiments/search?max_results=10"))
    finally:
        for proc in trainings:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
        try:
            os.killpg(ui.pid, signal.SIGKILL)  # the server and every worker it started
        except ProcessLookupError:
            pass
        ui.wait(timeout=30)

    for t, (_, err) in zip(trainings, outputs, strict=True):
        assert t.returncode == 0, err[-3000:]
    assert len(answers) >= 2 and [a for a in answers if a != "ok"] == []  # the UI answered all along
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("test").experiment_id])
    assert len(runs) == 2 and {r.data.tags["seed"] for r in runs} == {"1", "2"}
    for run in runs:
        assert run.info.status == "FINISHED"
        for key in EPOCH_METRICS:
            assert len(client.get_metric_history(run.info.run_id, key)) == 2, key
        ckpts = {a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")}
        assert "checkpoints/last.ckpt" in ckpts and any(p.startswith("checkpoints/best-") for p in ckpts)
        assert (workdir / "checkpoints" / run.info.run_id / "last.ckpt").is_file()
