"""`make install` where PyTorch came with the machine, offline: SYSTEM_TORCH=1 WHEELS=<folder>."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_install_over_an_existing_torch_leaves_it_alone_and_uses_no_index(tmp_path):
    # The "machine's python" is the one running this suite: it holds torch and every dependency.
    torch_file = Path(torch.__file__)
    torch_dist = importlib.metadata.distribution("torch")
    before = (torch_dist.version, torch_file.stat().st_mtime_ns, len(torch_dist.files or []))
    wheels = tmp_path / "wheels"
    wheels.mkdir()  # empty: whatever pip would need from outside, it cannot get
    venv = tmp_path / "venv"
    env = {**os.environ, "PIP_INDEX_URL": "http://127.0.0.1:9/simple"}  # an index that answers nothing
    proc = subprocess.run(["make", "-C", str(ROOT), "install", f"VENV={venv}", f"PYTHON={sys.executable}",
                           "SYSTEM_TORCH=1", f"WHEELS={wheels}"], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "--system-site-packages" in proc.stderr and "--no-index" in proc.stderr  # make's `set -x` trace
    assert (venv / ".installed").exists()

    python = venv / "bin" / "python"
    code = "import torch, lk_segment; print(torch.__file__); print(lk_segment.__file__)"
    probe = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=120)
    assert probe.returncode == 0, probe.stderr[-2000:]
    seen_torch, seen_package = probe.stdout.split()
    assert Path(seen_torch) == torch_file  # the machine's torch, not a copy
    assert Path(seen_package) == ROOT / "lk_segment" / "__init__.py"  # the checkout, editable
    assert not list(venv.glob("lib/python*/site-packages/torch"))  # nothing installed over it
    torch_dist = importlib.metadata.distribution("torch")
    assert (torch_dist.version, torch_file.stat().st_mtime_ns, len(torch_dist.files or [])) == before
