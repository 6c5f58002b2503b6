"""The path from the loader to the training device, checked on the CPU: uint8 batches normalised
on the device, loader settings chosen from the device, the device named, the NaN/inf guard."""

from __future__ import annotations

import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from lk_segment.commands.train import train
from lk_segment.config import load_config
from lk_segment.data import module as data_module
from lk_segment.data.carvana import MEAN, STD
from lk_segment.data.module import CarvanaDataModule, default_num_workers
from lk_segment.device import cpu_name
from lk_segment.errors import UserError
from lk_segment.system import SegmentationSystem
from lk_segment.tracking import tracking_uri
from lk_segment.training.guard import NonFiniteGuard
from tests.conftest import tiny_overrides


@pytest.fixture
def datamodule(tiny_cfg):
    def make(*extra: str) -> CarvanaDataModule:
        cfg = tiny_cfg("3x3", *extra)
        dm = CarvanaDataModule(cfg.data, progress=False)
        dm.prepare_data()
        dm.setup("fit")
        return dm
    return make


def fake_trainer(device: str, devices: int = 1) -> SimpleNamespace:
    return SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device(device)), num_devices=devices,
                           world_size=devices, global_rank=0)


@pytest.mark.parametrize("augment", ["false", "true"])
def test_uint8_batches_normalised_on_the_device_equal_the_normalised_items(datamodule, augment):
    dm = datamodule(f"data.augment={augment}", "data.batch_size=4")
    images, masks = next(iter(dm.val_dataloader()))
    assert images.dtype == masks.dtype == torch.uint8 and images.shape[1] == 3 and masks.shape[1] == 1
    system = SegmentationSystem(model={"block": "3x3", "width": 4, "depth": 2}, optim={}, data={})
    x, y = system.on_after_batch_transfer((images, masks), 0)
    for i in range(4):  # the float items of the same images: (x - MEAN) / STD in float32 on the CPU
        raw = np.asarray(dm.val_set.images[dm.val_set.indices[i]]).astype(np.float32)
        want = torch.from_numpy(((raw - MEAN) / STD).transpose(2, 0, 1))
        torch.testing.assert_close(x[i], want, rtol=1e-6, atol=1e-5)
        torch.testing.assert_close(x[i], dm.val_set[i][0])
        assert torch.equal(y[i], dm.val_set[i][1])
    # the CPU augmentation (albumentations) still runs in the loader, on uint8
    assert (dm.train_set.transform is not None) == (augment == "true")
    train_images, _ = next(iter(dm.train_dataloader()))
    assert train_images.dtype == torch.uint8


def test_loader_on_the_cpu_no_workers_no_pinning_equal_batches(datamodule, monkeypatch):
    dm = datamodule("data.batch_size=5")  # 48 training images: 9 full batches and a short one
    loader = dm.train_dataloader()
    assert loader.num_workers == 0 and not loader.pin_memory and not loader.persistent_workers
    assert loader.drop_last and len(loader) == 48 // 5
    assert not dm.val_dataloader().drop_last  # every validation image counts
    dm.trainer = fake_trainer("cpu")
    assert dm.train_dataloader().num_workers == 0 and not dm.train_dataloader().pin_memory


def test_loader_on_cuda_pins_and_takes_a_share_of_the_cores(datamodule, monkeypatch):
    monkeypatch.setattr(data_module.os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    dm = datamodule()
    dm.trainer = fake_trainer("cuda", devices=2)
    loader = dm.train_dataloader()
    assert loader.pin_memory and loader.persistent_workers
    assert loader.num_workers == default_num_workers(True, 2) == 7  # 16 cores / 2 devices, less the main process
    assert dm.val_dataloader().num_workers == 2  # a quarter, rounded up: no augmentation to feed
    dm = datamodule("data.num_workers=3")
    dm.trainer = fake_trainer("cuda")
    assert dm.train_dataloader().num_workers == 3  # a value given is kept


def test_default_num_workers(monkeypatch):
    monkeypatch.setattr(data_module.os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    assert default_num_workers(False, 1) == 0  # CPU training: the step uses the cores
    assert default_num_workers(True, 1) == data_module.MAX_WORKERS_PER_DEVICE
    assert default_num_workers(True, 8) == 7
    monkeypatch.setattr(data_module.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert default_num_workers(True, 4) == 1  # never 0 on a GPU: the main process would decode


def test_a_training_set_smaller_than_a_batch_keeps_its_one_batch(datamodule):
    dm = datamodule("data.batch_size=64")
    loader = dm.train_dataloader()
    assert not loader.drop_last and len(loader) == 1


@pytest.mark.slow
def test_a_run_names_its_device_and_logs_gpu_figures_only_from_a_gpu(tiny_cfg, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a CUDA machine, but this run is on the CPU
    result = train(tiny_cfg("3x3", "trainer.accelerator=cpu"))
    run = MlflowClient(tracking_uri()).get_run(result["run_id"])
    assert run.data.params["trainer.device_name"] == cpu_name() != ""
    assert "perf/gpu_peak_mem_mb" not in run.data.metrics  # keyed on the module's device
    assert "perf/epoch_time_s" in run.data.metrics


@pytest.mark.slow
def test_accelerator_gpu_without_cuda_is_one_line_before_anything(tiny_root, workdir, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match=r"trainer.accelerator=gpu but this torch sees no CUDA GPU"):
        train(load_config("3x3", tiny_overrides(tiny_root, "trainer.accelerator=gpu")))
    assert not (workdir / "data").exists()  # no cache was built, no run created
    client = MlflowClient(tracking_uri())
    assert not client.search_runs([e.experiment_id for e in client.search_experiments()])


def _step(guard: NonFiniteGuard, optimizer, param, loss: float, step: int) -> None:
    param.grad = torch.full_like(param, loss)  # a NaN loss gives NaN gradients
    guard.record_loss(torch.tensor(loss), batch_idx=step)
    guard.skip_step_if_not_finite(optimizer, [param.grad], step=step, epoch=0)
    optimizer.step()


def test_a_non_finite_step_is_skipped_on_the_device_and_reported_at_the_check():
    param = torch.nn.Parameter(torch.ones(4))
    optimizer = torch.optim.AdamW([param], lr=0.1, fused=True)
    guard = NonFiniteGuard()
    strategy = SimpleNamespace(reduce_boolean_decision=lambda decision, all=True: decision)
    _step(guard, optimizer, param, 1.0, step=0)
    after_good = param.detach().clone()
    assert not torch.equal(after_good, torch.ones(4))
    guard.stop_if_seen(strategy)  # nothing seen: no error
    state = {k: v.clone() for k, v in optimizer.state[param].items()}
    _step(guard, optimizer, param, float("nan"), step=1)
    assert torch.equal(param.detach(), after_good)  # the NaN update never reached the weights
    for key, value in optimizer.state[param].items():
        assert torch.equal(value, state[key]), key  # nor the moments, nor the step count
    _step(guard, optimizer, param, 1.0, step=2)  # a finite step after it is taken
    assert not torch.equal(param.detach(), after_good)
    with pytest.raises(UserError, match=r"training loss is nan at step 1 \(epoch 0, batch 1\)"):
        guard.stop_if_seen(strategy)


def test_every_rank_stops_when_one_saw_a_non_finite_step():
    guard = NonFiniteGuard()  # this rank saw nothing
    anyone = SimpleNamespace(reduce_boolean_decision=lambda decision, all=True: True)  # another rank did
    with pytest.raises(UserError, match="another process"):
        guard.stop_if_seen(anyone)


@pytest.mark.slow
def test_under_ddp_every_rank_stops_together_and_the_run_fails(tiny_root, workdir):
    overrides = tiny_overrides(tiny_root, "model.depth=2", "data.limit_images=32", "data.batch_size=4",
                               "optim.lr=1e30", "optim.warmup_fraction=0")
    proc = subprocess.run([sys.executable, "-m", "lk_segment", "train", "-v", "3x3", *overrides,
                           "trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp"],
                          capture_output=True, text=True, timeout=600, cwd=workdir,
                          env=dict(os.environ))
    assert proc.returncode == 2, proc.stderr[-3000:]  # no hang: no rank waits on a collective the others skipped
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("lk-segment: error:")]
    assert errors and all("training loss is" in ln for ln in errors), proc.stderr[-3000:]
    client = MlflowClient(tracking_uri())
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.status == "FAILED"
