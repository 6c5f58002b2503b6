"""Lightning callbacks: the per-epoch performance figures every run logs."""

from __future__ import annotations

import resource
import time

import lightning as L
import torch


class PerfMonitor(L.Callback):
    """Logs per training epoch, with the same names in every run:

    ``perf/epoch_time_s`` (wall time of the training batches, validation excluded; max over
    ranks), ``perf/train_images_per_s`` (all ranks together), ``perf/cpu_peak_rss_mb``
    (peak resident memory of the process so far; max over ranks) and, when the module trains
    on a CUDA device, ``perf/gpu_peak_mem_mb`` and ``perf/gpu_peak_reserved_mb``
    (``torch.cuda.max_memory_allocated`` / ``max_memory_reserved``, reset at each epoch start).

    On CUDA the epoch is timed with CUDA events recorded on the stream after each batch: the
    host never waits for the GPU inside the epoch, only once at its end, when the last event is
    read. (A ``torch.cuda.synchronize()`` per batch would stall the CPU that queues the next one.)
    The branch keys on the device the module is on, not on whether the machine has CUDA.
    """

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.images = 0
        self.cuda = pl_module.device.type == "cuda"
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(pl_module.device)
            self.start_event = torch.cuda.Event(enable_timing=True)
            self.end_event = torch.cuda.Event(enable_timing=True)
            self.start_event.record()
            self.end_event.record()  # an epoch without batches measures ~0
        self.start = self.end = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self.images += len(batch[0])
        if self.cuda:
            self.end_event.record()  # queued after this batch's kernels; read at the epoch's end
        else:
            self.end = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.cuda:
            self.end_event.synchronize()  # the epoch's one wait for the GPU
            seconds = self.start_event.elapsed_time(self.end_event) / 1000
        else:
            seconds = self.end - self.start
        seconds = max(seconds, 1e-9)
        log = pl_module.log
        log("perf/epoch_time_s", seconds, sync_dist=True, reduce_fx="max")
        log("perf/train_images_per_s", self.images / seconds, sync_dist=True, reduce_fx="sum")
        log("perf/cpu_peak_rss_mb", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            sync_dist=True, reduce_fx="max")
        if self.cuda:
            device = pl_module.device
            log("perf/gpu_peak_mem_mb", torch.cuda.max_memory_allocated(device) / 2**20, sync_dist=True,
                reduce_fx="max")
            log("perf/gpu_peak_reserved_mb", torch.cuda.max_memory_reserved(device) / 2**20, sync_dist=True,
                reduce_fx="max")
