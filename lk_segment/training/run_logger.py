"""The MLflow logger of a training run (Lightning's, with the project's ending and checkpoint upload).

Apart from ``lk_segment.tracking`` so that commands that only read the store (``make ui``, ``make report``,
``make register``) do not import Lightning (seconds on a small CPU).
"""

from __future__ import annotations

import os
import sys

from lightning.pytorch.loggers import MLFlowLogger

from lk_segment.tracking import CHECKPOINT_ARTIFACT_DIR, fluent_store


class RunLogger(MLFlowLogger):
    """Lightning's MLFlowLogger, but a run ends KILLED after Ctrl-C (FAILED after an exception), and
    each checkpoint reaches the run's ``checkpoints/`` artifacts as soon as it is written."""

    @property
    def experiment(self):
        # Lightning's first call points MLflow's process-wide tracking URI (and MLFLOW_TRACKING_URI) at this
        # store and leaves it there; the logger works through its own client, so the process is put back.
        with fluent_store(self._tracking_uri):
            return super().experiment

    def after_save_checkpoint(self, checkpoint_callback) -> None:
        # Lightning calls this on global rank 0 after each save of a ModelCheckpoint; ours keep one
        # file each (save_top_k=1), so its best_model_path is the file just written: every epoch's
        # last.ckpt, each new best-*.ckpt. A run killed on this machine resumes on another from it.
        path = checkpoint_callback.best_model_path
        if path and os.path.isfile(path):
            self.experiment.log_artifact(self.run_id, path, CHECKPOINT_ARTIFACT_DIR)

    def finalize(self, status: str = "success") -> None:
        # Lightning calls finalize("failed") from inside its exception handler: the exception
        # being handled tells an interrupt from a crash.
        if status == "failed" and isinstance(sys.exc_info()[1], KeyboardInterrupt):
            status = "KILLED"
        super().finalize(status)
