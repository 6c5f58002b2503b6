"""glibc malloc keeps freed memory for reuse once the command has tuned it (lk_segment/malloc.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from lk_segment import malloc
from lk_segment.commands.cli import main

needs_glibc = pytest.mark.skipif(malloc.mmapped_bytes() is None, reason="glibc 2.33+ (mallinfo2) only")

# A fresh process: tune (or not), then allocate a 32 MiB tensor and report how much glibc mmapped for it.
PROBE = """
import torch
from lk_segment.malloc import mmapped_bytes, tune_malloc
tuned = tune_malloc()
before = mmapped_bytes()
block = torch.empty(32 * 2**20, dtype=torch.uint8)
print(tuned, mmapped_bytes() - before)
"""


def _probe(**env) -> tuple[bool, int]:
    out = subprocess.run([sys.executable, "-c", PROBE], env={**os.environ, **env}, capture_output=True, text=True,
                         check=True).stdout.split()
    return out[0] == "True", int(out[1])


@pytest.mark.slow
@needs_glibc
@pytest.mark.parametrize("setting", ["tuned", "default"])
def test_tuned_malloc_serves_large_tensors_from_the_heap(setting):
    tuned, mmapped = _probe(**({malloc.OPT_OUT: "default"} if setting == "default" else {}))
    assert tuned == (setting == "tuned")
    if tuned:
        assert mmapped == 0  # from the heap, kept there for the next step when freed
    else:
        assert mmapped >= 32 * 2**20  # glibc's own rule: a fresh mmap, unmapped again when freed


def test_the_command_tunes_malloc_before_anything_else(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(malloc, "tune_malloc", lambda: calls.append("tuned"))
    assert main(["config", "-v", "5x5"]) == 0
    assert calls == ["tuned"]
    assert "5x5" in capsys.readouterr().out
