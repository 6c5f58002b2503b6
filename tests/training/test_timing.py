"""The bench's timing primitive, its peak-memory probe and its float32 switch (no time asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lk_segment import timing
from lk_segment.timing import PeakMemory, Stopwatch, Timing, float32_mode, time_in_turns

CPU = torch.device("cpu")


def test_calls_take_turns_after_their_warmup():
    calls: list[str] = []
    timings = time_in_turns({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3, warmup=2,
                            device=CPU)
    assert calls == ["a", "b"] * 5  # two untimed turns, then 3 timed ones
    assert set(timings) == {"a", "b"} and all(len(t.samples_ms) == 3 for t in timings.values())


def test_stopping_again_moves_the_end_of_the_same_interval(monkeypatch):
    """PerfMonitor stops its epoch's watch after every batch: one interval, from the start to the last stop."""
    clock = iter([0.0, 1.0, 3.0, 10.0, 12.0])
    monkeypatch.setattr(timing.time, "perf_counter", lambda: next(clock))
    watch = Stopwatch(CPU)
    watch.start()  # 0
    watch.stop()  # 1
    watch.stop()  # 3: the same interval, now 3 s
    watch.start()  # 10
    watch.stop()  # 12: a second interval
    assert watch.seconds() == [3.0, 2.0]


def test_timing_reports_the_median_of_its_repeats():
    assert Timing([5.0, 1.0, 3.0]).median_ms == 3.0
    assert Timing([4.0, 1.0]).median_ms == 2.5


# In a fresh process: the probe reads the process RSS, and a process that has run other tests holds
# freed memory that a new allocation reuses without the RSS growing (seen in a shuffled CI order).
PEAK_RESET = """
import torch
from lk_segment import malloc
from lk_segment.timing import PeakMemory, time_in_turns

if not malloc.tune_malloc():
    print("untuned")
    raise SystemExit
cpu = torch.device("cpu")
sizes_mb = iter([200, 20])  # the warm-up allocates 200 MB, the timed repeat 20 MB

def allocate():
    block = torch.ones(next(sizes_mb) * 2**20 // 4)
    del block

with PeakMemory(cpu) as memory:
    time_in_turns({"allocate": allocate}, repeats=1, warmup=1, device=cpu, memory=memory)
with PeakMemory(cpu) as whole:  # without a reset after the warm-up the 200 MB would count
    sizes_mb = iter([200])
    allocate()
print(memory.peak_mb, whole.peak_mb)
"""


@pytest.mark.slow
def test_peak_memory_is_reset_between_warmup_and_timed_repeats():
    out = subprocess.run([sys.executable, "-c", PEAK_RESET], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2]).stdout.split()
    if out == ["untuned"]:
        pytest.skip("glibc only: elsewhere malloc is not tuned and gives freed memory back itself")
    timed_mb, whole_mb = map(float, out)
    assert timed_mb < whole_mb - 100


def test_float32_mode_sets_tf32_and_gives_the_flags_back():
    def flags() -> tuple:
        backends = torch.backends
        return torch.get_float32_matmul_precision(), backends.cuda.matmul.allow_tf32, backends.cudnn.allow_tf32

    before = flags()
    for tf32 in (False, True):
        with float32_mode(tf32):
            assert flags() == ("high" if tf32 else "highest", tf32, tf32)
        assert flags() == before


@pytest.mark.cuda  # skipped, saying why, without a GPU; make gpu-check runs the cuda tests
def test_cuda_events_time_the_stream():
    device = torch.device("cuda")
    x = torch.randn(2048, 2048, device=device)
    timings = time_in_turns({"matmul": lambda: x @ x}, repeats=3, warmup=1, device=device)
    assert len(timings["matmul"].samples_ms) == 3
    with PeakMemory(device) as memory:
        y = torch.empty(256 * 2**20 // 4, device=device)
        del y
    assert memory.peak_mb >= 256
