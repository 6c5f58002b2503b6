"""Shared fixtures and helpers. Every test passes alone and in any order (CI shuffles it).

Isolation, one way everywhere:
- ``workdir`` (fixture): the test runs in a fresh ``tmp_path`` with its own MLflow store
  (``MLFLOW_TRACKING_URI`` = ``store_uri(tmp_path)``), so its runs, checkpoints and cache are
  its own. Both are restored after the test.
- ``use_working_folder(mp, path)``: the same for any folder and any ``pytest.MonkeyPatch``;
  module- and session-scoped fixtures use it inside ``with pytest.MonkeyPatch.context() as mp:``
  while they train, and tests that read such a fixture's store enter it again with their own
  ``monkeypatch``. A fixture shared by several tests is never changed by one of them: a test
  that must change it works on a copy.
- ``store_uri(path)``: the MLflow URI of ``path``'s store, for an ``MlflowClient``.
- ``free_port()``: a TCP port free on 127.0.0.1, for a server a test starts.

Data: ``tiny_root`` is a small synthetic Carvana (generated once per session);
``tiny_overrides(root, ...)`` the config overrides of a seconds-long training on it, and
``tiny_cfg(variant, ...)`` that config, loaded, in a ``workdir``;
``requires_carvana`` skips a test unless ``LK_CARVANA_ROOT`` names the real sample.
``tiny_comparison`` is one finished ``lk-segment compare`` (four trainings), read-only;
``trained_run`` one finished tiny training, read-only, and ``trained_copy`` a copy of it to write to;
``real_run`` one short training on the real photos, read-only.

``make test`` runs the tests in pytest-xdist workers, one per core, whole modules to a worker (``--dist
loadscope``: a module's fixtures are made once). The session fixtures above are made once for all workers
(``made_once``: the first worker to need one makes it under a file lock, the others read it); each worker's
torch, and what its tests start, run on its share of the cores.
"""

from __future__ import annotations

import os
import pickle
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import closing
from pathlib import Path

import pytest

from lk_segment.config import load_config
from lk_segment.data.synthetic import generate
from lk_segment.device import usable_cpus

MAX_WORKERS = 4  # make test's pytest-xdist workers: one per core, at most this many
XDIST_WORKER: list[bool] = []  # [True] in a worker of pytest-xdist (set by pytest_configure)

TINY_CARS = 4  # 4 cars x 16 views = 64 images
TINY_SIZE = (240, 160)  # width, height of the generated photos (1/8 of Carvana's)


def store_uri(path: Path) -> str:
    """The MLflow tracking URI of the store a working folder ``path`` holds."""
    return f"sqlite:///{path}/mlruns/mlflow.db"


def store_client(uri: str):
    """An MLflow client of the store ``uri`` for runs and registry alike: a client given no registry URI reads
    the registry of whatever store a test before it pointed MLflow's process-wide registry URI at."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri, registry_uri=uri)


_MIGRATED_STORE: list[Path] = []  # one per test process: an empty store MLflow has already migrated


def migrated_store() -> Path:
    """An empty MLflow SQLite store with MLflow's schema migrations already run (made once per process):
    a new store is a copy of it, not another run of the migrations (seconds each, some 40 stores a suite)."""
    if not _MIGRATED_STORE:
        from mlflow.tracking import MlflowClient

        folder = Path(tempfile.mkdtemp(prefix="lk-mlflow-template-"))
        here = os.getcwd()
        os.chdir(folder)  # the Default experiment's artifact folder is made relative to it
        try:
            MlflowClient(f"sqlite:///{folder}/mlflow.db").search_experiments()
        finally:
            os.chdir(here)
        _MIGRATED_STORE.append(folder / "mlflow.db")
    return _MIGRATED_STORE[0]


def use_working_folder(mp: pytest.MonkeyPatch, path: Path) -> Path:
    """Make ``path`` the working folder, with its own MLflow store, until ``mp`` is undone."""
    (path / "mlruns").mkdir(parents=True, exist_ok=True)
    db = path / "mlruns" / "mlflow.db"
    if not db.exists():
        shutil.copyfile(migrated_store(), db)
        with closing(sqlite3.connect(db)) as store, store:  # the Default experiment's folder: this one's
            store.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0",
                          (str(path / "mlruns" / "0"),))
    mp.chdir(path)
    mp.setenv("MLFLOW_TRACKING_URI", store_uri(path))
    return path


def free_port() -> int:
    """A TCP port nothing listens on at 127.0.0.1 now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pytest_configure(config) -> None:
    """In a pytest-xdist worker: its share of the cores. torch in this process and every process a test starts
    (make, lk-segment, mlflow) run that many threads, so that two workers do not fight over the same cores."""
    worker = getattr(config, "workerinput", None)  # xdist gives its workers this, never the controller
    XDIST_WORKER[:] = [worker is not None]
    if worker is not None:
        import torch

        threads = max(1, usable_cpus() // int(worker["workercount"]))
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


def pytest_xdist_auto_num_workers(config) -> int:
    """``-n auto`` (make test): a worker per core, at most ``MAX_WORKERS`` (each makes its own MLflow stores and
    starts its own servers; beyond a few, they wait on each other's fixtures more than they gain)."""
    return max(1, min(MAX_WORKERS, usable_cpus()))


def made_once(tmp_path_factory, name: str, make):
    """``make(folder)``'s result, made once per test session whatever the number of xdist workers: the first
    worker to ask makes it in a folder shared by all of them, under a lock; the others wait, then read the
    pickled result. Read-only, as every session fixture: a test that must change it works on a copy."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    if XDIST_WORKER == [True]:
        base = base.parent  # each worker's basetemp is a folder of the session's
    folder, done = base / name, base / f"{name}.pickle"
    with FileLock(str(base / f"{name}.lock")):
        if not done.exists():
            folder.mkdir()
            done.write_bytes(pickle.dumps(make(folder)))
    return pickle.loads(done.read_bytes())


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    """A small dataset in the Kaggle layout (train/, train_masks/), generated once per session."""
    return made_once(tmp_path_factory, "carvana_tiny", lambda root: generate(
        root, cars=TINY_CARS, width=TINY_SIZE[0], height=TINY_SIZE[1], workers=1, progress=False))


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """Run in a fresh folder with its own MLflow store, cache and checkpoints."""
    return use_working_folder(monkeypatch, tmp_path)


def tiny_overrides(root: Path, *extra: str) -> list[str]:
    return [
        f"data.root={root}", "data.height=64", "data.batch_size=8", "data.augment=false",
        "model.width=4", "model.depth=3", "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
        "experiment=test",
        "tracking.log_model=false",  # a few seconds a run; tests/tracking/test_mlflow_model.py logs and serves one
        *extra,
    ]


@pytest.fixture
def tiny_cfg(tiny_root, workdir):
    """``tiny_cfg(variant, *overrides)``: the config of a tiny training, in the test's ``workdir``."""

    def make(variant: str = "3x3", *extra: str):
        return load_config(variant, tiny_overrides(tiny_root, *extra))

    return make


# The modules that take longest (the 2-core CPU's junit times: 60-150 s each, most of a second one's time spent
# waiting on a module fixture), longest first. make test's workers take whole modules; these go out first, so that
# no worker is left finishing one of them alone at the end (make test passes --no-loadscope-reorder: xdist would
# otherwise send the modules with most tests first). The other modules keep their (shuffled) order.
LONG_MODULES = ["commands/test_sweep_commands.py", "commands/test_commands.py", "comparison/test_compare.py",
                "tracking/test_server.py", "commands/test_gpu_check.py", "tracking/test_server_auth.py",
                "tracking/test_browser.py", "tracking/test_mlflow_model.py", "tracking/test_shared_store.py"]


@pytest.hookimpl(trylast=True)  # after pytest-randomly's shuffle
def pytest_collection_modifyitems(config, items):
    """The long modules first, in LONG_MODULES's order; within a module, and among the others, the order is
    kept (a stable sort). ``@pytest.mark.cuda`` tests are skipped, saying why, where torch sees no CUDA GPU."""
    import torch

    from lk_segment.device import torch_build

    rank = {name: i for i, name in enumerate(LONG_MODULES)}

    def module(item) -> int:
        path = Path(str(item.fspath)).resolve()
        name = path.relative_to(REPO / "tests").as_posix() if path.is_relative_to(REPO / "tests") else ""
        return rank.get(name, len(LONG_MODULES))

    items.sort(key=module)
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason=f"needs a CUDA GPU: none seen ({torch_build()}); make gpu-check runs "
                                   "these on a GPU machine")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


def carvana_root() -> Path | None:
    root = os.environ.get("LK_CARVANA_ROOT")
    return Path(root) if root else None


requires_carvana = pytest.mark.skipif(
    carvana_root() is None, reason="LK_CARVANA_ROOT is unset: point it at the real Carvana sample to run this test"
)


@pytest.fixture(scope="session")
def tiny_comparison(tiny_root, tmp_path_factory) -> dict:
    """A finished comparison (3x3 and 1x5, 2 seeds, 1 epoch each) in its own folder and store.

    Shared, read-only, by tests/comparison/test_compare.py and tests/tracking/test_browser.py: four trainings, run
    once, two at a time (the one-training-per-GPU scheduler, here on CPU).
    """
    from lk_segment.comparison.sweep import compare

    # with their MLflow models: the sweep registers them (tests/tracking/test_registry.py)
    # system metrics sampled each second: a tiny training lasts less than the default interval
    extra = ("tracking.log_model=true", "tracking.system_metrics_interval_s=1")
    overrides = [o for o in tiny_overrides(tiny_root, *extra) if not o.startswith("experiment=")]

    def make(work: Path) -> dict:
        with pytest.MonkeyPatch.context() as mp:
            use_working_folder(mp, work)
            result = compare(["3x3", "1x5"], 2, overrides, experiment="tiny_compare", report_dir=work / "report",
                             workers=2)
        return {"work": work, "uri": store_uri(work), "experiment": "tiny_compare", "overrides": overrides, **result}

    return made_once(tmp_path_factory, "comparison", make)


def copy_work(src: Path, dst: Path) -> Path:
    """A copy of a working folder (store, artifacts, checkpoints) whose MLflow store points at the copy."""
    shutil.copytree(src, dst)
    old, new = str(src), str(dst)
    # MLflow keeps artifact locations as absolute URIs: point the copy's at the copied artifacts.
    with closing(sqlite3.connect(dst / "mlruns" / "mlflow.db")) as db, db:
        db.execute("UPDATE experiments SET artifact_location = replace(artifact_location, ?, ?)", (old, new))
        db.execute("UPDATE runs SET artifact_uri = replace(artifact_uri, ?, ?)", (old, new))
        db.execute("UPDATE logged_models SET artifact_location = replace(artifact_location, ?, ?)", (old, new))
        db.execute("UPDATE model_versions SET storage_location = replace(storage_location, ?, ?)", (old, new))
    forget_artifact_folders()
    return dst


def forget_artifact_folders() -> None:
    """MLflow remembers each run's artifact folder by run id, for the whole process: a copy's runs have the
    original's ids, and would log into the original's folders (or, after it, the original's into the copy's)."""
    from mlflow.tracking._tracking_service import utils as tracking_utils

    tracking_utils._artifact_repos_cache.clear()


@pytest.fixture
def comparison_copy(tiny_comparison, tmp_path):
    """A copy of the shared comparison (store, artifacts, checkpoints, report), for a test that changes it."""
    work = copy_work(tiny_comparison["work"], tmp_path / "comparison")
    yield {**tiny_comparison, "work": work, "uri": store_uri(work)}
    forget_artifact_folders()


TRAINED_EPOCHS = 3  # of the shared run; its full-resolution Dice after epochs 2 and 3


@pytest.fixture(scope="session")
def trained_run(tiny_root, tmp_path_factory) -> dict:
    """One tiny training (5x5, 3 epochs, full-resolution Dice every 2) in its own folder and store, shared,
    read-only, by the tests that only read a run; ``trained_copy`` for a test that writes to it."""
    from lk_segment.commands.train import train

    overrides = tiny_overrides(tiny_root, f"trainer.max_epochs={TRAINED_EPOCHS}", "model.width=8",
                               "trainer.full_res_eval_every=2")

    def make(work: Path) -> dict:
        with pytest.MonkeyPatch.context() as mp:
            use_working_folder(mp, work)
            result = train(load_config("5x5", overrides))
        return {"result": result, "run_id": result["run_id"], "work": work, "uri": store_uri(work)}

    return made_once(tmp_path_factory, "trained", make)


REAL_OVERRIDES = ["data.limit_images=96", "data.height=64", "model.width=8", "trainer.max_epochs=3",
                  "trainer.enable_progress_bar=false", "experiment=test"]  # 6 cars of the real sample


@pytest.fixture(scope="session")
def real_run(tmp_path_factory) -> dict:
    """One short training on real photos (3x3 on 6 cars of LK_CARVANA_ROOT, 3 epochs at 64 px, its MLflow model
    logged) in its own folder and store, shared, read-only, by the tests that need a model of real cars."""
    from lk_segment.commands.train import train

    if carvana_root() is None:
        pytest.skip("LK_CARVANA_ROOT is unset: point it at the real Carvana sample to run this test")
    overrides = [f"data.root={carvana_root()}", *REAL_OVERRIDES]

    def make(work: Path) -> dict:
        with pytest.MonkeyPatch.context() as mp:
            use_working_folder(mp, work)
            result = train(load_config("3x3", overrides))
        return {"result": result, "work": work, "uri": store_uri(work), "overrides": overrides}

    return made_once(tmp_path_factory, "real", make)


@pytest.fixture
def trained_copy(trained_run, tmp_path, monkeypatch):
    """A copy of the shared run's folder, made the working folder: for a test that logs to the run."""
    work = use_working_folder(monkeypatch, copy_work(trained_run["work"], tmp_path / "trained"))
    yield {**trained_run, "work": work, "uri": store_uri(work)}
    forget_artifact_folders()


def start_ui(args: list[str], cwd: Path, port: int, cmd: list[str] | None = None,
             env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    """``lk-segment ui ARGS`` (or ``cmd``) in ``cwd``, once it answers; (process, the first line it printed).
    A test's server answers with one process (``--workers 1``, the UI's default) unless ARGS say otherwise:
    each of ``make server``'s four imports MLflow, seconds on a busy 2-core machine.

    Its output goes to a file, never a pipe: a pipe nobody reads fills up (64 KiB of access logs) and
    blocks the server. Both waits have a deadline."""
    env = env or {**os.environ, "MLFLOW_TRACKING_URI": "sqlite:///mlruns/mlflow.db"}
    workers = [] if "--workers" in args else ["--workers", "1"]
    cmd = cmd or [str(Path(sys.executable).with_name("lk-segment")), "ui", "--port", str(port), *workers, *args]
    log = tempfile.TemporaryFile("w+")  # closed with the process, by stop_ui
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    proc.log = log
    deadline = time.time() + 240  # a loaded 2-core machine takes a while to start it
    first = ""
    while time.time() < deadline and proc.poll() is None and not first:
        log.seek(0)  # MLflow may first log that it creates the store's tables
        first = next((line for line in log.read().splitlines() if line.startswith("lk-segment: open")), "")
        time.sleep(0.2)
    while first and time.time() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                if r.status == 200:
                    return proc, first
        except OSError:
            time.sleep(1)
    log.seek(0)
    output = log.read()[-2000:]
    stop_ui(proc)
    pytest.fail(f"{' '.join(cmd)} did not answer on port {port}: {output}")


def stop_ui(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)  # mlflow server runs its workers in child processes
        proc.wait(timeout=30)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    if getattr(proc, "log", None) is not None:
        proc.log.close()


REPO = Path(__file__).resolve().parent.parent


def copy_repository(copy: Path) -> Path:
    """Copy the repository's tracked files to ``copy`` and link its .venv in: a test runs a README command
    there exactly as a user types it (``make ...`` from the root, relative defaults), isolated from the
    real checkout. Timestamps are kept, so make finds the environment installed; where it is older than
    pyproject.toml, make in the copy would reinstall the project from the copy into the shared .venv, so the
    test stops first."""
    stamp = REPO / ".venv" / ".installed"
    if not stamp.exists() or stamp.stat().st_mtime < (REPO / "pyproject.toml").stat().st_mtime:
        pytest.fail(".venv is not installed or older than pyproject.toml: run `make install` first (a make in a "
                    "copy of the repository would install the copy into it)")
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    for name in filter(None, files.decode().split("\0")):
        src = REPO / name
        if src.is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, copy / name)
    (copy / ".venv").symlink_to(REPO / ".venv")
    return copy


@pytest.fixture
def repo_copy(tmp_path) -> Path:
    """A copy of the repository for one test (``copy_repository``)."""
    return copy_repository(tmp_path / "repo")
