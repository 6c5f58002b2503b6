"""MLflow: where the tracking store is, and how to find a run's checkpoints by its id.

The store is ``sqlite:///mlruns/mlflow.db`` with artifacts under ``mlruns/artifacts`` (MLflow
3 refuses a plain ./mlruns file store), unless ``MLFLOW_TRACKING_URI`` says otherwise.
"""

from __future__ import annotations

import os
from pathlib import Path

from lk_segment.errors import UserError

DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"
CHECKPOINT_ARTIFACT_DIR = "checkpoints"


def tracking_uri() -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return uri


def artifact_location() -> str | None:
    """Artifacts of new experiments go under mlruns/artifacts beside the default store."""
    if tracking_uri() == DEFAULT_TRACKING_URI:
        return Path("mlruns/artifacts").resolve().as_uri()
    return None


def client():
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri())


def get_run(run_id: str):
    from mlflow.exceptions import MlflowException

    try:
        return client().get_run(run_id)
    except MlflowException as exc:
        raise UserError(f"no MLflow run with id {run_id!r} in {tracking_uri()}: copy the id from `make ui` "
                        "or pass CKPT=<path to a .ckpt> instead") from exc


def find_checkpoint(run_id: str, which: str = "best") -> Path:
    """Download (or, for a local store, locate) the run's best (else last) checkpoint."""
    import mlflow

    run = get_run(run_id)
    names = [a.path for a in client().list_artifacts(run.info.run_id, CHECKPOINT_ARTIFACT_DIR)]
    ckpts = sorted(n for n in names if n.endswith(".ckpt"))
    preferred = [n for n in ckpts if Path(n).name.startswith(which)] or ckpts
    if not preferred:
        raise UserError(f"run {run_id!r} has no checkpoint among its artifacts: did its training finish "
                        "an epoch? Pass CKPT=<path to a .ckpt> instead")
    local = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path=preferred[-1],
                                                tracking_uri=tracking_uri())
    return Path(local)
