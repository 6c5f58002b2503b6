"""The served model: its input checks, its answers to bad requests, its requirements (lk_segment/serving.py)."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import torch

from lk_segment import serving
from lk_segment.errors import UserError
from lk_segment.inference import Predictor
from lk_segment.system import SegmentationSystem
from tests.conftest import free_port, store_uri

TINY_MODEL = {"block": "3x3", "width": 4, "depth": 3}
TINY_DATA = {"height": 64, "width": 96}


def tiny_system() -> SegmentationSystem:
    torch.manual_seed(0)
    return SegmentationSystem(model=TINY_MODEL, optim={}, data=TINY_DATA).eval()


def photos(*shape, dtype=np.uint8) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, shape).astype(dtype)


@pytest.mark.parametrize("bad, says", [
    (photos(64, 96), "shape (64, 96)"),  # no channels
    (photos(1, 64, 96, 4), "shape (1, 64, 96, 4)"),  # RGBA
    (photos(1, 1, 64, 96, 3), "shape (1, 1, 64, 96, 3)"),
    (photos(serving.MAX_BATCH + 1, 8, 8, 3), f"1 to {serving.MAX_BATCH} photos"),
    (photos(0, 8, 8, 3), f"1 to {serving.MAX_BATCH} photos"),
    (photos(1, serving.MAX_SIDE + 1, 8, 3), f"1 to {serving.MAX_SIDE} pixels"),
    (photos(1, 64, 96, 3, dtype=np.float64) / 255, "float64 values"),  # normalised to 0..1: not cast to black
    (photos(1, 64, 96, 3, dtype=np.float32), "float32 values"),
    (photos(1, 8, 8, 3, dtype=np.int64) + 200, "values from 200 to 455"),
    (photos(1, 8, 8, 3, dtype=np.int64) - 300, "values from -300"),
    (np.full((1, 8, 8, 3), "a"), "<U1 values"),
])
def test_a_bad_request_is_refused_in_one_line_before_any_work(bad, says):
    with pytest.raises(UserError) as refused:
        serving.check_photos(bad)
    assert says in str(refused.value) and "\n" not in str(refused.value)


def test_uint8_or_json_integers_are_accepted():
    batch = photos(2, 64, 96, 3)
    assert serving.check_photos(batch) is batch
    as_json = np.asarray(batch.tolist())  # what MLflow's server parses from JSON numbers: int64
    assert as_json.dtype == np.int64
    checked = serving.check_photos(as_json)
    assert checked.dtype == np.uint8 and np.array_equal(checked, batch)
    assert serving.check_photos(batch[0]).shape == (1, 64, 96, 3)


def test_one_photo_gives_its_mask_a_batch_gives_theirs():
    predictor = Predictor(tiny_system())
    batch = photos(2, 50, 70, 3)
    masks = serving.predict_masks(predictor, batch)
    assert masks.shape == (2, 50, 70) and masks.dtype == np.uint8
    single = serving.predict_masks(predictor, batch[1])
    assert single.shape == (50, 70)
    np.testing.assert_array_equal(single, masks[1])


def _without(*missing: str):
    """importlib.metadata.version as in an environment where ``missing`` are not installed."""
    real = metadata.version

    def version(name):
        if name in missing:
            raise metadata.PackageNotFoundError(name)
        return real(name)

    return version


def test_requirements_name_mlflow_skinny_where_it_is_installed_alone(monkeypatch):
    monkeypatch.setattr(metadata, "version", _without("mlflow"))
    names = [r.split("==")[0] for r in serving.requirements()]
    assert "mlflow-skinny" in names and "mlflow" not in names
    assert f"mlflow-skinny=={metadata.version('mlflow-skinny').split('+')[0]}" in serving.requirements()


def test_requirements_missing_a_distribution_say_which(monkeypatch):
    monkeypatch.setattr(metadata, "version", _without("mlflow", "mlflow-skinny"))
    with pytest.raises(UserError, match="needs mlflow .*tracking.log_model=false"):
        serving.requirements()


def log_untrained_model(work: Path) -> tuple[str, str]:
    """An untrained tiny model logged as a run's MLflow model in ``work``'s store: (model URI, store URI)."""
    from lk_segment.tracking import client

    uri = store_uri(work)
    ckpt = work / "tiny.ckpt"
    system = tiny_system()
    torch.save({"state_dict": system.state_dict(), "hyper_parameters": dict(system.hparams)}, ckpt)
    run = client().create_run(client().create_experiment("serving", artifact_location=(work / "art").as_uri()))
    model_uri = serving.log_model(run.info.run_id, ckpt, uri)
    client().set_terminated(run.info.run_id)
    return model_uri, uri


@pytest.fixture(scope="module")
def logged_model(tmp_path_factory):
    work = tmp_path_factory.mktemp("served")
    with pytest.MonkeyPatch.context() as mp:
        from tests.conftest import use_working_folder

        use_working_folder(mp, work)
        model_uri, uri = log_untrained_model(work)
    return model_uri, uri, work


def test_logging_a_model_leaves_mlflow_where_the_environment_points(logged_model, tmp_path, monkeypatch):
    """log_model once set MLflow's process-wide URI and left it: a later load of runs:/ in the same process
    then looked in the logging call's store ("Run ... not found")."""
    import mlflow

    later = f"sqlite:///{tmp_path}/later.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", later)
    assert mlflow.get_tracking_uri() == later and mlflow.get_registry_uri() == later


LOAD_AND_PREDICT = textwrap.dedent("""
    import sys
    for name in sys.argv[2:]:  # made unimportable, as where they are not installed
        sys.modules[name] = None
    import json, numpy as np, mlflow.pyfunc
    model = mlflow.pyfunc.load_model(sys.argv[1])
    model.predict(np.zeros((1, 64, 96, 3), np.uint8))
    files = {name: getattr(m, "__file__", None) for name, m in list(sys.modules.items()) if m is not None}
    print(json.dumps(files))
""")


@pytest.mark.slow
def test_the_declared_requirements_cover_every_distribution_the_load_path_imports(logged_model):
    """Loads and predicts in a fresh process, then maps every module it imported to its distribution: those
    lk_segment's own code imports must be declared; any other must come with a declared one, or the model
    must load and predict without it (an optional import, such as psutil's)."""
    from packaging.requirements import Requirement

    model_uri, uri, work = logged_model

    def load_and_predict(*blocked: str) -> dict[str, str | None]:
        env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
        out = subprocess.run([sys.executable, "-c", LOAD_AND_PREDICT, model_uri, *blocked], cwd=work,
                             capture_output=True, text=True, timeout=600, env=env)
        assert out.returncode == 0, out.stderr[-3000:]
        return json.loads(out.stdout.strip().splitlines()[-1])

    files = load_and_predict()
    owners = metadata.packages_distributions()  # top-level module -> the distributions that install it

    def norm(name: str) -> str:
        return name.lower().replace("_", "-")

    declared = {norm(r.split("==")[0]) for r in serving.requirements()}
    brought, todo = set(), list(declared)  # the declared distributions and what they require, transitively
    while todo:
        name = todo.pop()
        if name in brought:
            continue
        brought.add(name)
        for line in metadata.requires(name) or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(norm(req.name))

    def uncovered(modules, by: set[str]) -> set[str]:
        """The modules installed by some distribution, none of which is in ``by`` (mlflow: mlflow or mlflow-skinny)."""
        return {m for m in modules if owners.get(m) and not {norm(d) for d in owners[m]} & (by | {"lk-segment"})}

    ours = [f for name, f in files.items() if name.startswith("lk_segment") and f]
    checkout = Path(__file__).resolve().parents[2]
    assert ours and not any(checkout in Path(f).parents for f in ours)  # the model's own copy of the code
    direct = set()  # what lk_segment's loaded modules import at their top level
    for f in ours:
        for node in ast.parse(Path(f).read_text()).body:
            if isinstance(node, ast.Import):
                direct |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                direct.add(node.module.split(".")[0])
    assert {"omegaconf", "PIL", "cv2"} <= direct  # the test sees the load path
    assert not uncovered(direct, declared), "imported by lk_segment's code on the load path, not declared"
    optional = uncovered({name.split(".")[0] for name in files}, brought)  # brought by no requirement
    assert not direct & optional
    assert not {name.split(".")[0] for name in load_and_predict(*optional)} & optional  # loads without them
    assert {"omegaconf", "pillow"} <= declared


def _serve(model):
    """MLflow's own scoring app (what `mlflow models serve` runs) for ``model``, on a free port, in a thread."""
    import uvicorn
    from mlflow.pyfunc import scoring_server

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(scoring_server.init(model), host="127.0.0.1", port=port,
                                           log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 60
    while not server.started:
        assert time.time() < deadline and thread.is_alive()
        time.sleep(0.1)
    return server, thread, f"http://127.0.0.1:{port}/invocations"


def _post(url: str, body) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.slow
def test_the_served_model_answers_bad_requests_400_and_its_own_errors_500_in_one_line(logged_model, monkeypatch):
    import mlflow.pyfunc

    model_uri, uri, _ = logged_model
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    model = mlflow.pyfunc.load_model(model_uri)
    server, thread, url = _serve(model)
    try:
        photo = photos(40, 60, 3)
        status, answer = _post(url, {"inputs": photo.tolist()})  # one photo: its mask
        assert status == 200 and np.asarray(answer["predictions"]).shape == (40, 60)
        status, answer = _post(url, {"inputs": [photo.tolist(), photo.tolist()]})
        assert status == 200 and np.asarray(answer["predictions"]).shape == (2, 40, 60)

        bad_requests = {"float64 values": (photo / 255).tolist(),  # normalised: once answered 200, all background
                        "shape (40, 60)": photo[..., 0].tolist(),
                        "values from 0 to 300": (photo.astype(int) + np.eye(40, 60, dtype=int)[..., None] * 300
                                                 ).clip(0, 300).tolist()}
        for says, inputs in bad_requests.items():
            status, answer = _post(url, {"inputs": inputs})
            assert status == 400 and says in answer["message"], (says, answer)
            assert "\n" not in answer["message"] and "stack_trace" not in answer and "[[" not in answer["message"]

        def fail(images):
            raise RuntimeError(f"a failure inside the model, from {Path(__file__).parent}")

        monkeypatch.setattr(model._model_impl.python_model.predictor, "predict_batch", fail)
        status, answer = _post(url, {"inputs": photo.tolist()})
        assert status == 500 and "RuntimeError" in answer["message"] and "stack_trace" not in answer
        assert str(Path(__file__).parent) not in json.dumps(answer)  # the server's paths stay in its log
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.mark.slow
def test_a_training_where_only_mlflow_skinny_is_installed_logs_its_model(tiny_cfg, monkeypatch):
    """Once, there: the requirements raised inside mlflow.start_run, and a finished training ended FAILED."""
    from mlflow.artifacts import download_artifacts

    from lk_segment.commands.train import train
    from tests.conftest import store_client

    monkeypatch.setattr(metadata, "version", _without("mlflow"))
    result = train(tiny_cfg("3x3", "tracking.log_model=true"))
    uri = os.environ["MLFLOW_TRACKING_URI"]
    assert store_client(uri).get_run(result["run_id"]).info.status == "FINISHED"
    requirements = Path(download_artifacts(f"runs:/{result['run_id']}/model/requirements.txt", tracking_uri=uri))
    assert "mlflow-skinny==" in requirements.read_text() and "\nmlflow==" not in f"\n{requirements.read_text()}"
