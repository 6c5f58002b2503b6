"""Lightning callbacks: the per-epoch performance figures every run logs; a sweep's progress lines."""

from __future__ import annotations

import os
import resource
import time

import lightning as L
import psutil
import torch

from lk_segment import names
from lk_segment.markdown import format_seconds
from lk_segment.timing import Stopwatch


def tree_cpu_seconds() -> float:
    """CPU seconds (user + system, all threads) of this process, its live children (DataLoader
    workers) and the children it has already reaped."""
    me = psutil.Process()
    total = sum(me.cpu_times()[:2])
    for child in me.children(recursive=True):
        try:
            total += sum(child.cpu_times()[:2])
        except psutil.Error:  # ended between the listing and the read
            pass
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    return total + reaped.ru_utime + reaped.ru_stime


def machine_busy_seconds() -> float:
    """CPU seconds every core of the machine spent busy (not idle, not waiting for I/O) since boot."""
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


class MachineShare:
    """Who had the machine between ``start()`` and ``stop()``: this process tree, or others too.

    ``own_share``: this process tree's CPU time / (wall time x torch's threads), near 1 for a
    compute-bound training alone on its cores; ``others_share``: the CPU time the rest of the
    machine used / (wall time x cores), near 0 on a quiet machine; ``load_avg``: the 1-minute
    load average at the end (it lags: a record beside the two, not the rule).
    """

    def start(self) -> None:
        self.wall, self.own, self.busy = time.perf_counter(), tree_cpu_seconds(), machine_busy_seconds()

    def stop(self) -> dict[str, float]:
        wall = max(time.perf_counter() - self.wall, 1e-9)
        own = tree_cpu_seconds() - self.own
        others = max(0.0, machine_busy_seconds() - self.busy - own)
        cores = psutil.cpu_count() or 1
        return {"own_share": own / (wall * max(1, min(torch.get_num_threads(), cores))),
                "others_share": min(1.0, others / (wall * cores)), "load_avg": os.getloadavg()[0]}


class PerfMonitor(L.Callback):
    """Logs per training epoch, with the same names in every run:

    ``perf/epoch_time_s`` (wall time of the training batches, validation excluded; max over
    ranks), ``perf/train_time_cum_s`` (the sum of those over the epochs so far, kept across a
    resume: the x axis of time to accuracy), ``perf/train_images_per_s`` (all ranks together),
    ``perf/own_cpu_share``, ``perf/others_cpu_share`` and ``perf/load_avg_1m`` (``MachineShare``
    over the epoch, its validation included: did the run have the machine to itself?), ``perf/cpu_peak_rss_mb``
    (peak resident memory of the process so far; max over ranks) and, when the module trains
    on a CUDA device, ``perf/gpu_peak_mem_mb`` and ``perf/gpu_peak_reserved_mb``
    (``torch.cuda.max_memory_allocated`` / ``max_memory_reserved``, reset at each epoch start).

    On CUDA the epoch is timed with CUDA events recorded on the stream after each batch: the
    host never waits for the GPU inside the epoch, only once at its end, when the last event is
    read. (A ``torch.cuda.synchronize()`` per batch would stall the CPU that queues the next one.)
    The branch keys on the device the module is on, not on whether the machine has CUDA.
    """

    def __init__(self):
        self.train_time_cum_s = 0.0  # checkpointed (state_dict): a resumed run's curve goes on
        self.share = MachineShare()

    def state_dict(self) -> dict:
        return {"train_time_cum_s": self.train_time_cum_s}

    def load_state_dict(self, state_dict: dict) -> None:
        self.train_time_cum_s = float(state_dict.get("train_time_cum_s", 0.0))

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.images = 0
        self.share.start()
        self.cuda = pl_module.device.type == "cuda"
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(pl_module.device)
        self.watch = Stopwatch(pl_module.device)
        self.watch.start()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self.images += len(batch[0])
        self.watch.stop()  # on CUDA an event queued after this batch's kernels, read at the epoch's end

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        intervals = self.watch.seconds()  # on CUDA the epoch's one wait for the GPU
        seconds = max(intervals[0] if intervals else 0.0, 1e-9)  # one interval: start to the last batch's end
        share = self.share.stop()
        self.train_time_cum_s += seconds  # this rank's; logged as the max over ranks like the epoch's
        log = pl_module.log
        log(names.EPOCH_TIME, seconds, sync_dist=True, reduce_fx="max")
        log(names.TRAIN_TIME_CUM, self.train_time_cum_s, sync_dist=True, reduce_fx="max")
        log(names.OWN_CPU_SHARE, share["own_share"], sync_dist=True, reduce_fx="min")
        log(names.OTHERS_CPU_SHARE, share["others_share"], sync_dist=True, reduce_fx="max")
        log(names.LOAD_AVG, share["load_avg"], sync_dist=True, reduce_fx="max")
        log(names.IMAGES_PER_S, self.images / seconds, sync_dist=True, reduce_fx="sum")
        log(names.CPU_PEAK_RSS, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            sync_dist=True, reduce_fx="max")
        if self.cuda:
            device = pl_module.device
            log(names.GPU_PEAK_MEM, torch.cuda.max_memory_allocated(device) / 2**20, sync_dist=True,
                reduce_fx="max")
            log(names.GPU_PEAK_RESERVED, torch.cuda.max_memory_reserved(device) / 2**20, sync_dist=True,
                reduce_fx="max")


class SweepProgress(L.Callback):
    """One line per epoch: which run of how many, its epoch, Dice, and the time left.

    The estimate is the sweep's wall time per trained epoch so far times the epochs still to
    train; with ``workers`` trainings at once it is divided among them.
    """

    def __init__(self, label: str, run_name: str, sweep_start: float, epochs_done: int, epochs_total: int,
                 workers: int = 1, prefix: str = "compare"):
        self.label, self.run_name, self.sweep_start, self.workers = label, run_name, sweep_start, workers
        self.epochs_done, self.epochs_total, self.prefix = epochs_done, epochs_total, prefix

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero and trainer.logger is not None:
            trainer.logger.experiment.set_tag(trainer.logger.run_id, "mlflow.runName", self.run_name)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        self.epochs_done += 1
        elapsed = time.time() - self.sweep_start
        left = elapsed / self.epochs_done * (self.epochs_total - self.epochs_done) / self.workers
        dice = trainer.callback_metrics.get(names.VAL_DICE)
        dice_text = f", val/dice {float(dice):.4f}" if dice is not None else ""
        print(f"[{self.prefix}] {self.label}: epoch {trainer.current_epoch + 1}/{trainer.max_epochs}{dice_text}; "
              f"about {format_seconds(left)} left", flush=True)
