"""The augmentation's draws follow the seed: per loader worker, per epoch, across a resume (data/module.py)."""

from __future__ import annotations

import cv2
import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from lk_segment.commands.train import train
from lk_segment.data.module import CarvanaDataset, WorkerInit, train_augmentation

N = 8  # items, all of one photo: any difference between two of them is the augmentation's


def one_photo_dataset(seed: int) -> CarvanaDataset:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)
    mask = (rng.random((32, 48)) > 0.5).astype(np.uint8)
    images, masks = np.repeat(image[None], N, 0), np.repeat(mask[None], N, 0)
    return CarvanaDataset(images, masks, list(range(N)), train_augmentation(seed), normalized=False, seed=seed)


def draws(dataset: CarvanaDataset, workers: int = 0, epochs=(0,)) -> list[torch.Tensor]:
    """The augmented images, item by item, for each epoch in turn (one loader: persistent workers)."""
    loader = DataLoader(dataset, batch_size=1, num_workers=workers, persistent_workers=workers > 0,
                        worker_init_fn=WorkerInit() if workers else None)
    out = []
    for epoch in epochs:
        dataset.set_epoch(epoch)
        out += [image[0] for image, _ in loader]
    return out


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b, strict=False))


def test_one_seed_draws_the_same_twice_another_seed_draws_otherwise():
    first = draws(one_photo_dataset(seed=3))
    assert same(first, draws(one_photo_dataset(seed=3)))
    assert not same(first, draws(one_photo_dataset(seed=4)))
    assert not all(torch.equal(first[0], x) for x in first[1:])  # the items themselves differ


def test_each_epoch_draws_anew_and_depends_on_no_epoch_before_it():
    both = draws(one_photo_dataset(seed=3), epochs=(0, 1))
    assert not same(both[:N], both[N:])
    assert same(both[N:], draws(one_photo_dataset(seed=3), epochs=(1,)))  # a run resumed at epoch 1


class ThreadsAndGlobalDraws(CarvanaDataset):
    """What a worker's item saw: OpenCV's thread count, a draw of numpy's global generator."""

    def __getitem__(self, i):
        return torch.tensor([cv2.getNumThreads(), np.random.randint(2**31)])


@pytest.mark.slow
def test_two_workers_draw_differently_and_a_seed_repeats_them():
    two = draws(one_photo_dataset(seed=3), workers=2)  # item 2k from worker 0, 2k + 1 from worker 1
    assert not same(two[0::2], two[1::2])  # they started from one state, once: the same draws
    assert same(two, draws(one_photo_dataset(seed=3), workers=2))


@pytest.mark.slow
def test_persistent_workers_follow_the_epoch():
    assert same(draws(one_photo_dataset(seed=3), workers=2, epochs=(0, 1))[N:],
                draws(one_photo_dataset(seed=3), workers=2, epochs=(1,)))


@pytest.mark.slow
def test_a_worker_runs_opencv_on_one_thread_and_lightning_seeds_it():
    dataset = ThreadsAndGlobalDraws(np.zeros((N, 1, 1, 3), np.uint8), np.zeros((N, 1, 1), np.uint8), list(range(N)))

    def seen(rank: int = 0) -> torch.Tensor:
        L.seed_everything(5, workers=True, verbose=False)  # sets PL_SEED_WORKERS=1, as train() does
        return torch.cat(list(DataLoader(dataset, batch_size=1, num_workers=2, worker_init_fn=WorkerInit(rank))))

    first = seen()
    assert set(first[:, 0].tolist()) == {1}  # OpenCV on one thread in each worker
    assert first[0, 1] != first[1, 1] and torch.equal(first, seen())
    # Lightning's worker init ran: it (not PyTorch's own worker seeding) gives each DDP rank its own draws
    assert not torch.equal(first[:, 1], seen(rank=1)[:, 1])


@pytest.mark.slow
def test_workers_start_after_the_parent_ran_opencvs_thread_pool():
    """A parent that has run OpenCV's thread pool (decoding, resizing) then forks loader workers: they
    start and answer (cv2.setNumThreads in a forked worker used to wait forever for the pool's threads)."""
    cv2.setNumThreads(2)
    big = np.random.default_rng(0).integers(0, 256, (1280, 1918, 3), dtype=np.uint8)
    for _ in range(3):
        cv2.resize(big, (192, 128), interpolation=cv2.INTER_AREA)  # parallel_for_: the pool's threads run
    dataset = ThreadsAndGlobalDraws(np.zeros((N, 1, 1, 3), np.uint8), np.zeros((N, 1, 1), np.uint8), list(range(N)))
    loader = DataLoader(dataset, batch_size=1, num_workers=2, worker_init_fn=WorkerInit(), timeout=120)
    seen = torch.cat(list(loader))  # a hung worker raises after the timeout instead
    assert len(seen) == N and set(seen[:, 0].tolist()) == {1}


class FirstBatches(L.Callback):
    """The first training batch of each epoch, as the model saw it."""

    def __init__(self):
        self.batches: dict[int, torch.Tensor] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == 0:
            self.batches[trainer.current_epoch] = batch[0].detach().clone()


@pytest.mark.slow
def test_a_resumed_run_draws_what_an_uninterrupted_one_drew(tiny_cfg):
    extra = ("data.augment=true", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
             "trainer.max_epochs=2")
    straight = FirstBatches()
    train(tiny_cfg("3x3", *extra), callbacks=[straight])
    first = train(tiny_cfg("3x3", *extra, "trainer.max_epochs=1"))
    resumed = FirstBatches()
    train(tiny_cfg("3x3", *extra, f"resume={first['run_id']}"), callbacks=[resumed])
    assert set(resumed.batches) == {1}
    assert torch.equal(resumed.batches[1], straight.batches[1])
