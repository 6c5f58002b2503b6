"""The LightningDataModule: synthetic data if no root is given, the cache, augmentation."""

from __future__ import annotations

import math
import os
import shutil
import socket
from pathlib import Path

import albumentations as A
import cv2
import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities.seed import pl_worker_init_function
from torch.utils.data import DataLoader, Dataset, RandomSampler, get_worker_info

from lk_segment.config import DataConfig, training_size
from lk_segment.data.carvana import BadFile, DecodedCache, find_samples, read_image, split_by_car
from lk_segment.data.normalize import Normalize
from lk_segment.data.synthetic import generate
from lk_segment.device import usable_cpus
from lk_segment.errors import UserError
from lk_segment.training.distributed import validation_sampler

SYNTHETIC_ROOT = Path("data/synthetic")
_NORMALIZE = Normalize()
# Loader workers per CUDA device at most: a worker only slices the memory-mapped cache (and, with
# data.augment_on=cpu, augments), so a few per GPU feed it; more add start-up and memory.
MAX_WORKERS_PER_DEVICE = 8


def default_root(cars: int) -> Path:
    """The embedded dataset, generated once (atomically) the first time it is asked for."""
    root = SYNTHETIC_ROOT
    if not (root / "SYNTHETIC").exists():
        tmp = root.with_name(root.name + f".tmp-{socket.gethostname()}-{os.getpid()}")
        generate(tmp, cars=cars)
        if (root / "SYNTHETIC").exists():  # another node sharing the folder finished first: keep its copy
            shutil.rmtree(tmp)
        else:
            shutil.rmtree(root, ignore_errors=True)  # an unfinished copy
            tmp.rename(root)
    return root


def validation_photos(cfg: DataConfig, size_multiple: int, count: int) -> torch.Tensor:
    """``count`` validation photos of the split ``cfg`` describes, spread over its cars, at its training size and
    normalised as the model sees them: (N, 3, H, W) float. The short way in for code that needs a few photos
    (the ERF): decoded from their files by the cache's own decoder, so the same pixels, with no cache built."""
    root = Path(cfg.root) if cfg.root is not None else default_root(cfg.synthetic_cars)
    samples, _ = find_samples(root)  # a missing or empty root stops here, in one line; bad files are not samples
    samples = samples[: cfg.limit_images] if cfg.limit_images else samples
    _, val = split_by_car(samples, cfg.val_fraction, cfg.split_seed, cfg.folds, cfg.fold)
    if not val:
        raise UserError(f"data root {str(root)!r} has no validation photo in this split")
    # Evenly spaced: the first N would all be views of the same one or two cars.
    picks = np.unique(np.linspace(0, len(val) - 1, min(count, len(val))).round().astype(int))
    size = training_size(cfg.height, cfg.width, size_multiple)
    images = np.stack([read_image(val[int(i)].image, size) for i in picks])
    return _NORMALIZE(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous())


def train_augmentation(seed: int = 0) -> A.Compose:
    """Flips, small shift-scale-rotate, colour: a car stays a car, its mask moves with it.

    albumentations 2 draws from the Compose's own generators, never from the global seeds: the
    dataset reseeds them for each epoch and loader worker (``augmentation_seed``)."""
    return A.Compose([
        A.HorizontalFlip(p=0.5),
        A.Affine(translate_percent=(-0.0625, 0.0625), scale=(0.9, 1.1), rotate=(-10, 10),
                 border_mode=0, p=0.5),
        A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02, p=0.5),
    ], seed=seed)


def augmentation_seed(seed: int, epoch: int, rank: int, worker: int) -> int:
    """The augmentation's seed for one (training seed, epoch, rank, loader worker): workers (and ranks)
    draw differently, a run is reproducible from its seed, and an epoch's draws depend on no epoch before
    it, so a run resumed at epoch k draws what an uninterrupted one drew there."""
    return int(np.random.SeedSequence([seed, epoch, rank, worker]).generate_state(1)[0])


class WorkerInit:
    """A DataLoader worker's start: Lightning's own worker seeding (numpy, random, torch; what
    ``seed_everything(workers=True)`` would have added), then the dataset's augmentation reseeded
    for this worker (``CarvanaDataset.reseed``).

    OpenCV runs single-threaded in the workers (each of N workers would otherwise start a pool of one
    thread per core), but that is set here, in the process that builds the loader, before the workers
    fork: ``cv2.setNumThreads`` called in a forked worker whose parent had already run OpenCV's
    thread pool waits forever for pool threads that did not survive the fork (the workers hung).
    The parent's own OpenCV calls are then single-threaded too; its decoding runs in threads of its own.
    """

    def __init__(self, rank: int = 0):
        self.rank = rank
        cv2.setNumThreads(1)  # before the fork: the workers inherit it

    def __call__(self, worker_id: int) -> None:
        if int(os.environ.get("PL_SEED_WORKERS", 0)):
            pl_worker_init_function(worker_id, rank=self.rank)
        dataset = get_worker_info().dataset
        if isinstance(dataset, CarvanaDataset):
            dataset.reseed(worker_id)


class CarvanaDataset(Dataset):
    """Items as the loaders send them: a uint8 (3, H, W) image and a uint8 (1, H, W) 0/1 mask,
    normalised on the training device (``Normalize`` in the system). ``normalized=True`` gives
    float items ready for the model instead, for code that indexes the dataset directly (the
    ERF's validation images); the same ``Normalize`` computes both.
    """

    def __init__(self, images: np.ndarray, masks: np.ndarray, indices: list[int], transform=None,
                 normalized: bool = True, seed: int = 0, rank: int = 0):
        self.images, self.masks, self.indices, self.transform = images, masks, indices, transform
        self.normalized = normalized
        self.seed, self.rank = seed, rank  # of the augmentation's draws (augmentation_seed)
        # the epoch, set in the main process (set_epoch) and read by the loader's workers, persistent ones too
        self.epoch = torch.zeros(1, dtype=torch.int64).share_memory_()
        self._seeded_for: tuple[int, int] | None = None  # (epoch, worker) of the transform's current seed

    def as_uint8(self) -> CarvanaDataset:
        """The same items as the loaders send them (uint8), sharing this dataset's epoch."""
        copy = CarvanaDataset(self.images, self.masks, self.indices, self.transform, normalized=False,
                              seed=self.seed, rank=self.rank)
        copy.epoch = self.epoch
        return copy

    def set_epoch(self, epoch: int) -> None:
        self.epoch[0] = epoch

    def reseed(self, worker: int = 0) -> None:
        """Seed the augmentation for the current epoch and this loader worker (0 without workers), once."""
        key = (int(self.epoch[0]), worker)
        if self.transform is not None and self._seeded_for != key:
            self.transform.set_random_seed(augmentation_seed(self.seed, key[0], self.rank, worker))
            self._seeded_for = key

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        j = self.indices[i]
        image, mask = np.asarray(self.images[j]), np.asarray(self.masks[j])
        if self.transform is not None:
            worker = get_worker_info()
            self.reseed(worker.id if worker is not None else 0)  # a new epoch: new draws
            out = self.transform(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        image = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))  # (H, W, 3) -> (3, H, W) uint8
        mask = torch.from_numpy(mask[None].copy())  # (1, H, W) uint8, writable (the cache is read-only)
        if self.normalized:
            return _NORMALIZE(image[None])[0], mask.float()
        return image, mask


class EpochShuffleSampler(RandomSampler):
    """A shuffle drawn from (seed, epoch) alone, not from the global RNG's history, so a run
    resumed at epoch k sees the order an uninterrupted run saw. Lightning calls ``set_epoch``
    before each epoch (under DDP it swaps this for a DistributedSampler, seeded the same way).
    """

    def __init__(self, data_source, seed: int = 0):
        super().__init__(data_source)
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        yield from torch.randperm(len(self.data_source), generator=generator).tolist()


VAL_WORKER_SHARE = 4  # the validation loader gets a quarter of the training loader's default workers


def default_num_workers(on_cuda: bool, devices_per_node: int = 1) -> int:
    """``data.num_workers`` when not given.

    On the CPU, 0: the training step already uses every core, and workers compete with it, while the
    decoded cache alone feeds the model many times what it consumes (docs/performance.md). On CUDA the host
    only feeds the GPU: each device's process gets its share of the cores, less one for itself, at most
    ``MAX_WORKERS_PER_DEVICE``.
    """
    if not on_cuda:
        return 0
    cores = usable_cpus()
    return max(1, min(MAX_WORKERS_PER_DEVICE, cores // max(1, devices_per_node) - 1))


class AugmentationEpoch(L.Callback):
    """Tells the training set the epoch before its loader starts it: the augmentation's draws follow it."""

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        dm = trainer.datamodule
        if isinstance(dm, CarvanaDataModule) and dm.train_set is not None:
            dm.train_set.set_epoch(trainer.current_epoch)


class CarvanaDataModule(L.LightningDataModule):
    def __init__(self, cfg: DataConfig, size_multiple: int = 32, progress: bool = True, seed: int = 0):
        super().__init__()
        if cfg.on_bad_file not in ("error", "skip"):
            raise UserError(f"data.on_bad_file={cfg.on_bad_file!r}: choose error or skip")
        self.seed = seed  # of the per-epoch shuffle and of the augmentation's draws
        self.skipped: list[BadFile] = []  # bad files left out (data.on_bad_file=skip)
        if cfg.augment_on not in ("cpu", "gpu"):
            raise UserError(f"data.augment_on={cfg.augment_on!r}: choose cpu (in the loader) or gpu (on the device)")
        self.cfg = cfg
        self.size = training_size(cfg.height, cfg.width, size_multiple)
        self.progress = progress
        self.train_set: CarvanaDataset | None = None
        self.val_set: CarvanaDataset | None = None

    @property
    def root(self) -> Path:
        return Path(self.cfg.root) if self.cfg.root is not None else SYNTHETIC_ROOT

    def _samples(self):
        samples, bad = find_samples(self.root)
        if bad and self.cfg.on_bad_file == "error":
            raise UserError(bad[0].message)
        self.skipped = bad
        return samples[: self.cfg.limit_images] if self.cfg.limit_images else samples

    def _cache(self, samples) -> DecodedCache:
        """The decoded cache, built if needed; its undecodable samples join ``self.skipped``."""
        cache = DecodedCache(samples, self.size, self.cfg.cache_dir)
        try:
            cache.build(progress=self.progress, on_bad_file=self.cfg.on_bad_file)
        except UserError as exc:
            raise UserError(f"{exc}; or set data.on_bad_file=skip to leave such files out") from exc
        undecodable = cache.skipped
        if undecodable and self.cfg.on_bad_file == "error":  # a cache built earlier with skip
            raise UserError(undecodable[0].message)
        self.skipped = sorted(self.skipped + undecodable, key=lambda b: b.path)
        return cache

    def prepare_data(self) -> None:
        """Once per machine (rank 0): generate the embedded data if needed, build the cache."""
        if self.cfg.root is None:
            default_root(self.cfg.synthetic_cars)
        self._cache(self._samples())

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        samples = self._samples()
        cache = self._cache(samples)  # built already by prepare_data() unless, e.g., in a notebook
        images, masks = cache.load()
        train, val = split_by_car(samples, self.cfg.val_fraction, self.cfg.split_seed, self.cfg.folds,
                                  self.cfg.fold)
        unusable = {b.path for b in cache.skipped}
        train = [s for s in train if s.image not in unusable]  # filtered after the split: it stays put
        val = [s for s in val if s.image not in unusable]
        index = {s: i for i, s in enumerate(samples)}
        self.train_samples, self.val_samples = train, val  # what the run logs as its dataset inputs
        self.train_cars = sorted({s.car for s in train})
        self.val_cars = sorted({s.car for s in val})
        augment = self.cfg.augment and self.cfg.augment_on == "cpu"  # gpu: the system augments
        aug = train_augmentation(self.seed) if augment else None
        rank = self.trainer.global_rank if self.trainer is not None else 0
        self.train_set = CarvanaDataset(images, masks, [index[s] for s in train], aug, seed=self.seed, rank=rank)
        self.val_set = CarvanaDataset(images, masks, [index[s] for s in val])

    def _loader(self, dataset: CarvanaDataset, shuffle: bool) -> DataLoader:
        trainer = self.trainer  # None outside a fit (the bench, a notebook)
        on_cuda = trainer is not None and trainer.strategy.root_device.type == "cuda"
        workers = self.cfg.num_workers
        if workers is None:
            workers = default_num_workers(on_cuda, trainer.num_devices if trainer is not None else 1)
            if not shuffle:  # validation: no augmentation, a forward pass a batch; its persistent workers
                workers = (workers + VAL_WORKER_SHARE - 1) // VAL_WORKER_SHARE  # would sit beside training's
        batch = self.cfg.batch_size
        # training: equal batches (fixed shapes for cudnn.benchmark and compile), unless not one is full
        world = trainer.world_size if trainer is not None else 1
        drop_last = shuffle and math.ceil(len(dataset) / world) >= batch
        # validation under DDP: each rank its own images, none repeated to pad (see distributed.py)
        sampler = EpochShuffleSampler(dataset, self.seed) if shuffle else validation_sampler(dataset)
        return DataLoader(dataset.as_uint8(), batch_size=batch, sampler=sampler, drop_last=drop_last,
                          num_workers=workers, persistent_workers=workers > 0, pin_memory=on_cuda,
                          worker_init_fn=WorkerInit(trainer.global_rank if trainer is not None else 0)
                          if workers > 0 else None)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)
