"""The DataModule's train loader against the model's consumption at the same size and batch.

First epoch: decoding the JPEG/GIF files into a fresh cache. Cached: with the augmentation in the
loader (albumentations, 0 or more workers) or on the device (kornia, data/augment_device.py), timed in
a steady state as training loads: the loader's own settings (pinned memory on CUDA, persistent
workers), each worker busy with several batches, the start-up batches left out of the figure. One
pass over a small set would time one batch's latency per worker, not the loader's throughput.
"""

from __future__ import annotations

import copy
import tempfile

import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, RandomSampler

from lk_segment.bench.config import BenchConfig
from lk_segment.bench.results import Loader, Step
from lk_segment.timing import Stopwatch

BATCHES_PER_WORKER = 4  # timed, after each worker's first ones: a steady state, not one batch's latency


def _epoch(loader, device: torch.device) -> tuple[int, float]:
    """Images delivered by one pass over ``loader`` and its seconds (the first epoch, decoding)."""
    n, watch = 0, Stopwatch(device)
    watch.start()
    for images, masks in loader:
        images.to(device, non_blocking=True), masks.to(device, non_blocking=True)
        n += len(images)
    watch.stop()
    return n, watch.seconds()[0]


def steady_loader(dataset, batch_size: int, workers: int, device: torch.device,
                  batches_per_worker: int = BATCHES_PER_WORKER) -> DataLoader:
    """The train loader's settings (pinned memory on CUDA, persistent workers, full batches) over enough
    batches for a steady state: every worker loads ``batches_per_worker`` timed ones after its first ones."""
    warm = 2 * max(1, workers)  # each worker's first batch and the one it prefetches
    samples = (warm + batches_per_worker * max(1, workers)) * batch_size
    return DataLoader(dataset.as_uint8(), batch_size=batch_size, drop_last=True,
                      sampler=RandomSampler(dataset, num_samples=samples, generator=torch.Generator().manual_seed(0)),
                      num_workers=workers, persistent_workers=workers > 0, pin_memory=device.type == "cuda")


def steady_images_per_s(loader: DataLoader, device: torch.device, augment=None) -> tuple[float, int]:
    """(images/s, batches timed) of ``loader`` once its workers run, each batch copied to ``device`` as
    training copies it (non-blocking from pinned memory) and ``augment``-ed there if given."""
    warm = 2 * max(1, loader.num_workers)
    n = batches = 0
    watch = Stopwatch(device)
    for i, (images, masks) in enumerate(loader):
        if i == warm:
            watch.start()
        images, masks = images.to(device, non_blocking=True), masks.to(device, non_blocking=True)
        if augment is not None:
            augment(images, masks)
        if i >= warm:
            n, batches = n + len(images), batches + 1
    watch.stop()
    return n / watch.seconds()[0], batches


def bench_loader(cfg: DictConfig, bcfg: BenchConfig, model: Step, device: torch.device) -> Loader:
    """images/s of the train loader at ``bcfg.loader_height``; ``model``: the step at that size."""
    from lk_segment.data.augment_device import DeviceAugmentation
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
            rate, _ = steady_images_per_s(steady_loader(dm.train_set, bcfg.batch_size, workers, device), device)
            cached[f"cpu_aug_w{workers}"] = rate
        data.num_workers, data.augment_on = 0, "gpu"
        dm = CarvanaDataModule(data, progress=False)
        dm.setup("fit")
        rate, _ = steady_images_per_s(steady_loader(dm.train_set, bcfg.batch_size, 0, device), device,
                                      DeviceAugmentation())
        cached["device_aug_w0"] = rate
    return Loader(size=size, train_images=n, decode_s=decode_s, first_epoch_images_per_s=first,
                  cached_images_per_s=cached, model_images_per_s=model.images_per_s, model_setting=model.setting)
