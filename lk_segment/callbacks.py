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
    (peak resident memory of the process so far; max over ranks) and, where CUDA is present,
    ``perf/gpu_peak_mem_mb`` (``torch.cuda.max_memory_allocated``, reset at each epoch start).
    """

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.images = 0
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self.start = self.end = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self.images += len(batch[0])
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.end = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        seconds = max(self.end - self.start, 1e-9)
        log = pl_module.log
        log("perf/epoch_time_s", seconds, sync_dist=True, reduce_fx="max")
        log("perf/train_images_per_s", self.images / seconds, sync_dist=True, reduce_fx="sum")
        log("perf/cpu_peak_rss_mb", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            sync_dist=True, reduce_fx="max")
        if torch.cuda.is_available():
            log("perf/gpu_peak_mem_mb", torch.cuda.max_memory_allocated() / 2**20, sync_dist=True, reduce_fx="max")
