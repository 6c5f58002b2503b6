"""`make gpu-check` in its CPU mode: the script that proves the GPU path is itself run in CI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_gpu_check_in_cpu_mode_passes_and_writes_its_summaries(tmp_path):
    out = tmp_path / "gpu-check"
    # NO_VENV: the way the GPU machine runs it, with the python running this suite
    proc = subprocess.run(["make", "-C", str(ROOT), "gpu-check", "NO_VENV=1", f"PYTHON={sys.executable}",
                           f"GPU_CHECK_OUT={out}", "ARGS=--mode cpu"], capture_output=True, text=True, timeout=1500,
                          env={**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"})
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    results = json.loads((out / "gpu-check.json").read_text())
    assert results["mode"] == "cpu" and results["passed"]
    assert [s["name"] for s in results["steps"]] == ["environment", "cuda-tests", "data", "train-3x3", "train-replk",
                                                      "bench", "loader", "predict"]
    assert results["environment"]["device"] == "cpu" and results["environment"]["torch"]
    tests = results["cuda_tests"]
    assert tests.get("skipped", 0) > 0 and any("needs a CUDA GPU" in r for r in tests["skip_reasons"])
    for variant in ("3x3", "replk"):
        run = results["trainings"][variant]
        assert run["status"] == "FINISHED" and 0 <= run["val_dice"] <= 1 and run["gpu_peak_mem_mb"] is None
    assert results["bench"]["variants"]["3x3"]["images_per_s"] > 0
    assert results["loader"]["loader_images_per_s"] > 0 and results["loader"]["model_images_per_s"] > 0
    assert results["predict"]["masks"] == results["predict"]["photos"] > 0
    summary = (out / "gpu-check.md").read_text()
    assert "all steps passed" in summary and "| train-replk | passed |" in summary
