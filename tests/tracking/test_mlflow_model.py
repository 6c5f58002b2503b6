"""The MLflow model every run logs: it loads in a fresh process and `mlflow models serve` answers.

A small 3x3 is trained on part of the real Carvana sample, so that the served mask of a real
photo can be scored against its true mask.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from lk_segment.data.carvana import find_samples, read_mask
from lk_segment.inference import Predictor, read_rgb
from lk_segment.training.checkpointing import load_system
from lk_segment.training.full_res import dice_of
from tests.conftest import carvana_root, free_port, requires_carvana

pytestmark = [pytest.mark.slow, requires_carvana]


@pytest.fixture(scope="module")
def logged(real_run, tmp_path_factory):
    """(train() result, its store URI, one validation photo's sample) of the session's run on 6 real cars."""
    result = real_run["result"]
    listed = MlflowClient(real_run["uri"]).download_artifacts(result["run_id"], "val_cars.txt",
                                                              str(tmp_path_factory.mktemp("logged")))
    val_cars = set(Path(listed).read_text().split())  # the cars the run validated on, as it logged them
    samples, _ = find_samples(carvana_root())
    photo = next(s for s in samples if s.car in val_cars)
    return result, real_run["uri"], photo


def test_every_run_logs_its_model_with_a_signature(logged):
    result, uri, _ = logged
    from mlflow.models import Model

    client = MlflowClient(uri)
    run = client.get_run(result["run_id"])
    assert run.info.status == "FINISHED"
    # the run's one logged model, found through its own store: runs:/ and get_model_info would ask whatever store
    # MLflow's process-wide tracking URI names (the last one a training in this process logged a model to)
    (output,) = run.outputs.model_outputs
    info = Model.load(client.get_logged_model(output.model_id).artifact_location)
    assert info.signature.inputs is None  # the model checks its input itself (serving.check_photos)
    assert info.signature.outputs.to_dict()[0]["tensor-spec"]["dtype"] == "uint8"


def test_the_model_predicts_in_a_fresh_process_from_its_own_code(logged, tmp_path):
    result, uri, photo = logged
    script = textwrap.dedent("""
        import sys, numpy as np, cv2, mlflow.pyfunc
        model = mlflow.pyfunc.load_model(sys.argv[1])
        rgb = cv2.cvtColor(cv2.imread(sys.argv[2]), cv2.COLOR_BGR2RGB)
        np.save(sys.argv[3], model.predict(rgb[None]))
        print(sys.modules["lk_segment"].__file__)
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"MLFLOW_TRACKING_URI": uri}
    out = subprocess.run([sys.executable, "-c", script, f"runs:/{result['run_id']}/model", str(photo.image),
                          str(tmp_path / "mask.npy")], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    source = Path(out.stdout.strip().splitlines()[-1])
    assert Path(__file__).resolve().parents[2] not in source.parents  # the model's copy, not this checkout
    mask = np.load(tmp_path / "mask.npy")
    expected = Predictor(load_system(result["best_checkpoint"])).predict(read_rgb(photo.image))
    assert mask.shape == (1, *expected.shape) and mask.dtype == np.uint8
    np.testing.assert_array_equal(mask[0], expected)  # make predict's mask


def test_mlflow_models_serve_answers_with_the_mask_of_a_real_photo(logged, tmp_path):
    result, uri, photo = logged
    port = free_port()
    # the scoring server runs `uvicorn` from PATH: the environment's own bin folder, as when it is activated
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}"}
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen([str(Path(sys.executable).with_name("mlflow")), "models", "serve", "-m",
                             f"runs:/{result['run_id']}/model", "--env-manager", "local", "-h", "127.0.0.1",
                             "-p", str(port)], cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.time() + 300
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None and time.time() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
            time.sleep(1)
        rgb = read_rgb(photo.image)
        body = json.dumps({"inputs": rgb[None].tolist()}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                         headers={"Content-Type": "application/json"})
        start = time.perf_counter()
        with urllib.request.urlopen(request, timeout=300) as r:
            answer = json.loads(r.read())
        latency_s = time.perf_counter() - start
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
        log.close()
    mask = np.asarray(answer["predictions"], dtype=np.uint8)
    assert mask.shape == (1, *rgb.shape[:2])
    dice, _, _ = dice_of(mask[0], read_mask(photo.mask))
    expected, _, _ = dice_of(Predictor(load_system(result["best_checkpoint"])).predict(rgb), read_mask(photo.mask))
    assert dice == pytest.approx(expected) and dice > 0.5  # make predict's mask of a car, not noise
    print(f"served mask of {photo.image.name}: shape {mask.shape[1:]}, Dice {dice:.4f}, {latency_s:.1f} s")
