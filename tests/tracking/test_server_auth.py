"""`make server AUTH=1`, allowed hosts, and what is refused: nobody reaches the store unasked
(lk_segment/commands/server.py)."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from lk_segment.commands.cli import main
from lk_segment.commands.server import allowed_hosts
from lk_segment.commands.train import train
from lk_segment.config import load_config
from lk_segment.errors import UserError
from lk_segment.tracking import prepare_store
from tests.conftest import free_port, start_ui, stop_ui, tiny_overrides

REPO = Path(__file__).resolve().parents[2]
ADMIN_PASSWORD = "correct-horse-battery"


def test_listening_beyond_loopback_without_auth_is_refused_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for args in (["ui", "--host", "0.0.0.0"], ["ui", "--server", "--host", "192.168.1.5"]):
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "without authentication" in err and "AUTH=1" in err and "INSECURE=1" in err
    assert not (tmp_path / "mlruns").exists()  # refused before anything is written


def test_a_first_start_with_auth_needs_the_admin_password(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_AUTH_ADMIN_PASSWORD", raising=False)
    assert main(["ui", "--server", "--auth", "--port", str(free_port())]) == 2
    assert "set MLFLOW_AUTH_ADMIN_PASSWORD" in capsys.readouterr().err


def test_allowed_hosts_are_named_never_everyone():
    hosts = allowed_hosts("0.0.0.0", 5000).split(",")
    assert "*" not in hosts and {"localhost:5000", "127.0.0.1:5000", "127.0.0.1"} <= set(hosts)
    assert all("*" not in h for h in hosts)
    assert allowed_hosts("0.0.0.0", 5000, "mlflow.example.org") == "mlflow.example.org"
    with pytest.raises(UserError, match="DNS-rebinding"):
        allowed_hosts("0.0.0.0", 5000, "*")
    assert allowed_hosts("0.0.0.0", 5000, "*", insecure=True) == "*"


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_server_passes_auth_insecure_and_allowed_hosts():
    def line(*args: str) -> str:
        out = subprocess.run(["make", "-n", "server", *args], cwd=REPO, capture_output=True, text=True,
                             timeout=60).stdout
        return out[out.index("lk-segment ui"):]

    assert "--auth" in line("AUTH=1") and "--auth" not in line()
    assert "--insecure" in line("INSECURE=1") and "--insecure" not in line()
    assert '--allowed-hosts "a.example,b.example"' in line("ALLOWED_HOSTS=a.example,b.example")
    assert "--workers 2" in line("WORKERS=2") and "--workers" not in line()


@pytest.mark.parametrize(("argv", "workers"), [([], "1"), (["--server"], "4"), (["--workers", "3"], "3"),
                                               (["--server", "--workers", "2"], "2")])
def test_the_ui_runs_one_server_process_a_tracking_server_mlflows_four(argv, workers, workdir, monkeypatch, capsys):
    """One user's UI needs one process (each imports MLflow: seconds to start, memory); a server for several
    machines keeps MLflow's default. What is executed is read, not run."""
    executed = []
    monkeypatch.setattr("os.execv", lambda path, cmd: executed.append(cmd))
    main(["ui", "--port", "5999", *argv])
    (cmd,) = executed
    assert cmd[1:4] == ["-m", "mlflow", "server"] and cmd[cmd.index("--workers") + 1] == workers
    assert cmd[cmd.index("--port") + 1] == "5999"
    assert "lk-segment: open http://127.0.0.1:5999" in capsys.readouterr().out


@pytest.mark.parametrize(("users", "server_gets"), [(None, "false"), ("true", "true")])
def test_the_ui_starts_no_mlflow_job_runner_unless_the_user_asks(users, server_gets, workdir, monkeypatch):
    """MLflow's server starts eight more interpreters for GenAI jobs nothing here submits, unless told not to."""
    monkeypatch.setenv("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", users or "")  # restored after the test, whatever
    if users is None:                                                    # the command sets in its environment
        monkeypatch.delenv("MLFLOW_SERVER_ENABLE_JOB_EXECUTION")
    seen = []
    monkeypatch.setattr("os.execv", lambda path, cmd: seen.append(os.environ.get("MLFLOW_SERVER_ENABLE_JOB_EXECUTION")))
    main(["ui", "--port", "5999"])
    assert seen == [server_gets]


def _status(url: str, user: str | None = None, password: str | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url)
    if user:
        request.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.mark.slow
def test_with_auth_a_request_needs_credentials_and_a_training_with_them_lands(tiny_root, tmp_path_factory,
                                                                             monkeypatch):
    served = tmp_path_factory.mktemp("auth_store")
    port = free_port()
    monkeypatch.setenv("MLFLOW_AUTH_ADMIN_PASSWORD", ADMIN_PASSWORD)  # the first start creates the admin
    proc, _ = start_ui(["--server", "--auth"], served, port)
    try:
        url = f"http://127.0.0.1:{port}"
        api = f"{url}/api/2.0/mlflow/experiments/search?max_results=1"
        assert _status(api)[0] == 401
        assert _status(api, "admin", "wrong-password-123")[0] == 401
        assert _status(api, "admin", ADMIN_PASSWORD)[0] == 200
        monkeypatch.chdir(tmp_path_factory.mktemp("auth_client"))
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        with pytest.raises(UserError, match="answered 401: credentials are needed"):
            prepare_store("secured")
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "wrong-password-123")
        with pytest.raises(UserError, match="answered 401: credentials were refused"):
            prepare_store("secured")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", ADMIN_PASSWORD)
        result = train(load_config("3x3", tiny_overrides(tiny_root, "experiment=secured")))
        run = MlflowClient(url).get_run(result["run_id"])
        assert run.info.status == "FINISHED"
        uploaded = list((served / "mlruns" / "artifacts").rglob("last.ckpt"))
        assert len(uploaded) == 1 and result["run_id"] in str(uploaded[0])  # through the server, on its disk
    finally:
        stop_ui(proc)
    assert (served / "mlruns" / "basic_auth.db").is_file()
    assert (served / "mlruns" / ".flask_secret_key").stat().st_mode & 0o077 == 0  # the owner's alone
