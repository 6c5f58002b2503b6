"""`make gpu-check`: the script that proves the GPU path, itself run in CI in its CPU mode; its steps'
paths, failures and time limits; the loader figure it reports."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from lk_segment.bench.loader import BATCHES_PER_WORKER, steady_images_per_s, steady_loader
from lk_segment.commands import gpu_check
from lk_segment.data.module import CarvanaDataset

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def check_in_relative_folder(tmp_path, monkeypatch):
    """A CPU-mode Check given a relative --out, whose steps are recorded (argv, cwd) and 'pass' without
    running: a command that exits 0 but writes nothing."""
    monkeypatch.chdir(tmp_path)
    check = gpu_check.Check(Path("gpu-check"), "cpu")
    calls = []

    def run(name, argv, timeout_key, cwd=None):
        calls.append((argv, cwd))
        step = {"name": name, "status": "passed", "seconds": 0.0, "log": str(check.logs / f"{name}.log")}
        check.steps.append(step)
        return step

    monkeypatch.setattr(check, "run", run)
    return check, calls, tmp_path


def test_the_gpu_mode_trains_the_plain_kernel_and_the_largest_the_cpu_mode_one():
    assert gpu_check.MODES["gpu"].train_variants == ("3x3", "replk") and gpu_check.MODES["gpu"].epochs == 2
    assert gpu_check.MODES["cpu"].train_variants == ("3x3",)


def test_a_relative_out_gives_every_step_absolute_paths_and_a_missing_bench_json_fails_the_step(
        check_in_relative_folder):
    check, calls, tmp_path = check_in_relative_folder
    assert check.work == tmp_path / "gpu-check" / "work"  # resolved: the steps run inside it
    root = check.work / "carvana"
    assert check.bench(root) is None  # no traceback: the step failed
    assert check.steps[-1]["status"].startswith("failed") and "bench" in check.steps[-1]["name"]
    (argv, _), = calls
    out = argv[argv.index("--out") + 1]
    assert Path(out).is_absolute() and Path(out).parent == check.work
    assert f"data.root={root}" in argv  # the check's own photos, not a default set generated for the bench


def test_a_step_that_exits_0_without_its_result_has_failed(check_in_relative_folder):
    check, _, _ = check_in_relative_folder
    assert check.python_step("loader", "loader") is None
    assert check.steps[-1]["status"].startswith("failed (no result")


def _gone(pid: int) -> bool:
    """No such process, or only its zombie left (nothing may reap it in a container)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
def test_a_step_past_its_limit_ends_its_whole_process_group(tmp_path, capsys):
    check = gpu_check.Check(tmp_path / "out", "cpu")
    check.sizes = dataclasses.replace(check.sizes, timeout_s={"sleepy": 3})
    pidfile = tmp_path / "grandchild.pid"
    # a step that starts a process of its own (as a DDP test does) and outlives its limit
    script = ("import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; "
              "time.sleep(120)']); open(sys.argv[1], 'w').write(str(p.pid)); time.sleep(120)")
    step = check.run("sleepy", [sys.executable, "-c", script, str(pidfile)], "sleepy")
    assert step["status"] == "failed (over 3 s)" and step["limit_s"] == 3
    pid = int(pidfile.read_text())
    deadline = time.time() + 10
    while not _gone(pid) and time.time() < deadline:
        time.sleep(0.1)
    assert _gone(pid), "the step's own child outlived the step's time limit"
    assert "(limit 3 s)" in capsys.readouterr().out  # each step's time and limit are printed


def _dataset(n: int = 24) -> CarvanaDataset:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 32, 48, 3), dtype=np.uint8)
    masks = rng.integers(0, 2, (n, 32, 48), dtype=np.uint8)
    return CarvanaDataset(images, masks, list(range(n)))


def test_the_loader_figure_is_a_steady_state_over_pinned_memory():
    """Several batches per worker after each worker's first ones, over the training loader's settings."""
    dataset = _dataset()
    loader = steady_loader(dataset, 2, 3, torch.device("cpu"))
    assert len(loader) == 2 * 3 + BATCHES_PER_WORKER * 3  # 3 workers: 2 warm-up batches each, then the timed ones
    assert loader.persistent_workers and not loader.pin_memory
    assert steady_loader(dataset, 2, 3, torch.device("cuda")).pin_memory  # as training copies to a GPU
    rate, batches = steady_images_per_s(steady_loader(dataset, 2, 0, torch.device("cpu")), torch.device("cpu"))
    assert batches == BATCHES_PER_WORKER and rate > 0


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("make") is None or shutil.which("git") is None, reason="needs make and git")
def test_make_gpu_check_from_the_repository_root_passes_and_writes_its_summaries(tmp_path):
    """As a user types it, in a fresh copy of the checkout: `make gpu-check` with its default (relative)
    folder. NO_VENV: the way the GPU machine runs it, with the python running this suite."""
    repo = tmp_path / "repo"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.splitlines()
    for name in files:
        if (ROOT / name).is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, repo / name)
    proc = subprocess.run(["make", "gpu-check", "NO_VENV=1", f"PYTHON={sys.executable}", "ARGS=--mode cpu"],
                          cwd=repo, capture_output=True, text=True, timeout=1500,
                          env=dict(os.environ))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    out = repo / "gpu-check"
    results = json.loads((out / "gpu-check.json").read_text())
    assert results["mode"] == "cpu" and results["passed"]
    assert [s["name"] for s in results["steps"]] == ["environment", "cuda-tests", "data", "train-3x3", "bench",
                                                      "loader", "predict"]  # the CPU mode trains one variant
    assert all(s["limit_s"] > 0 for s in results["steps"] if "log" in s)
    assert results["environment"]["device"] == "cpu" and results["environment"]["torch"]
    tests = results["cuda_tests"]
    assert tests.get("skipped", 0) > 0 and any("needs a CUDA GPU" in r for r in tests["skip_reasons"])
    (run,) = results["trainings"].values()
    assert run["status"] == "FINISHED" and 0 <= run["val_dice"] <= 1 and run["gpu_peak_mem_mb"] is None
    assert results["bench"]["variants"]["3x3"]["images_per_s"] > 0
    assert not (repo / "data" / "synthetic").exists()  # the bench used the check's photos
    assert results["loader"]["loader_images_per_s"] > 0 and results["loader"]["model_images_per_s"] > 0
    assert results["predict"]["masks"] == results["predict"]["photos"] > 0
    summary = (out / "gpu-check.md").read_text()
    assert "all steps passed" in summary and "| train-3x3 | passed |" in summary
    assert "(limit" in proc.stdout
