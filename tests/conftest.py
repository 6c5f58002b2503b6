"""Shared fixtures: a tiny synthetic Carvana, an isolated MLflow store, a tiny config."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from lk_segment.config import load_config  # noqa: E402
from lk_segment.data.synthetic import generate  # noqa: E402

TINY_CARS = 4  # 4 cars x 16 views = 64 images
TINY_SIZE = (240, 160)  # width, height of the generated photos (1/8 of Carvana's)


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    """A small dataset in the Kaggle layout (train/, train_masks/), generated once per session."""
    root = tmp_path_factory.mktemp("carvana_tiny")
    return generate(root, cars=TINY_CARS, width=TINY_SIZE[0], height=TINY_SIZE[1], workers=1, progress=False)


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """Run in a fresh folder with its own MLflow store, cache and checkpoints."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    (tmp_path / "mlruns").mkdir()
    return tmp_path


def tiny_overrides(root: Path, *extra: str) -> list[str]:
    return [
        f"data.root={root}", "data.height=64", "data.batch_size=8", "data.augment=false",
        "model.width=4", "model.depth=3", "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
        "experiment=test", *extra,
    ]


@pytest.fixture
def tiny_cfg(tiny_root, workdir):
    def make(variant: str = "3x3", *extra: str):
        return load_config(variant, tiny_overrides(tiny_root, *extra))

    return make


def pytest_collection_modifyitems(config, items):
    """``@pytest.mark.cuda`` tests are skipped, saying why, where torch sees no CUDA GPU."""
    import torch

    from lk_segment.device import torch_build

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason=f"needs a CUDA GPU: none seen ({torch_build()}); make gpu-check runs "
                                   "these on a GPU machine")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


def carvana_root() -> Path | None:
    root = os.environ.get("LK_CARVANA_ROOT")
    return Path(root) if root else None


requires_carvana = pytest.mark.skipif(
    carvana_root() is None, reason="LK_CARVANA_ROOT is unset: point it at the real Carvana sample to run this test"
)


@pytest.fixture(scope="session")
def tiny_comparison(tiny_root, tmp_path_factory) -> dict:
    """A finished comparison (3x3 and 1x5, 2 seeds, 1 epoch each) in its own folder and store.

    Shared by tests/test_compare.py and tests/test_browser.py: four trainings, run once, two
    at a time (the one-training-per-GPU scheduler, here on CPU).
    """
    from lk_segment.compare import compare

    work = tmp_path_factory.mktemp("comparison")
    uri = f"sqlite:///{work}/mlruns/mlflow.db"
    (work / "mlruns").mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        overrides = [o for o in tiny_overrides(tiny_root) if not o.startswith("experiment=")]
        result = compare(["3x3", "1x5"], 2, overrides, experiment="tiny_compare", report_dir=work / "report", workers=2)
    return {"work": work, "uri": uri, "experiment": "tiny_compare", "overrides": overrides, **result}
