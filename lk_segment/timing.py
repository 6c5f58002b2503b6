"""The project's one timing primitive, its peak-memory probe and the float32 switch.

Below everything that times work: the bench (``lk_segment/bench``), the FFT-or-native choice of
``lk_segment/ops`` and the per-epoch times of ``callbacks.PerfMonitor`` all use ``Stopwatch``.
Every figure of the bench is a median of timed repeats after untimed warm-up repeats, read
from the device's own clock: CUDA events on a GPU (recorded in the stream with the work, read
once at the end, so timing adds no synchronisation between repeats), ``time.perf_counter``
on the CPU. ``time_in_turns`` times several calls taking turns repeat by repeat, so that a
drift of the machine's speed (clocks, other jobs) hits them alike: the figure for a ratio.
"""

from __future__ import annotations

import gc
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import psutil
import torch

from lk_segment import malloc


class Stopwatch:
    """Intervals between ``start()`` and ``stop()`` on the device's clock; ``seconds()`` reads them.

    On a GPU each mark is a CUDA event recorded in the stream with the work: the host never waits
    for the GPU until ``seconds()``, which synchronises once. Each ``stop()`` closes an interval
    from the last ``start()``: stopping after every batch of an epoch makes the last interval the
    epoch's time so far."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self._intervals: list = []
        self._start = None

    def start(self) -> None:
        self._start = self._mark()

    def stop(self) -> None:
        """Close the interval ``start()`` opened. Stopping again before the next ``start()`` moves the end of that
        same interval (on CUDA its end event is recorded again): an epoch stopped after each batch is one
        interval, ending with the last batch, and costs no event per batch."""
        if self._start is not None:
            self._intervals.append((self._start, self._mark()))
            self._start = None
        elif self._intervals:
            start, end = self._intervals[-1]
            if self.cuda:
                end.record()
            else:
                self._intervals[-1] = (start, time.perf_counter())

    def _mark(self):
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def seconds(self) -> list[float]:
        if not self.cuda:
            return [end - start for start, end in self._intervals]
        torch.cuda.synchronize()
        return [start.elapsed_time(end) / 1000 for start, end in self._intervals]


@dataclass
class Timing:
    """The timed repeats of one call (ms), warm-up left out; ``median_ms`` is the figure."""

    samples_ms: list[float]
    median_ms: float = field(init=False)

    def __post_init__(self) -> None:
        self.median_ms = statistics.median(self.samples_ms)


def time_in_turns(calls: dict[str, Callable[[], object]], repeats: int, warmup: int, device: torch.device,
                  memory: PeakMemory | None = None) -> dict[str, Timing]:
    """Each call ``warmup`` times untimed, then ``repeats`` times timed, the calls taking turns;
    ``memory`` (a running ``PeakMemory``) is reset between the warm-up and the timed repeats."""
    watches = {name: Stopwatch(device) for name in calls}
    for i in range(warmup + repeats):
        if i == warmup and memory is not None:
            memory.reset()
        for name, call in calls.items():
            watches[name].start()
            call()
            watches[name].stop()
    return {name: Timing([1000 * s for s in watch.seconds()[warmup:]]) for name, watch in watches.items()}


def time_call(call: Callable[[], object], repeats: int, warmup: int, device: torch.device,
              memory: PeakMemory | None = None) -> Timing:
    return time_in_turns({"call": call}, repeats, warmup, device, memory)["call"]


class PeakMemory:
    """Peak memory (MB) inside a ``with`` block, from the last ``reset()`` on: CUDA's allocator
    peak on a GPU, else the process RSS sampled every 5 ms by a thread (torch kernels release
    the GIL). ``reset()`` first lets go of what is no longer used: ``gc.collect()``, then
    ``empty_cache()`` on a GPU (cuDNN autotuning workspaces, blocks cached by earlier rows) or
    ``malloc.trim()`` on the CPU (the tuned allocator keeps freed memory for reuse), so the
    figure is the measurement's own. Call it after the warm-up; entering the block calls it too."""

    def __init__(self, device: torch.device):
        self.device, self.peak_mb = device, 0.0
        self.cuda = device.type == "cuda"

    def reset(self) -> None:
        gc.collect()
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            malloc.trim()
            self._peak = self._proc.memory_info().rss

    def __enter__(self) -> PeakMemory:
        if not self.cuda:
            self._proc, self._stop = psutil.Process(), threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
        self.reset()
        if not self.cuda:
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self._peak = max(self._peak, self._proc.memory_info().rss)

    def __exit__(self, *exc) -> None:
        if self.cuda:
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            self._stop.set()
            self._thread.join()
            self.peak_mb = max(self._peak, self._proc.memory_info().rss) / 2**20


@contextmanager
def float32_mode(tf32: bool) -> Iterator[None]:
    """TF32 for float32 matrix products and convolutions on or off inside, whatever the defaults
    (cuDNN allows it by default, so a "float32" figure would not be float32); then as before.

    Through ``set_float32_matmul_precision`` and ``cudnn.allow_tf32``: setting
    ``cuda.matmul.allow_tf32`` after ``set_float32_matmul_precision`` (as a training script
    may do) makes ``get_float32_matmul_precision`` raise in torch 2.13, and Lightning calls it.
    """
    before = (torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32)
    torch.set_float32_matmul_precision("high" if tf32 else "highest")
    torch.backends.cudnn.allow_tf32 = tf32
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before[0])
        torch.backends.cudnn.allow_tf32 = before[1]
