"""MLflow: where the tracking store is, and how to find a run's checkpoints by its id.

The store is ``sqlite:///mlruns/mlflow.db`` with artifacts under ``mlruns/artifacts`` (MLflow
3 refuses a plain ./mlruns file store), unless ``MLFLOW_TRACKING_URI`` says otherwise.
"""

from __future__ import annotations

import json
import os
import re
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

from lk_segment import names
from lk_segment.errors import UserError

DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"
CHECKPOINT_ARTIFACT_DIR = "checkpoints"
# Tags of a comparison (``make compare``), read back by its report.
ROLE_TAG = "lk_segment.role"  # "comparison" on the parent run, "training" on its children
SWEEP_TAG = "lk_segment.sweep"  # hash of what must be identical for runs to be comparable
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own nesting tag: the UI folds children under it


def _configured_uri() -> tuple[str, Path | None]:
    """The store's URI as configured, and its SQLite file where it is one (relative to the working folder)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    return uri, Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def tracking_uri() -> str:
    uri, db = _configured_uri()
    if db is not None and not db.is_absolute():
        db.parent.mkdir(parents=True, exist_ok=True)
    return uri


_URI_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


@contextmanager
def fluent_store(uri: str | None = None):
    """MLflow's fluent API (``mlflow.start_run``, ``mlflow.register_model``, ``runs:/`` and ``models:/`` URIs)
    pointed at ``uri`` (default: ``tracking_uri()``) for the block, tracking and registry both; afterwards
    the process is as it was.

    MLflow keeps these URIs process-wide and its setters also write ``MLFLOW_TRACKING_URI`` and
    ``MLFLOW_REGISTRY_URI`` into ``os.environ``: left set, they outrank the environment a later caller
    names (a served model then loaded ``runs:/`` from a store of an earlier call: "Run ... not found").
    MLflow has no public getter for "not set", so its two module globals are read and put back here
    (tests/tracking/test_tracking_uri.py fails if MLflow renames them)."""
    import mlflow
    from mlflow.tracking._model_registry import utils as registry_state
    from mlflow.tracking._tracking_service import utils as tracking_state

    uri = uri or tracking_uri()
    environment = {name: os.environ.get(name) for name in _URI_VARIABLES}
    before = tracking_state._tracking_uri, registry_state._registry_uri
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield uri
    finally:
        mlflow.set_tracking_uri(before[0])  # also resets MLflow's tracer, which remembers the URI
        registry_state._registry_uri = before[1]
        for name, value in environment.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def redact(text: str) -> str:
    """``scheme://user:password@host`` -> ``scheme://***@host``: URIs may carry credentials (also once a
    path has collapsed the slashes: ``scheme:/user:password@host``)."""
    return re.sub(r"([a-zA-Z][\w+.-]*:/+)[^/@\s]+@", r"\1***@", str(text))


def public_config(cfg) -> dict:
    """The resolved config as a run may share it: its params, its ``config.yaml`` and the checkpoints'
    hyper-parameters are all made from this one.

    Credentials in URIs are masked (``redact``), and a value read from the environment
    (``${oc.env:NAME}``, or any value built from one) is kept as its expression, not resolved: the
    environment is where secrets live.
    """
    from omegaconf import OmegaConf

    def keep_env_expressions(node):
        if isinstance(node, dict):
            return {k: keep_env_expressions(v) for k, v in node.items()}
        if isinstance(node, list):
            return [keep_env_expressions(v) for v in node]
        if isinstance(node, str) and "${oc.env:" in node:
            return node.replace("${", "\\${")  # escaped: resolves to the expression's own text
        return node

    def redact_all(node):
        if isinstance(node, dict):
            return {k: redact_all(v) for k, v in node.items()}
        if isinstance(node, list):
            return [redact_all(v) for v in node]
        return redact(node) if isinstance(node, str) else node

    raw = OmegaConf.to_container(cfg, resolve=False)
    return redact_all(OmegaConf.to_container(OmegaConf.create(keep_env_expressions(raw)), resolve=True))


def prepare_store(experiment: str) -> None:
    """Fail early, in one line, on a store that cannot be reached; make SQLite share well.

    A SQLite store is switched to WAL journalling (persistent in the file: readers such as
    ``make ui`` no longer block writers) and the experiment is created under a file lock, so
    two trainings started at once on a fresh store do not race to create it.
    """
    uri = tracking_uri()
    if uri.startswith(("http://", "https://")):
        _check_server(uri)
        _check_served_artifacts(experiment)
    elif uri.startswith("sqlite:///"):
        import fcntl
        import sqlite3

        db = Path(uri.removeprefix("sqlite:///"))
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot create the MLflow store {redact(uri)} ({exc.strerror}): "
                            "set MLFLOW_TRACKING_URI to a writable place") from exc
        with open(db.with_name(db.name + ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                conn = sqlite3.connect(db, timeout=30)
                try:
                    conn.execute("PRAGMA journal_mode=WAL")
                finally:
                    conn.close()
                experiment_id(experiment)
            except sqlite3.DatabaseError as exc:
                raise UserError(f"MLflow store {redact(uri)} is not a readable SQLite database ({exc}): "
                                "set MLFLOW_TRACKING_URI to another store") from exc


# MLflow 3's UI opens an experiment in its GenAI view (traces, evaluations) unless the experiment
# says it holds model training; the runs table and charts are then its first screen.
EXPERIMENT_KIND_TAG, TRAINING_KIND = "mlflow.experimentKind", "custom_model_development"

# The runs table of MLflow 3 shows no metric until a user picks its columns, a choice kept in the
# browser only. A "shared view" (what the UI's own Share button writes: an experiment tag
# mlflow.sharedViewState.<key> holding the view as JSON, opened by ?viewStateShareKey=<key>) names
# the columns and the order, so the page that `make ui` prints lands on the Dice of every run.
VIEW_KEY = "lk_segment-runs"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"
# few enough that val/dice stays on screen beside the MLflow assistant's panel: MLflow orders metric
# columns by name (a columnOrder in the view is applied only some of the times the page loads)
VIEW_METRICS = (names.HEADLINE, names.VAL_DICE, names.EPOCH_TIME, names.GPU_PEAK_MEM)


def _column(kind: str, name: str) -> str:
    return f"{kind}.`{name}`"  # MLflow's canonical column key


def training_view() -> str:
    """The shared view of the training runs, as the JSON MLflow's UI reads: best headline Dice first."""
    # the run names say the variant; Models shows each run's logged model and registered version
    columns = [*(_column("metrics", m) for m in VIEW_METRICS), _column("attributes", "Models")]
    return json.dumps({"searchFilter": "", "orderByKey": _column("metrics", names.HEADLINE), "orderByAsc": False,
                       "selectedColumns": columns})


def mark_training_experiment(mlflow_client, experiment_id: str, tags: dict[str, str] | None = None) -> None:
    """Tag the experiment as model training and give it the runs view (each once), so the UI opens on its runs.

    ``tags``: the experiment's tags where the caller has them already (else they are read)."""
    if tags is None:
        tags = mlflow_client.get_experiment(experiment_id).tags
    wanted = {EXPERIMENT_KIND_TAG: TRAINING_KIND, VIEW_TAG: training_view()}
    for key, value in wanted.items():
        if tags.get(key) != value:
            mlflow_client.set_experiment_tag(experiment_id, key, value)


def experiment_urls(base_url: str) -> dict[str, str]:
    """{experiment name: the UI page of its training runs, best headline Dice first}: the experiments with
    runs first, the one whose latest run started last leading; then those without runs, newest first."""
    from urllib.parse import urlencode

    query = urlencode({"workflowType": "machine_learning", "compareRunsMode": "TABLE", "viewStateShareKey": VIEW_KEY})
    mlflow_client = client()
    experiments = [e for e in mlflow_client.search_experiments(order_by=["creation_time DESC"]) if e.name != "Default"]
    latest = {}
    for experiment in experiments:  # experiments logged before the view existed get it now
        mark_training_experiment(mlflow_client, experiment.experiment_id, experiment.tags)
        runs = mlflow_client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"],
                                         max_results=1)
        latest[experiment.name] = runs[0].info.start_time if runs else None
    experiments.sort(key=lambda e: (latest[e.name] is None, -(latest[e.name] or 0)))  # stable: creation order after
    return {e.name: f"{base_url.rstrip('/')}/#/experiments/{e.experiment_id}/runs?{query}" for e in experiments}


def has_runs(experiment: str) -> bool:
    found = client().get_experiment_by_name(experiment)
    return found is not None and bool(client().search_runs([found.experiment_id], max_results=1))


def _check_served_artifacts(experiment: str) -> None:
    """Against a server, the experiment's artifacts must go through it, not to a folder of one machine."""
    found = client().get_experiment_by_name(experiment)
    if found is not None and found.artifact_location.startswith("file:"):
        raise UserError(f"experiment {experiment!r} on {redact(tracking_uri())} keeps its artifacts in a local "
                        f"folder ({found.artifact_location}) that other machines cannot write: log to another "
                        "experiment (experiment=<name>), created through the server (make server)")


def _check_server(uri: str, timeout_s: float = 30.0) -> None:
    """One API call with a timeout (MLflow itself retries an unreachable server for minutes), with the
    credentials MLflow's client would send: a refusal says what it needs, not "unreachable"."""
    import base64
    import ssl
    import urllib.error
    import urllib.request

    parts = urlsplit(uri)
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if parts.username and not user:  # http://user:password@host
        user, password = parts.username, parts.password or ""
    netloc = parts.hostname + (f":{parts.port}" if parts.port else "") if parts.hostname else parts.netloc
    url = f"{parts.scheme}://{netloc}{parts.path.rstrip('/')}/api/2.0/mlflow/experiments/search?max_results=1"
    headers = {}
    if os.environ.get("MLFLOW_TRACKING_TOKEN"):
        headers["Authorization"] = f"Bearer {os.environ['MLFLOW_TRACKING_TOKEN']}"
    elif user:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password or ''}".encode()).decode()
    context = None
    if parts.scheme == "https":
        context = ssl.create_default_context(cafile=os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH") or None)
        if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true":
            context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    where = redact(uri)
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout_s,
                                    context=context):
            return
    except urllib.error.HTTPError as exc:
        if exc.code == 401:
            said = "were refused" if headers else "are needed"
            raise UserError(f"the MLflow tracking server {where} answered 401: credentials {said}; set "
                            "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (a user of its make server "
                            "AUTH=1)") from exc
        if exc.code == 403:
            raise UserError(f"the MLflow tracking server {where} answered 403: user {user!r} may not read "
                            "experiments there; ask its admin for a permission") from exc
        raise UserError(f"the MLflow tracking server {where} answered {exc.code} to an API call: is it an MLflow "
                        "server (make server), and MLFLOW_TRACKING_URI its address?") from exc
    except (OSError, ValueError) as exc:  # URLError, a timeout, a refused connection, a bad address
        reason = getattr(exc, "reason", None) or exc
        raise UserError(f"cannot reach the MLflow tracking server {where} ({reason}): start it "
                        "(e.g. make server) or set MLFLOW_TRACKING_URI to a reachable store") from exc


def artifact_location() -> str | None:
    """Artifacts of new experiments go under mlruns/artifacts beside the default store."""
    if tracking_uri() == DEFAULT_TRACKING_URI:
        return Path("mlruns/artifacts").resolve().as_uri()
    return None


def experiment_id(name: str, mlflow_client=None) -> str:
    """The id of the experiment ``name``, created (its artifacts under ``artifact_location()``) if it is new."""
    c = mlflow_client or client()
    found = c.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    return c.create_experiment(name, artifact_location=artifact_location())


def client():
    """A client of the project's store, for runs and for the model registry, whatever URIs MLflow was given
    earlier in the process (its registry URI is process-wide; a client given no registry URI follows it)."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri(), registry_uri=tracking_uri())


def get_run(run_id: str, hint: str = "or pass CKPT=<path to a .ckpt> instead"):
    from mlflow.exceptions import MlflowException

    uri, db = _configured_uri()
    if db is not None and not db.is_file():
        # a lookup in a folder with no store: said as such, and no empty store is created here for it
        raise UserError(f"no MLflow run with id {run_id!r}: there is no store at {redact(uri)} (run the command "
                        "from the folder that holds mlruns/, or set MLFLOW_TRACKING_URI)")
    try:
        return client().get_run(run_id)
    except MlflowException as exc:
        raise UserError(f"no MLflow run with id {run_id!r} in {redact(tracking_uri())}: copy the id from "
                        f"`make ui` {hint}") from exc


def last_run_id(experiment: str, variant: str) -> str:
    """The latest run of ``variant`` in ``experiment``: what ``resume=last`` continues."""
    found = client().get_experiment_by_name(experiment)
    runs = [] if found is None else client().search_runs(
        [found.experiment_id], f"tags.variant = '{variant}'", order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        raise UserError(f"resume=last: no run of variant {variant!r} in experiment {experiment!r} of "
                        f"{redact(tracking_uri())}: start one without resume, or give its run id")
    return runs[0].info.run_id


def finished_child_runs(client, experiment_id: str, parent_id: str) -> dict[tuple[str, int], object]:
    """(variant, seed) -> the FINISHED child run of a comparison (the latest where a pair was retried)."""
    runs = client.search_runs(
        [experiment_id], f"tags.`{PARENT_TAG}` = '{parent_id}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time ASC"], max_results=10000,
    )
    return {(r.data.tags["variant"], int(r.data.tags["seed"])): r for r in runs}


def find_checkpoint(run_id: str, which: str = "best") -> Path:
    """Download (or, for a local store, locate) the run's best (else last) checkpoint."""
    import mlflow

    run = get_run(run_id)
    paths = [a.path for a in client().list_artifacts(run.info.run_id, CHECKPOINT_ARTIFACT_DIR)]
    ckpts = sorted(n for n in paths if n.endswith(".ckpt"))
    preferred = [n for n in ckpts if Path(n).name.startswith(which)] or ckpts
    if not preferred:
        raise UserError(f"run {run_id!r} has no checkpoint among its artifacts: did its training finish "
                        "an epoch? Pass CKPT=<path to a .ckpt> instead")
    local = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path=preferred[-1],
                                                tracking_uri=tracking_uri())
    return Path(local)
