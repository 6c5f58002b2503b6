"""A comparison's runs, read from MLflow once: what every table, plot, conclusion and the model
registry's champion are then computed from.

A parent run (tag ``lk_segment.role=comparison``) holds one FINISHED child run per job; each child
is tagged with its variant and seed (and its fold in a study) and logged, per epoch, its Dice, its
timing and the share of the machine it had (``lk_segment.training.callbacks.PerfMonitor``), and once, the
best checkpoint's per-photo full-resolution Dice (``full_res/best.csv``).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field

import numpy as np

from lk_segment import names
from lk_segment.errors import UserError

# Per-epoch histories read for every run (MLflow's metric history, in step order)
HISTORY_KEYS = (names.VAL_DICE, names.TRAIN_LOSS, names.EPOCH_TIME, names.TRAIN_TIME_CUM, names.IMAGES_PER_S,
                names.GPU_PEAK_MEM, names.CPU_PEAK_RSS, names.OWN_CPU_SHARE, names.OTHERS_CPU_SHARE,
                names.LOAD_AVG)
CURVE_KEYS = (names.VAL_DICE, names.TRAIN_LOSS)  # the training curves plotted per run


@dataclass
class RunRecord:
    variant: str
    seed: int
    run_id: str
    best_dice: float  # best low-resolution val/dice over the epochs
    epoch_time_s: float  # median over epochs (the median ignores the first epoch's start-up)
    images_per_s: float
    peak_mem_mb: float
    mem_kind: str  # "GPU" or "CPU RSS"
    params: dict[str, str]
    metrics: dict[str, float]
    curves: dict[str, list[float]] = field(default_factory=dict)  # HISTORY_KEYS -> one value per epoch
    erf: np.ndarray | None = None
    fold: int | None = None  # a study's cross-validation fold
    photo_scores: dict[str, tuple[str, float]] = field(default_factory=dict)  # photo -> (car, full-res Dice)
    wall_s: float = math.nan  # the run's start to end, in MLflow (across a resume: first start to last end)

    @property
    def machine(self) -> str:
        """Where its times were measured: the device's name and the precision it trained in."""
        device = self.params.get("trainer.device_name", "unknown device")
        return f"{device}, precision {self.params.get('trainer.precision', '?')}"

    @property
    def headline(self) -> float:
        return self.metrics.get(names.HEADLINE, math.nan)


def load_parent(client, experiment: str, parent_run_id: str | None = None, role: str = "comparison"):
    """The parent run (the latest of ``experiment`` unless given) and its experiment's id."""
    from lk_segment.tracking import ROLE_TAG, tracking_uri

    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise UserError(f"no MLflow experiment {experiment!r} in {tracking_uri()}: run `make compare` (or `make "
                        "study`) first or pass the experiment's name as shown by `make ui`")
    if parent_run_id is not None:
        return client.get_run(parent_run_id), exp.experiment_id
    parents = client.search_runs([exp.experiment_id], f"tags.`{ROLE_TAG}` = '{role}'",
                                 order_by=["attributes.start_time DESC"], max_results=1)
    if not parents:
        raise UserError(f"experiment {experiment!r} holds no {role} (no run tagged {ROLE_TAG}={role})")
    return parents[0], exp.experiment_id


def load_comparison(experiment: str, parent_run_id: str | None = None, role: str = "comparison",
                    photos: bool = False) -> tuple[object, list[RunRecord]]:
    """The parent run and a record of each of its FINISHED children (``photos``: with per-photo scores)."""
    from lk_segment.tracking import client as mlflow_client
    from lk_segment.tracking import finished_child_runs

    client = mlflow_client()
    parent, exp_id = load_parent(client, experiment, parent_run_id, role)
    latest = finished_child_runs(client, exp_id, parent.info.run_id)
    if not latest:
        raise UserError(f"{role} {parent.info.run_id} has no finished training yet: wait for its first run")
    return parent, [record(client, run, photos) for run in latest.values()]


def record(client, run, photos: bool = False) -> RunRecord:
    history = {key: [m.value for m in sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)]
               for key in HISTORY_KEYS}
    gpu = history[names.GPU_PEAK_MEM]
    fold = run.data.tags.get("fold")
    return RunRecord(
        variant=run.data.tags["variant"],
        seed=int(run.data.tags["seed"]),
        run_id=run.info.run_id,
        best_dice=max(history[names.VAL_DICE], default=math.nan),
        epoch_time_s=median(history[names.EPOCH_TIME]),
        images_per_s=median(history[names.IMAGES_PER_S]),
        peak_mem_mb=max(gpu or history[names.CPU_PEAK_RSS] or [math.nan]),
        mem_kind="GPU" if gpu else "CPU RSS",
        params=dict(run.data.params),
        metrics=dict(run.data.metrics),
        curves=history,
        erf=_load_erf(client, run.info.run_id),
        fold=int(fold) if fold is not None else None,
        photo_scores=_load_photo_scores(client, run.info.run_id) if photos else {},
        wall_s=(run.info.end_time - run.info.start_time) / 1000 if run.info.end_time else math.nan,
    )


def median(values: list[float]) -> float:
    return float(np.median(values)) if values else math.nan


def _download(client, run_id: str, folder: str, name: str) -> str | None:
    import mlflow

    from lk_segment.tracking import tracking_uri

    if f"{folder}/{name}" not in {a.path for a in client.list_artifacts(run_id, folder)}:
        return None
    return mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=f"{folder}/{name}",
                                               tracking_uri=tracking_uri())


def _load_erf(client, run_id: str) -> np.ndarray | None:
    path = _download(client, run_id, "erf", "erf.npy")
    return np.load(path) if path else None


def _load_photo_scores(client, run_id: str) -> dict[str, tuple[str, float]]:
    """The best checkpoint's full-resolution Dice of each validation photo (``full_res/best.csv``)."""
    path = _download(client, run_id, names.CSV_ARTIFACT_DIR, "best.csv")
    if path is None:
        return {}
    with open(path, newline="") as f:
        return {row["image"]: (row["car"], float(row["dice"])) for row in csv.DictReader(f)}
