"""The GPU paths, where a CUDA GPU is: skipped, saying why, without one (``make gpu-check`` runs them).

Kernels agree across implementations and devices, the training loop runs on the GPU, logs its
GPU figures and never makes the host wait for the GPU from the project's own code.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import traceback
import warnings
from pathlib import Path

import cv2
import lightning as L
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from lk_segment.commands.train import train
from lk_segment.data.augment_device import DeviceAugmentation
from lk_segment.inference import Predictor
from lk_segment.ops import DW_IMPLS, DepthwiseConv2d
from lk_segment.system import build_model
from lk_segment.tracking import tracking_uri
from lk_segment.training.checkpointing import load_system
from tests.conftest import tiny_overrides

pytestmark = pytest.mark.cuda
ROOT = Path(__file__).resolve().parents[2]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


@pytest.fixture
def no_tf32():
    """float32 compared as float32: TF32 would round the reference to 10 bits of mantissa."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def gpu_precision() -> str:
    return "bf16-mixed" if torch.cuda.is_bf16_supported(including_emulation=False) else "16-mixed"


@pytest.mark.parametrize("k", [3, 7, 13, 31])
@pytest.mark.parametrize("mode", ["fp32", "bf16", "bf16+channels_last"])
def test_depthwise_impls_agree_on_cuda(no_tf32, k, mode):
    g = torch.Generator().manual_seed(k)
    ref = torch.nn.Conv2d(6, 6, k, padding=k // 2, groups=6, bias=False)
    x = torch.randn(2, 6, 37, 29, generator=g).cuda()  # odd, non-square sides, smaller than K=31
    grad_out = torch.randn(2, 6, 37, 29, generator=g).cuda()
    ref = ref.cuda()
    if "channels_last" in mode:
        x = x.contiguous(memory_format=torch.channels_last)
    xr = x.clone().requires_grad_(True)
    want = ref(xr)  # float32, TF32 off
    want.backward(grad_out)
    tolerance = 1e-5 if mode == "fp32" else 2e-2  # bf16 keeps 8 bits of mantissa
    for impl in DW_IMPLS:
        conv = DepthwiseConv2d(6, k, impl=impl).cuda()
        conv.load_state_dict(ref.state_dict())
        xi = x.clone().requires_grad_(True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=mode != "fp32"):
            out = conv(xi)
        out.float().backward(grad_out)
        assert out.shape == want.shape
        assert rel_err(out, want) < tolerance, impl
        assert rel_err(xi.grad, xr.grad) < tolerance, impl
        assert rel_err(conv.weight.grad, ref.weight.grad) < tolerance, impl


def test_replk_fused_equals_unfused_on_cuda(no_tf32):
    torch.manual_seed(0)
    model = build_model({"block": "replk", "width": 8, "depth": 2, "kernel_size": 13,
                         "block_args": {"small_kernel": 5}}).cuda()
    with torch.no_grad():  # BatchNorm statistics that are not the identity
        for _ in range(3):
            model(torch.randn(4, 3, 64, 96, device="cuda"))
    model.eval()
    x = torch.randn(2, 3, 64, 96, device="cuda")
    with torch.no_grad():
        unfused = model(x)
        fused = copy.deepcopy(model).reparameterize()(x)
    assert rel_err(fused, unfused) < 1e-4


def test_kornia_augmentation_on_the_device_makes_no_host_sync():
    """kornia draws on the CPU from the augmentation's own generator and sends the parameters with
    non-blocking copies: a batch on the GPU never makes the host wait."""
    images = torch.randint(0, 256, (4, 3, 64, 96), dtype=torch.uint8, device="cuda")
    masks = torch.randint(0, 2, (4, 1, 64, 96), dtype=torch.uint8, device="cuda")
    augment = DeviceAugmentation(seed=0)
    augment(images, masks)  # kernels loaded, kornia's first-call set-up done
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out_images, out_masks = augment(images, masks)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert augment.generator.device.type == "cpu"  # its own, never moved
    assert out_images.device.type == out_masks.device.type == "cuda"
    assert set(out_masks.unique().tolist()) <= {0.0, 1.0}
    rank1 = DeviceAugmentation(seed=1)
    rank1(images, masks)
    assert not torch.equal(rank1(images, masks)[0], out_images)  # another rank, other draws


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["3x3", "replk"])
def test_one_epoch_on_cuda_logs_the_gpu_figures(tiny_cfg, variant):
    result = train(tiny_cfg(variant, "trainer.accelerator=gpu", f"trainer.precision={gpu_precision()}",
                            "trainer.channels_last=true", "data.augment=true", "data.augment_on=gpu"))
    run = MlflowClient(tracking_uri()).get_run(result["run_id"])
    assert run.info.status == "FINISHED"
    metrics, params = run.data.metrics, run.data.params
    assert metrics["perf/gpu_peak_mem_mb"] > 0
    assert metrics["perf/gpu_peak_reserved_mb"] >= metrics["perf/gpu_peak_mem_mb"]
    assert params["trainer.device_name"] == torch.cuda.get_device_name(0)
    assert 0.0 <= metrics["val/dice"] <= 1.0


@pytest.mark.slow
def test_predictor_on_cuda_matches_the_cpu_masks(tiny_cfg, tiny_root, no_tf32):
    """What is deterministic: float32 on the GPU gives the CPU's logits; in bf16 the masks agree exactly
    wherever the CPU's logit is further from the threshold than bf16 moved any logit (a share of agreeing
    pixels would flip with a borderline logit or two)."""
    result = train(tiny_cfg("5x5", "trainer.accelerator=gpu", "trainer.max_epochs=3", "model.width=8"))
    paths = sorted((tiny_root / "train").glob("*.jpg"))[:8]
    photos = [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in paths]
    cpu = Predictor(load_system(result["best_checkpoint"]), device="cpu")
    gpu = Predictor(load_system(result["best_checkpoint"]), device="cuda")  # bf16 autocast where it has bf16
    gpu32 = Predictor(load_system(result["best_checkpoint"]), device="cuda")
    gpu32.autocast = False
    want = cpu.small_logits(photos)
    assert rel_err(gpu32.small_logits(photos).cpu(), want) < 1e-4  # float32 on both, TF32 off
    moved = float((gpu.small_logits(photos).cpu() - want).abs().max()) + 1e-4  # bilinear upsampling's rounding
    assert moved < 0.1 * float(want.abs().max()), "bf16 moved the logits by more than a tenth of their range"
    masks = gpu.predict_batch(photos)
    for photo, mask in zip(photos, masks, strict=True):
        logits = cpu.logits(photo).numpy()  # float32, the photo's own size
        clear = np.abs(logits) > moved
        assert np.array_equal(mask[clear], (logits > 0)[clear].astype(np.uint8))
    assert any(m.any() for m in masks)


@pytest.mark.slow
def test_ddp_on_one_gpu_over_nccl(tiny_root, workdir):
    proc = subprocess.run(
        [sys.executable, "-m", "lk_segment", "train", "-v", "3x3", *tiny_overrides(tiny_root),
         "trainer.accelerator=gpu", "trainer.devices=1", "trainer.strategy=ddp"],
        capture_output=True, text=True, timeout=600, cwd=workdir,
        env={**os.environ,
             "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))})
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "nccl" in (proc.stdout + proc.stderr).lower()  # Lightning names the backend it set up
    client = MlflowClient(tracking_uri())
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.status == "FINISHED" and run.data.params["train/world_size"] == "1"


class SyncRecorder(L.Callback):
    """Records every host-GPU synchronisation (``set_sync_debug_mode("warn")``) from the start of
    batch ``first`` to the end of batch ``last``, with the innermost frame outside torch that caused it."""

    def __init__(self, first: int = 2, last: int = 5):
        self.first, self.last, self.syncs = first, last, []
        self._context = None

    def _record(self, message, category, filename, lineno, file=None, line=None):
        torch_dir = Path(torch.__file__).parent
        stack = traceback.extract_stack()[:-1]
        culprit = next((f for f in reversed(stack) if torch_dir not in Path(f.filename).parents), stack[-1])
        self.syncs.append((f"{culprit.filename}:{culprit.lineno} {culprit.line}", str(message)))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == self.first:
            self._context = warnings.catch_warnings()
            self._context.__enter__()
            warnings.simplefilter("always")
            warnings.showwarning = self._record
            torch.cuda.set_sync_debug_mode("warn")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx == self.last:
            self.close()

    def close(self) -> None:
        torch.cuda.set_sync_debug_mode("default")
        if self._context is not None:
            self._context.__exit__(None, None, None)
            self._context = None


@pytest.mark.slow
def test_training_steps_make_no_host_sync_from_project_code(tiny_cfg):
    recorder = SyncRecorder()
    # log_every_n_steps beyond the window: the NaN guard's periodic read (one sync per N steps) is left out
    cfg = tiny_cfg("3x3", "trainer.accelerator=gpu", f"trainer.precision={gpu_precision()}",
                   "trainer.channels_last=true", "data.augment=true", "data.augment_on=gpu",
                   "trainer.log_every_n_steps=1000")
    try:
        train(cfg, callbacks=[recorder])
    finally:
        recorder.close()
    project = str(ROOT / "lk_segment")
    # the project's code and the augmentation it calls (kornia, data.augment_on=gpu)
    ours = [s for s in recorder.syncs if s[0].startswith(project) or f"{os.sep}kornia{os.sep}" in s[0]]
    assert not ours, "host syncs from project code in training steps:\n" + "\n".join(map(str, ours))
