"""Scale-out on Lightning's DDP: the two things Lightning leaves to the project.

    lk-segment train -v 5x5 trainer.devices=2 trainer.strategy=ddp    # 2 GPUs, or 2 CPU processes (gloo)

Lightning itself shards the training set (a DistributedSampler, padded so that every rank takes
as many steps), synchronises torchmetrics states and ``self.log(..., sync_dist=True)`` values,
writes checkpoints and logs from global rank 0 only, and calls ``prepare_data`` once per node
before any rank's ``setup``. Left to us:

- Validation shards without padding. Lightning's DistributedSampler would repeat the first
  images of the validation set to give every rank as many; those would count twice in the
  pixel counts behind ``val/dice`` and ``val/iou``. Validation needs no lock-step (no gradient
  all-reduce), so each rank takes every ``world_size``-th image and none is repeated.
- The effective batch: one optimizer step averages the gradients of ``batch_size`` images on
  each of ``world_size`` processes. The learning rate is not scaled with it (``LR_SCALING``).
"""

from __future__ import annotations

import torch.distributed as dist
from torch.utils.data import Dataset, DistributedSampler

from lk_segment.errors import UserError

# optim.lr is used as given at any global batch size. To reproduce a 1-device run on N devices
# keep the global batch: data.batch_size divided by N.
LR_SCALING = "none"


class UnpaddedDistributedSampler(DistributedSampler):
    """Rank r of W takes images r, r+W, r+2W, ...: every image once, in order, never twice.

    A DistributedSampler subclass, so Lightning keeps it instead of inserting its own.
    """

    def __init__(self, dataset: Dataset, num_replicas: int | None = None, rank: int | None = None):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)
        self.num_samples = len(range(self.rank, len(dataset), self.num_replicas))
        self.total_size = len(dataset)

    def __iter__(self):
        return iter(range(self.rank, len(self.dataset), self.num_replicas))


def validation_sampler(dataset: Dataset) -> UnpaddedDistributedSampler | None:
    """Under DDP, this rank's unpadded share of ``dataset``; otherwise None (the plain order)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return None
    world_size = dist.get_world_size()
    if len(dataset) < world_size:  # a rank without a batch would skip validation and hang the others
        raise UserError(f"the validation set has {len(dataset)} images for {world_size} processes: "
                        "raise data.val_fraction or use fewer trainer.devices / trainer.num_nodes")
    return UnpaddedDistributedSampler(dataset)


def scale_out_params(world_size: int, num_nodes: int, batch_size: int) -> dict[str, int | str]:
    """The run's MLflow params saying how it was spread and what one optimizer step averages."""
    return {
        "train/world_size": world_size,  # processes = devices x num_nodes
        "train/num_nodes": num_nodes,
        "train/global_batch_size": batch_size * world_size,
        "train/lr_scaling": LR_SCALING,
    }
