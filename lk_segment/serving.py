"""The trained model as an MLflow model: photos in, masks out, loadable anywhere MLflow is.

Every training run logs its best checkpoint's model, fused (replk's deploy form), under the
run's ``model`` (``mlflow.pyfunc.load_model("runs:/<run id>/model")``, ``mlflow models serve``):

- input: RGB photos as one array (B, H, W, 3), or one photo (H, W, 3); values 0..255: uint8, or
  integers (JSON's numbers) within 0..255, never floats (a photo normalised to 0..1 is refused, not
  cast to black); at most ``MAX_BATCH`` photos of at most ``MAX_SIDE`` pixels a side;
- output: their 0/1 uint8 masks (B, H, W) (one photo: (H, W)), made exactly as ``make predict``
  makes them (the ``Predictor``: resize to the training size, normalise, model, bilinear
  upsampling, threshold).

The input is checked (``check_photos``) before any work; a bad request is answered 400 with one
line that says what was wrong, an error inside the model 500 with one line (the traceback goes
to the server's log, not to the client). The signature states the output alone: an input schema
would have MLflow's server cast JSON floats to uint8 before the model sees them, and refuse a
single photo.

``requirements()`` lists every distribution the model's code imports when MLflow loads it (at
this environment's versions; mlflow or mlflow-skinny, whichever is installed), so an environment
built from them (``mlflow models serve`` without ``--env-manager local``, ``mlflow models
build-docker``) can load it.

Format: MLflow's *models from code*. The model is defined by a Python file
(``lk_segment/mlflow_model.py``) shipped with the package's source (``code_paths``), and its
weights are a state dict read with ``torch.load(weights_only=True)``: loading it unpickles no
object, unlike a pickled ``PythonModel`` or ``mlflow.pytorch``'s default. ``torch.export``
(MLflow 3's other pickle-free PyTorch format) was not chosen: it would export the network alone,
and the resize, normalisation and upsampling around it would have to be rewritten in traced
tensor operations (OpenCV's area resize is not one), so its masks would no longer be those of
``make predict``.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np

from lk_segment import names
from lk_segment.errors import UserError
from lk_segment.training.checkpointing import fuse_checkpoint

PACKAGE_DIR = Path(__file__).resolve().parent
EXAMPLE_SHAPE = (1, 64, 96, 3)  # the input example: one small photo, so the logged model stays small
MAX_SIDE = 4096  # pixels: a Carvana photo is 1918 x 1280
MAX_BATCH = 16  # photos per request
# Distributions the model's code imports on its load path (lk_segment/mlflow_model.py -> serving -> predict ->
# system, config, checkpointing, data.carvana), each with the names it may be installed under.
REQUIREMENTS = {
    "torch": ("torch",), "lightning": ("lightning",), "torchmetrics": ("torchmetrics",), "numpy": ("numpy",),
    "opencv": ("opencv-python-headless", "opencv-python", "opencv-contrib-python-headless", "opencv-contrib-python"),
    "omegaconf": ("omegaconf",), "pillow": ("pillow",),
    "mlflow": ("mlflow", "mlflow-skinny"),  # a GPU image may carry mlflow-skinny alone
}


def save_deploy_checkpoint(ckpt: str | Path, dst: str | Path) -> Path:
    """The fused model's weights and what prediction reads of the hyper-parameters (the model, the
    training size), as a checkpoint: no optimizer state, no data folders."""
    return fuse_checkpoint(ckpt, dst, deploy=True)


def load_predictor(weights: str | Path, device: str = "auto"):
    """The ``Predictor`` of a checkpoint written by ``save_deploy_checkpoint``."""
    from lk_segment.inference import Predictor
    from lk_segment.training.checkpointing import load_system

    return Predictor(load_system(weights), device=device)


def check_photos(photos) -> np.ndarray:
    """The request's photos as uint8 (B, H, W, 3), or a ``UserError`` that says in one line what is wrong."""
    photos = np.asarray(photos)
    expected = (f"RGB photos (B, H, W, 3) or one photo (H, W, 3) of uint8 values 0..255, B <= {MAX_BATCH}, "
                f"H, W <= {MAX_SIDE}")
    if photos.ndim not in (3, 4) or photos.shape[-1] != 3:
        raise UserError(f"expected {expected}; got an array of shape {photos.shape}")
    batch = photos if photos.ndim == 4 else photos[None]
    if len(batch) == 0 or len(batch) > MAX_BATCH:
        raise UserError(f"expected 1 to {MAX_BATCH} photos a request; got {len(batch)}")
    height, width = batch.shape[1:3]
    if not (0 < height <= MAX_SIDE and 0 < width <= MAX_SIDE):
        raise UserError(f"expected photos of 1 to {MAX_SIDE} pixels a side; got {height} x {width}")
    if photos.dtype == np.uint8:
        return batch
    if photos.dtype.kind not in "iu":  # floats (a photo normalised to 0..1), booleans, strings, ragged lists
        raise UserError(f"expected uint8 values 0..255 (integers); got {photos.dtype} values: send the photo as "
                        "read, not normalised")
    low, high = int(batch.min()), int(batch.max())
    if low < 0 or high > 255:
        raise UserError(f"expected values 0..255; got values from {low} to {high}")
    return batch.astype(np.uint8)


def predict_masks(predictor, photos) -> np.ndarray:
    """(B, H, W, 3) RGB -> (B, H, W) uint8 0/1 masks; one (H, W, 3) photo -> its (H, W) mask."""
    batch = check_photos(photos)
    masks = np.stack(predictor.predict_batch(list(batch)))
    return masks if np.ndim(photos) == 4 else masks[0]


def signature():
    """The output's schema alone (see the module's docstring): (B, H, W) uint8 masks."""
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    return ModelSignature(outputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1))]))


def requirements() -> list[str]:
    """``name==version`` of each distribution the model's code imports, as installed here; a ``UserError``
    naming one that is missing (checked before a training starts, so it never fails a finished run)."""
    from importlib import metadata

    found = []
    for what, candidates in REQUIREMENTS.items():
        for name in candidates:
            try:
                found.append(f"{name}=={metadata.version(name).split('+')[0]}")
                break
            except metadata.PackageNotFoundError:
                continue
        else:
            raise UserError(f"the MLflow model needs {what} (one of {', '.join(candidates)}), which is not installed: "
                            "install it, or set tracking.log_model=false")
    return found


def log_model(run_id: str, ckpt: str | Path, tracking_uri: str, pip_requirements: list[str] | None = None) -> str:
    """Log ``ckpt``'s fused model to the run as ``model``; return its model URI (runs:/<id>/model).

    ``pip_requirements``: ``requirements()``, computed by the caller before the training (else here),
    in any case before the run is touched: an error inside ``mlflow.start_run`` would end it FAILED."""
    import mlflow

    from lk_segment.tracking import fluent_store  # not at the top: the served model's load path imports this module

    pip_requirements = requirements() if pip_requirements is None else pip_requirements
    example = np.random.default_rng(0).integers(0, 256, EXAMPLE_SHAPE, dtype=np.uint8)
    with tempfile.TemporaryDirectory() as tmp, fluent_store(tracking_uri):
        weights = save_deploy_checkpoint(ckpt, Path(tmp) / "weights.ckpt")
        code = shutil.copytree(PACKAGE_DIR, Path(tmp) / PACKAGE_DIR.name,
                               ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))  # the source alone
        with mlflow.start_run(run_id=run_id, log_system_metrics=False):
            mlflow.pyfunc.log_model(
                name=names.MODEL_NAME, python_model=str(code / "mlflow_model.py"), artifacts={"weights": str(weights)},
                code_paths=[str(code)], signature=signature(), input_example=example,
                pip_requirements=pip_requirements)
    return f"runs:/{run_id}/{names.MODEL_NAME}"
