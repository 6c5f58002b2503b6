"""The DataModule's train loader against the model's consumption at the same size and batch.

First epoch: decoding the JPEG/GIF files into a fresh cache. Cached epochs: with the
augmentation in the loader (albumentations, 0 or more workers) or on the device (data/augment_gpu.py).
"""

from __future__ import annotations

import copy
import tempfile

import torch
from omegaconf import DictConfig

from lk_segment.bench.config import BenchConfig
from lk_segment.bench.results import Loader, Step
from lk_segment.bench.timing import Stopwatch


def _epoch(loader, device: torch.device, augment=None, max_batches: int | None = None) -> tuple[int, float]:
    """Images delivered by one pass over ``loader`` (``augment``-ed on the device) and its seconds."""
    n, watch = 0, Stopwatch(device)
    watch.start()
    for i, (images, masks) in enumerate(loader):
        if i == max_batches:
            break
        if augment is not None:
            augment(images.to(device, non_blocking=True), masks.to(device, non_blocking=True))
        n += len(images)
    watch.stop()
    return n, watch.seconds()[0]


def bench_loader(cfg: DictConfig, bcfg: BenchConfig, model: Step, device: torch.device) -> Loader:
    """images/s of the train loader at ``bcfg.loader_height``; ``model``: the step at that size."""
    from lk_segment.data.augment_gpu import BatchAugmentation
    from lk_segment.data.module import CarvanaDataModule, default_root

    if cfg.data.root is None:  # the synthetic photos are made once per checkout: not part of the figure
        default_root(cfg.data.synthetic_cars)
    cached = {}
    with tempfile.TemporaryDirectory() as cache_dir:
        data = copy.deepcopy(cfg.data)
        data.height, data.width, data.cache_dir = bcfg.loader_height, None, cache_dir
        data.limit_images, data.batch_size = bcfg.loader_images, bcfg.batch_size
        data.augment, data.augment_on = True, "cpu"
        dm = CarvanaDataModule(data, progress=False)
        watch = Stopwatch(torch.device("cpu"))
        watch.start()
        dm.prepare_data()
        dm.setup("fit")
        watch.stop()
        n, seconds = _epoch(dm.train_dataloader(), device)
        decode_s = watch.seconds()[0]
        size, first = list(dm.size), n / (decode_s + seconds)  # the cache decodes train and val images
        for workers in bcfg.loader_workers:
            data.num_workers = workers
            dm = CarvanaDataModule(data, progress=False)
            dm.setup("fit")
            loader = dm.train_dataloader()
            _epoch(loader, device, max_batches=2)  # workers start (persistent), the page cache is warm
            images, seconds = _epoch(loader, device)
            cached[f"cpu_aug_w{workers}"] = images / seconds
        data.num_workers, data.augment_on = 0, "gpu"
        dm = CarvanaDataModule(data, progress=False)
        dm.setup("fit")
        augment = BatchAugmentation().to(device)
        _epoch(dm.train_dataloader(), device, augment, max_batches=1)
        images, seconds = _epoch(dm.train_dataloader(), device, augment)
        cached["device_aug_w0"] = images / seconds
    return Loader(size=size, train_images=n, decode_s=decode_s, first_epoch_images_per_s=first,
                  cached_images_per_s=cached, model_images_per_s=model.images_per_s, model_setting=model.setting)
