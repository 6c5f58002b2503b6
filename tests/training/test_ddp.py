"""Lightning's DDP on CPU processes (gloo): the same results as one process, one MLflow run,
each rank its own shard, and a second node's environment recognised without launching it."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch
from lightning.pytorch.utilities import rank_zero_only
from mlflow.tracking import MlflowClient
from torch.utils.data import DistributedSampler

from lk_segment.commands.train import build_trainer
from lk_segment.config import load_config
from lk_segment.data.module import CarvanaDataModule
from lk_segment.errors import UserError
from lk_segment.tracking import tracking_uri
from lk_segment.training.checkpointing import load_system
from lk_segment.training.distributed import UnpaddedDistributedSampler, scale_out_params, validation_sampler
from lk_segment.training.run_logger import RunLogger
from tests.conftest import tiny_overrides

# 47 of the 64 tiny images: cars 0 and 1 train (32 images, 16 per rank), car 2 less one view
# validates: 15 images, an odd count, which Lightning's padded sampler would round up to 16.
# float32, so that the plain single-process evaluation below computes the very same logits.
DDP_OVERRIDES = ["data.limit_images=47", "data.batch_size=4", "model.width=8", "trainer.max_epochs=2",
                 "trainer.precision=32", "trainer.channels_last=false"]


@pytest.mark.parametrize("n,world_size", [(15, 2), (16, 2), (7, 3), (2, 2)])
def test_unpadded_sampler_gives_every_image_to_exactly_one_rank(n, world_size):
    shards = [list(UnpaddedDistributedSampler(range(n), num_replicas=world_size, rank=r)) for r in range(world_size)]
    assert sorted(i for shard in shards for i in shard) == list(range(n))  # each once, none repeated
    for r, shard in enumerate(shards):
        assert len(UnpaddedDistributedSampler(range(n), num_replicas=world_size, rank=r)) == len(shard)
    padded = [list(DistributedSampler(range(n), num_replicas=world_size, rank=r, shuffle=False))
              for r in range(world_size)]
    # what it replaces: torch's sampler repeats images whenever world_size does not divide n
    assert (sum(map(len, padded)) > n) == (n % world_size != 0)


def test_validation_sampler_is_the_plain_order_outside_ddp():
    assert validation_sampler(range(5)) is None


@pytest.fixture
def restore_rank():
    """Building a Trainer sets Lightning's process-wide rank; put it back for the other tests."""
    saved = rank_zero_only.rank
    yield
    rank_zero_only.rank = saved


SECOND_NODE = {  # node 1 of 2, 2 processes each: (environment, its class in Lightning, global rank)
    "torchrun": ({"TORCHELASTIC_RUN_ID": "lk", "GROUP_RANK": "1", "RANK": "2", "LOCAL_RANK": "0",
                  "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2"}, "TorchElasticEnvironment", 2),
    "slurm": ({"SLURM_NTASKS": "4", "SLURM_NTASKS_PER_NODE": "2", "SLURM_NNODES": "2", "SLURM_NODEID": "1",
               "SLURM_PROCID": "3", "SLURM_LOCALID": "1", "SLURM_JOB_ID": "77", "SLURM_JOB_NAME": "lk",
               "SLURM_NODELIST": "node[01-02]"}, "SLURMEnvironment", 3),
    "lightning": ({"NODE_RANK": "1"}, "LightningEnvironment", 2),  # its own launcher, started on each node
}


@pytest.mark.slow
@pytest.mark.parametrize("launcher", sorted(SECOND_NODE))
def test_second_node_environment_is_picked_up_and_creates_no_run(launcher, workdir, monkeypatch, restore_rank):
    env, environment_class, global_rank = SECOND_NODE[launcher]
    for key in [k for k in os.environ if k.startswith(("SLURM_", "TORCHELASTIC_")) or k in ("RANK", "LOCAL_RANK")]:
        monkeypatch.delenv(key)
    for key, value in {"MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500", **env}.items():
        monkeypatch.setenv(key, value)
    cfg = load_config("5x5", ["trainer.accelerator=cpu", "trainer.devices=2", "trainer.num_nodes=2",
                              "trainer.strategy=ddp", "trainer.enable_progress_bar=false", "experiment=test"])
    logger = RunLogger(experiment_name="test", run_name="5x5", tracking_uri=tracking_uri())
    trainer = build_trainer(cfg.trainer, logger=logger)  # what train() does before it creates the run

    assert type(trainer.strategy.cluster_environment).__name__ == environment_class
    assert (trainer.node_rank, trainer.global_rank, trainer.world_size) == (1, global_rank, 4)
    assert not trainer.is_global_zero
    assert logger.run_id is None  # only global rank 0 creates the MLflow run ...
    client = MlflowClient(tracking_uri())
    assert client.search_runs([e.experiment_id for e in client.search_experiments()]) == []  # ... none here
    params = scale_out_params(trainer.world_size, trainer.num_nodes, cfg.data.batch_size)
    assert params["train/global_batch_size"] == 8 * 2 * 2 and params["train/lr_scaling"] == "none"


@pytest.mark.parametrize("override,culprit", [("trainer.strategy=dpp", "strategy='dpp'"),
                                              ("trainer.devices=0", "devices=0")])
def test_bad_trainer_settings_are_a_user_error(override, culprit):
    cfg = load_config("5x5", ["trainer.accelerator=cpu", override])
    with pytest.raises(UserError, match=culprit):
        build_trainer(cfg.trainer, logger=False)


def _pixel_counts(system, dataset, batch_size: int) -> torch.Tensor:
    """(tp, fp, fn) per image at threshold 0.5, by one process, in plain PyTorch: (N, 3)."""
    counts = []
    with torch.inference_mode():
        for start in range(0, len(dataset), batch_size):
            batch = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
            images, masks = torch.stack([b[0] for b in batch]), torch.stack([b[1] for b in batch])
            pred = (torch.sigmoid(system.model(images).float()) > 0.5).flatten(1)  # (B, H*W)
            truth = (masks > 0.5).flatten(1)
            counts.append(torch.stack([(pred & truth).sum(1), (pred & ~truth).sum(1), (~pred & truth).sum(1)], 1))
    return torch.cat(counts).double()


def _dice_iou(counts: torch.Tensor) -> tuple[float, float]:
    tp, fp, fn = counts.sum(0).tolist()
    return 2 * tp / (2 * tp + fp + fn), tp / (tp + fp + fn)


@pytest.mark.slow
def test_two_process_ddp_matches_a_single_process_evaluation(tiny_root, workdir):
    overrides = tiny_overrides(tiny_root, *DDP_OVERRIDES, "trainer.enable_progress_bar=true")
    proc = subprocess.run(
        [sys.executable, "-m", "lk_segment", "train", "-v", "5x5", *overrides,
         "trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp"],
        capture_output=True, text=True, timeout=600, cwd=workdir, env=dict(os.environ),
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.count("best val/dice") == 1, proc.stdout  # printed by rank 0 only
    # the cache is decoded by one process (prepare_data): one progress bar, not one per rank
    bars_started = [line for line in proc.stderr.splitlines() if "caching 47 images" in line and " 0/47 " in line]
    assert len(bars_started) == 1, proc.stderr[-4000:]

    client = MlflowClient(tracking_uri())
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1, "only rank 0 may create a run"
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["train/world_size"] == "2" and run.data.params["train/global_batch_size"] == "8"
    assert run.data.params["train/lr_scaling"] == "none"
    ckpt_dirs = list((workdir / "checkpoints").iterdir())
    assert [d.name for d in ckpt_dirs] == [run.info.run_id]  # one folder, rank 0's
    names = sorted(p.name for p in ckpt_dirs[0].glob("*.ckpt"))
    assert len(names) == 2 and names[0].startswith("best-") and names[1] == "last.ckpt"
    last = ckpt_dirs[0] / "last.ckpt"

    # each rank trained on its own half: 16 images in steps of 4, twice, not all 32 images
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 2 * math.ceil(32 / 2 / 4)
    # perf/train_images_per_s adds the ranks' rates: at least 32 images over the slower rank's time
    rates = client.get_metric_history(run.info.run_id, "perf/train_images_per_s")
    times = client.get_metric_history(run.info.run_id, "perf/epoch_time_s")
    assert len(rates) == len(times) == 2
    assert all(rate.value * time.value >= 32 * (1 - 1e-5) for rate, time in zip(rates, times, strict=True))

    # the logged val/dice and val/iou are those of the whole validation set, each image once
    cfg = load_config("5x5", overrides)
    system = load_system(last)
    data = CarvanaDataModule(cfg.data, size_multiple=system.model.size_multiple, progress=False)
    data.setup()
    assert len(data.val_set) == 15
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each of the 2 DDP processes ran on this machine
    try:
        counts = _pixel_counts(system, data.val_set, cfg.data.batch_size)
    finally:
        torch.set_num_threads(threads)
    dice, iou = _dice_iou(counts)
    logged = {k: client.get_metric_history(run.info.run_id, k)[-1].value for k in ("val/dice", "val/iou")}
    assert 0.0 < dice < 1.0
    assert logged["val/dice"] == pytest.approx(dice, abs=1e-6)
    assert logged["val/iou"] == pytest.approx(iou, abs=1e-6)
    # the test can see padding: counting the first image twice, as the padded sampler would, moves Dice
    padded_dice, _ = _dice_iou(torch.cat([counts, counts[:1]]))
    assert abs(padded_dice - dice) > 1e-4
