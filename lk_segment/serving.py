"""The trained model as an MLflow model: photos in, masks out, loadable anywhere MLflow is.

Every training run logs its best checkpoint's model, fused (replk's deploy form), under the
run's ``model`` (``mlflow.pyfunc.load_model("runs:/<run id>/model")``, ``mlflow models serve``):

- input: RGB uint8 photos as one array (B, H, W, 3) of any H, W (one photo: (H, W, 3));
- output: their 0/1 uint8 masks (B, H, W), made exactly as ``make predict`` makes them (the
  ``Predictor``: resize to the training size, normalise, model, bilinear upsampling, threshold).

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
import torch

from lk_segment.checkpointing import load_checkpoint
from lk_segment.errors import UserError

MODEL_NAME = "model"  # runs:/<run id>/model
PACKAGE_DIR = Path(__file__).resolve().parent
EXAMPLE_SHAPE = (1, 64, 96, 3)  # the input example: one small photo, so the logged model stays small


def save_deploy_checkpoint(ckpt: str | Path, dst: str | Path) -> Path:
    """The fused model's weights and hyper-parameters alone (no optimizer state), as a checkpoint."""
    from lk_segment.predict import system_from_checkpoint

    checkpoint = load_checkpoint(ckpt)
    system = system_from_checkpoint(ckpt, checkpoint).eval()
    system.model.reparameterize()
    hparams = {**checkpoint["hyper_parameters"], "model": {**checkpoint["hyper_parameters"]["model"], "fused": True}}
    torch.save({"state_dict": system.state_dict(), "hyper_parameters": hparams}, dst)
    return Path(dst)


def load_predictor(weights: str | Path, device: str = "auto"):
    """The ``Predictor`` of a checkpoint written by ``save_deploy_checkpoint``."""
    from lk_segment.predict import Predictor, load_system

    return Predictor(load_system(weights), device=device)


def predict_masks(predictor, photos) -> np.ndarray:
    """(B, H, W, 3) or (H, W, 3) uint8 RGB -> (B, H, W) uint8 0/1 masks."""
    photos = np.asarray(photos)
    if photos.ndim == 3:
        photos = photos[None]
    if photos.ndim != 4 or photos.shape[-1] != 3:
        raise UserError(f"expected RGB photos (B, H, W, 3) or (H, W, 3), got an array of shape {photos.shape}")
    photos = photos.astype(np.uint8, copy=False)
    return np.stack(predictor.predict_batch(list(photos)))


def signature():
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    return ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1, 3))]),
                          outputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1))]))


def requirements() -> list[str]:
    """What the model's code imports, at this environment's versions."""
    from importlib.metadata import version

    names = ["torch", "lightning", "torchmetrics", "numpy", "opencv-python-headless", "mlflow"]
    return [f"{n}=={version(n).split('+')[0]}" for n in names]


def log_model(run_id: str, ckpt: str | Path, tracking_uri: str) -> str:
    """Log ``ckpt``'s fused model to the run as ``model``; return its model URI (runs:/<id>/model)."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    example = np.random.default_rng(0).integers(0, 256, EXAMPLE_SHAPE, dtype=np.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        weights = save_deploy_checkpoint(ckpt, Path(tmp) / "weights.ckpt")
        code = shutil.copytree(PACKAGE_DIR, Path(tmp) / PACKAGE_DIR.name,
                               ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))  # the source alone
        with mlflow.start_run(run_id=run_id, log_system_metrics=False):
            mlflow.pyfunc.log_model(
                name=MODEL_NAME, python_model=str(code / "mlflow_model.py"), artifacts={"weights": str(weights)},
                code_paths=[str(code)], signature=signature(), input_example=example,
                pip_requirements=requirements())
    return f"runs:/{run_id}/{MODEL_NAME}"
