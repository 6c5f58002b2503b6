"""What every training run records in MLflow beyond its metrics: system metrics and data lineage.

- ``SystemMetrics``: MLflow's own sampler (CPU, memory, disk, network, and GPU utilisation and
  memory where pynvml finds one) started on the rank that owns the run. Lightning's
  ``MLFlowLogger`` creates runs through the client, so MLflow's
  ``MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING`` never reaches them: the sampler is started here.
- ``log_datasets``: the training and validation sets as MLflow dataset inputs (a digest of the
  file list and sizes, the data root, photos and cars), and the validation cars as
  ``val_cars.txt``, so two runs are seen to share a split.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import warnings

import lightning as L

from lk_segment.data.carvana import Sample
from lk_segment.tracking import redact


class SystemMetrics(L.Callback):
    """MLflow's system metrics (``system/...``) every ``interval_s`` seconds while the run trains.

    ``resume``: the run goes on after a crash, so the sampler's steps continue after its last one.
    """

    def __init__(self, interval_s: float, resume: bool = False):
        self.interval_s, self.resume = float(interval_s), resume
        self.monitor = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.interval_s <= 0 or not trainer.is_global_zero or trainer.logger is None:
            return
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        # MLflow logs at INFO that it starts, stops and finds no GPU: not worth a line per run
        logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
        self.monitor = SystemMetricsMonitor(trainer.logger.run_id, sampling_interval=self.interval_s,
                                            resume_logging=self.resume, tracking_uri=trainer.logger._tracking_uri)
        self.monitor.start()

    def _stop(self) -> None:
        if self.monitor is None:
            return
        monitor, self.monitor = self.monitor, None
        monitor.finish()  # stops the sampler and flushes what it published, before the run is ended
        # MLflow's sampler drops the samples of its last, unfinished interval (all of them for a run shorter than
        # one interval, which would then show no system metrics): publish them too.
        leftover = monitor.aggregate_metrics()
        if leftover:
            monitor.publish_metrics(leftover)
            monitor.mlflow_logger.flush()

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stop()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._stop()


def split_digest(samples: list[Sample]) -> str:
    """sha256 (16 hex digits) of the photos' and masks' names and sizes in bytes, in order."""
    h = hashlib.sha256()
    for s in samples:
        h.update(f"{s.image.name}\t{s.image.stat().st_size}\t{s.mask.name}\t{s.mask.stat().st_size}\n".encode())
    return h.hexdigest()[:16]


def _dataset(samples: list[Sample], root: str, name: str):
    import mlflow.data
    import pandas as pd

    frame = pd.DataFrame({
        "image": [s.image.name for s in samples],
        "mask": [s.mask.name for s in samples],
        "car": [s.car for s in samples],
        "image_bytes": [s.image.stat().st_size for s in samples],
    })
    with warnings.catch_warnings():  # MLflow's hints about schema inference and local sources: noise here
        warnings.simplefilter("ignore")
        return mlflow.data.from_pandas(frame, source=redact(root), name=name, digest=split_digest(samples))


def log_datasets(client, run_id: str, root: str, train: list[Sample], val: list[Sample]) -> None:
    """The training and validation sets as the run's dataset inputs, the validation cars as an artifact."""
    from mlflow.entities import DatasetInput, InputTag

    inputs = []
    for samples, context in ((train, "training"), (val, "validation")):
        cars = sorted({s.car for s in samples})
        dataset = _dataset(samples, root, f"carvana-{context}")
        tags = [InputTag("mlflow.data.context", context), InputTag("photos", str(len(samples))),
                InputTag("cars", str(len(cars)))]
        inputs.append(DatasetInput(dataset._to_mlflow_entity(), tags=tags))
    client.log_inputs(run_id, datasets=inputs)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "val_cars.txt")
        with open(path, "w") as f:
            f.write("\n".join(sorted({s.car for s in val})) + "\n")
        client.log_artifact(run_id, path)


class DataLineage(L.Callback):
    """``log_datasets`` once the DataModule has split the data (rank 0; not again when a run resumes)."""

    def __init__(self, resume: bool = False):
        self.resume = resume

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        dm = trainer.datamodule
        if self.resume or not trainer.is_global_zero or trainer.logger is None or dm is None:
            return
        log_datasets(trainer.logger.experiment, trainer.logger.run_id, str(dm.root), dm.train_samples,
                     dm.val_samples)
