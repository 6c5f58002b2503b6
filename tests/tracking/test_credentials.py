"""Credentials stay out of every artifact: the run's, its model's, the registry's (tracking.public_config)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from lk_segment.commands.train import train
from lk_segment.config import load_config
from lk_segment.model_registry import register
from lk_segment.serving import save_deploy_checkpoint
from lk_segment.tracking import public_config
from tests.conftest import free_port, start_ui, stop_ui, tiny_overrides

CACHE_URI = "s3://carol:cache-s3cret@bucket.example/cache"
SECRETS = (b"cache-s3cret", b"uri-s3cret")


def test_the_public_config_masks_uris_and_keeps_environment_values_as_expressions(monkeypatch):
    monkeypatch.setenv("LK_TEST_CACHE", CACHE_URI)
    monkeypatch.setenv("LK_TEST_TOKEN", "tok-s3cret")
    cfg = load_config("3x3", ["data.root=https://dave:root-s3cret@host.example/carvana",
                              "data.cache_dir=${oc.env:LK_TEST_CACHE}", "experiment=${oc.env:LK_TEST_TOKEN}",
                              "checkpoint_dir=${experiment}/ckpt"])
    config = public_config(cfg)
    assert config["data"]["root"] == "https://***@host.example/carvana"
    assert config["data"]["cache_dir"] == "${oc.env:LK_TEST_CACHE}"
    assert config["checkpoint_dir"] == "${oc.env:LK_TEST_TOKEN}/ckpt"  # built from an environment value
    assert config["model"] == OmegaConf.to_container(cfg.model, resolve=True)
    assert "s3cret" not in str(config)


def test_the_deploy_checkpoint_keeps_only_what_prediction_reads(tiny_cfg, tmp_path):
    import torch

    from lk_segment.system import SegmentationSystem

    config = public_config(tiny_cfg("3x3"))
    system = SegmentationSystem(model=config["model"], optim=config["optim"], data=config["data"])
    torch.save({"state_dict": system.state_dict(), "hyper_parameters": dict(system.hparams)}, tmp_path / "t.ckpt")
    deploy = torch.load(save_deploy_checkpoint(tmp_path / "t.ckpt", tmp_path / "d.ckpt"), weights_only=True)
    assert deploy["hyper_parameters"]["data"] == {"height": config["data"]["height"], "width": config["data"]["width"]}
    assert set(deploy) == {"state_dict", "hyper_parameters"} and not deploy["hyper_parameters"]["optim"]


def files_holding(root: Path, needles: tuple[bytes, ...]) -> tuple[list[Path], list[Path]]:
    """(every file under ``root``, those holding a needle in their bytes or in a zip member's)."""
    files = sorted(p for p in root.rglob("*") if p.is_file())
    found = []
    for path in files:
        blobs = [path.read_bytes()]
        if zipfile.is_zipfile(path):  # a checkpoint: its members, decompressed
            with zipfile.ZipFile(path) as z:
                blobs += [z.read(name) for name in z.namelist()]
        if any(n in blob for blob in blobs for n in needles):
            found.append(path)
    return files, found


@pytest.mark.slow
def test_no_credential_reaches_any_artifact_nor_the_registry(tiny_root, tmp_path_factory, monkeypatch):
    served = tmp_path_factory.mktemp("store")
    port = free_port()
    proc, _ = start_ui(["--server"], served, port)
    try:
        monkeypatch.chdir(tmp_path_factory.mktemp("client"))
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://alice:uri-s3cret@127.0.0.1:{port}")
        monkeypatch.setenv("LK_TEST_CACHE", CACHE_URI)
        cfg = load_config("3x3", tiny_overrides(tiny_root, "data.cache_dir=${oc.env:LK_TEST_CACHE}",
                                                "tracking.log_model=true", "experiment=shared"))
        result = train(cfg)
        register(result["run_id"], "lk-segment", "champion")
        client = MlflowClient(f"http://127.0.0.1:{port}")
        assert client.get_run(result["run_id"]).info.status == "FINISHED"
        assert client.get_registered_model("lk-segment").aliases == {"champion": "1"}
    finally:
        stop_ui(proc)
    files, found = files_holding(served / "mlruns", SECRETS)
    names = {p.name for p in files}
    assert {"mlflow.db", "config.yaml", "last.ckpt", "weights.ckpt", "MLmodel", "requirements.txt"} <= names
    assert any(p.name.startswith("best-") for p in files)
    assert files_holding(served / "mlruns", (b"${oc.env:LK_TEST_CACHE}",))[1]  # the expression is: the scan reads
    assert not found, f"a credential in {found}"
    print(f"scanned {len(files)} files under the server's mlruns/ (store, registry, artifacts): "
          f"{', '.join(sorted(names))}; credentials found in none")
