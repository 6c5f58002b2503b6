"""The MLflow model registry: a run's model as a version of a named model, with an alias.

    make register RUN=<run id> [NAME=lk-segment] [ALIAS=champion]
    make predict MODEL=models:/lk-segment@champion INPUT=... OUT=...

``make compare`` registers every variant's best seed as a version of the model named after its
experiment, tagged with its variant, and gives the best variant (by the comparison's headline
Dice) the alias ``champion``.
"""

from __future__ import annotations

from pathlib import Path

from lk_segment import names
from lk_segment.errors import UserError
from lk_segment.tracking import client, fluent_store, get_run, redact, tracking_uri


def register(run_id: str, name: str = names.REGISTERED_MODEL, alias: str | None = names.CHAMPION,
             tags: dict[str, str] | None = None) -> str:
    """Register ``runs:/<run_id>/model`` as a new version of ``name``; set ``alias`` on it; return the version."""
    import mlflow
    from mlflow.exceptions import MlflowException

    run = get_run(run_id, hint="(make register RUN=<run id>)")
    source = f"runs:/{run_id}/{names.MODEL_NAME}"
    with fluent_store():
        try:
            mlflow.models.get_model_info(source)
        except (MlflowException, OSError) as exc:
            raise UserError(f"run {run_id!r} has no MLflow model ({source}): it was trained before models "
                            "were logged, with tracking.log_model=false, or did not finish an epoch; "
                            "train it again") from exc
        tags = {"variant": run.data.tags.get("variant", ""), "run_id": run_id, **(tags or {})}
        version = mlflow.register_model(source, name, tags=tags).version
    if alias:
        client().set_registered_model_alias(name, alias, version)
    return str(version)


def weights_of(model_uri: str) -> Path:
    """The fused checkpoint inside a logged model (``models:/name@alias``, ``models:/name/3``, ``runs:/id/model``),
    downloaded, for ``make predict`` (its own device, batching and TTA)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        with fluent_store() as uri:  # models:/ URIs resolve against the registry: this store's
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=f"{model_uri.rstrip('/')}/artifacts/weights.ckpt", tracking_uri=uri)
    except (MlflowException, OSError) as exc:
        raise UserError(f"no lk_segment model at {model_uri!r} in {redact(tracking_uri())}: give "
                        "models:/<name>@<alias>, models:/<name>/<version> or runs:/<run id>/model "
                        "(make ui lists the registered models)") from exc
    return Path(local)


def register_comparison(experiment: str, parent_run_id: str, ranking: list[tuple[str, str, int]]) -> dict[str, str]:
    """Each variant's chosen run as a version of the model ``experiment``, tagged with its variant; the
    alias ``champion`` on the first. ``ranking``: (variant, run id, seed), best first, as the comparison's
    report ranked them from its records (``lk_segment.comparison``).

    Returns {variant: version}; runs logged without a model (``tracking.log_model=false``) are left out.
    """
    versions: dict[str, str] = {}
    for variant, run_id, seed in ranking:
        try:
            versions[variant] = register(run_id, experiment, alias=None,
                                         tags={"seed": str(seed), "parent_run_id": parent_run_id})
        except UserError as exc:
            print(f"[compare] {variant} not registered: {exc}", flush=True)
    if versions:
        champion = next(iter(versions))
        client().set_registered_model_alias(experiment, names.CHAMPION, versions[champion])
    return versions
