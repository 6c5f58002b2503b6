"""Carvana in the Kaggle layout: listing, split by car, a decode-once cache, the DataModule.

Decoding a 1918x1280 JPEG costs ~10 ms; at training sizes OpenCV decodes straight at 1/2,
1/4 or 1/8 scale for a fraction of that. Every image is decoded and resized once into a
uint8 array per (dataset, size) under ``data.cache_dir``; later epochs and later runs read
that memory-mapped array and never touch the JPEGs again.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from lk_segment.errors import UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg")
MEAN = np.array([0.485, 0.456, 0.406], np.float32) * 255  # ImageNet statistics, in 0..255
STD = np.array([0.229, 0.224, 0.225], np.float32) * 255


@dataclass(frozen=True)
class Sample:
    image: Path
    mask: Path

    @property
    def car(self) -> str:
        """``<car>_<NN>.jpg`` -> ``<car>``: the key of the split."""
        return self.image.stem.rsplit("_", 1)[0]


def list_samples(root: str | Path) -> list[Sample]:
    """Every ``train/<car>_<NN>.jpg`` with its ``train_masks/<car>_<NN>_mask.gif``, sorted.

    Strict: the first bad entry (a file that is no .jpg, an image without mask) is a ``UserError``.
    """
    samples, bad = find_samples(root)
    if bad:
        raise UserError(bad[0].message)
    return samples


@dataclass(frozen=True)
class BadFile:
    """A file training cannot use, and the one-line reason (which says how to fix it)."""

    path: Path
    reason: str

    @property
    def message(self) -> str:
        return f"{self.reason}; or set data.on_bad_file=skip to leave such files out"


def check_root(root: str | Path) -> Path:
    """``root`` when it is a folder with a train/ folder; else the one-line error that says what to fix."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"data root {str(root)!r} does not exist: set data.root to a folder holding train/ "
                        "and train_masks/")
    if not (root / "train").is_dir():
        raise UserError(f"data root {str(root)!r} has no train/ folder: data.root must be in the Kaggle layout "
                        "(train/, train_masks/)")
    return root


def find_samples(root: str | Path) -> tuple[list[Sample], list[BadFile]]:
    """(usable samples, bad files) of a Kaggle-layout folder; hidden files are ignored."""
    root = check_root(root)
    train = root / "train"
    files = sorted(p for p in train.iterdir() if not p.name.startswith("."))
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
    if not images:
        raise UserError(f"{str(train)!r} holds no .jpg images: put the Kaggle train/*.jpg photos there "
                        "(their masks in train_masks/) or point data.root elsewhere")
    bad = [BadFile(p, f"{str(p)!r} is not a .jpg image: remove it from {train.name}/") for p in files
           if p not in set(images)]
    samples = []
    for image in images:
        mask = root / "train_masks" / f"{image.stem}_mask.gif"
        if mask.is_file():
            samples.append(Sample(image, mask))
        else:
            bad.append(BadFile(image, f"image {image.name!r} has no mask: add {str(mask)!r} or remove the image"))
    return samples, sorted(bad, key=lambda b: b.path)


def split_by_car(samples: list[Sample], val_fraction: float, seed: int, folds: int = 0,
                 fold: int = 0) -> tuple[list[Sample], list[Sample]]:
    """Seeded split of the cars (never of the images): all views of a car land on one side.

    ``folds`` = 0: a ``val_fraction`` of the cars validates. ``folds`` = k >= 2: k-fold cross-validation
    by car: the cars, shuffled by ``seed``, are dealt to k folds in turn (sizes differ by one at most)
    and fold ``fold`` validates, so over the k folds every car is validated exactly once.
    """
    cars = sorted({s.car for s in samples})
    if len(cars) < 2:
        raise UserError(f"need at least 2 cars to split train/validation, found {len(cars)}")
    order = np.random.default_rng(seed).permutation(len(cars))
    if folds:
        if folds < 2 or folds > len(cars):
            raise UserError(f"data.folds={folds}: give 0 (a val_fraction split) or 2..{len(cars)} (one fold per car "
                            f"at most: {len(cars)} cars)")
        if not 0 <= fold < folds:
            raise UserError(f"data.fold={fold}: give 0..{folds - 1} (data.folds={folds})")
        val_cars = {cars[i] for j, i in enumerate(order) if j % folds == fold}
    else:
        n_val = min(len(cars) - 1, max(1, round(len(cars) * val_fraction)))
        val_cars = {cars[i] for i in order[:n_val]}
    train = [s for s in samples if s.car not in val_cars]
    val = [s for s in samples if s.car in val_cars]
    return train, val


def read_image(path: Path, size: tuple[int, int]) -> np.ndarray:
    """-> RGB uint8 (H, W, 3) at ``size`` = (H, W), decoded at a reduced scale where it can be."""
    h, w = size
    full_h, full_w = _full_size(path)
    flag = cv2.IMREAD_COLOR
    for factor, reduced in ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4),
                            (2, cv2.IMREAD_REDUCED_COLOR_2)):
        if full_h >= h * factor and full_w >= w * factor:
            flag = reduced
            break
    bgr = cv2.imread(str(path), flag)
    if bgr is None:
        raise UserError(f"cannot read image {str(path)!r}: the file is not a readable JPEG (remove or replace it)")
    if bgr.shape[:2] != (h, w):
        bgr = cv2.resize(bgr, (w, h), interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


_SIZE_CACHE: dict[Path, tuple[int, int]] = {}


def _full_size(path: Path) -> tuple[int, int]:
    """(H, W) of a JPEG from its header, without decoding it."""
    if path not in _SIZE_CACHE:
        try:
            with Image.open(path) as im:
                w, h = im.size
        except Exception as exc:
            raise UserError(f"cannot read image {str(path)!r}: it is not a readable JPEG; replace or remove it"
                            ) from exc
        _SIZE_CACHE[path] = (h, w)
    return _SIZE_CACHE[path]


def read_mask(path: Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """-> uint8 (H, W) of 0/1 (any non-zero palette index is foreground), resized if asked."""
    try:
        with Image.open(path) as im:
            mask = (np.asarray(im) > 0).astype(np.uint8)
    except Exception as exc:
        raise UserError(f"cannot read mask {str(path)!r}: it is not a readable GIF; replace or remove it") from exc
    if size is not None and mask.shape != tuple(size):
        h, w = size
        mask = (cv2.resize(mask * 255, (w, h), interpolation=cv2.INTER_AREA) > 127).astype(np.uint8)
    return mask


def _check_complete_jpeg(path: Path) -> None:
    """A JPEG ends with the EOI marker (FF D9); OpenCV decodes a truncated one silently, grey-filled."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 1024))
        tail = f.read().rstrip(b"\x00\r\n ")
    if not tail.endswith(b"\xff\xd9"):
        raise UserError(f"image {str(path)!r} is a truncated JPEG (no end-of-image marker): replace or remove it")


def _load_pair(sample: Sample, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    image = read_image(sample.image, size)
    _check_complete_jpeg(sample.image)
    full = _full_size(sample.image)
    mask = read_mask(sample.mask)
    if mask.shape != full:
        raise UserError(f"mask {str(sample.mask)!r} is {mask.shape[1]}x{mask.shape[0]} but its image is "
                        f"{full[1]}x{full[0]}: replace the mask with one of its image's size")
    h, w = size
    mask = (cv2.resize(mask * 255, (w, h), interpolation=cv2.INTER_AREA) > 127).astype(np.uint8)
    return image, mask


class DecodedCache:
    """Images (N, H, W, 3) and masks (N, H, W) as uint8 .npy files, memory-mapped on read.

    The key hashes the files' paths, sizes and modification times and the target size, so a
    changed dataset gets a new cache and an unchanged one is reused by every later run.
    ``decode_count`` counts the files decoded by this process (0 when the cache was reused).
    """

    decode_count = 0

    def __init__(self, samples: list[Sample], size: tuple[int, int], cache_dir: str | Path):
        self.samples, self.size = samples, tuple(size)
        digest = hashlib.sha1(json.dumps(
            [self.size] + [(str(s.image.resolve()), s.image.stat().st_size, s.image.stat().st_mtime_ns,
                            s.mask.stat().st_mtime_ns) for s in samples]).encode()).hexdigest()[:16]
        self.dir = Path(cache_dir) / f"{size[0]}x{size[1]}-{digest}"

    @property
    def ready(self) -> bool:
        return (self.dir / "done").exists()

    @property
    def skipped(self) -> list[BadFile]:
        """Samples that could not be decoded when the cache was built with on_bad_file=skip."""
        path = self.dir / "skipped.json"
        if not path.exists():
            return []
        return [BadFile(Path(p), reason) for p, reason in json.loads(path.read_text())]

    def build(self, progress: bool = True, threads: int | None = None, on_bad_file: str = "error") -> None:
        """Decode every sample once (threads: OpenCV releases the GIL); atomic per cache.

        A sample that cannot be decoded stops the build (``on_bad_file="error"``, nothing is left
        behind) or is zero-filled and listed in ``skipped.json`` (``"skip"``).
        """
        if self.ready:
            return
        import shutil

        from tqdm.auto import tqdm

        h, w = self.size
        # per host and process: nodes of a multi-node run may share the folder (and container pids)
        tmp = self.dir.with_name(self.dir.name + f".tmp-{socket.gethostname()}-{os.getpid()}")
        tmp.mkdir(parents=True, exist_ok=True)
        n = len(self.samples)
        skipped: list[tuple[str, str]] = []

        def load(sample: Sample):
            try:
                return _load_pair(sample, self.size)
            except UserError as exc:
                if on_bad_file != "skip":
                    raise
                return exc

        try:
            images = np.lib.format.open_memmap(tmp / "images.npy", "w+", np.uint8, (n, h, w, 3))
            masks = np.lib.format.open_memmap(tmp / "masks.npy", "w+", np.uint8, (n, h, w))
            threads = threads or min(4, os.cpu_count() or 1)
            with ThreadPoolExecutor(threads) as pool:
                pairs = pool.map(load, self.samples)
                for i, pair in enumerate(tqdm(pairs, total=n, desc=f"caching {n} images at {h}x{w}",
                                              disable=not progress, unit="img")):
                    if isinstance(pair, UserError):
                        skipped.append((str(self.samples[i].image), str(pair)))
                    else:
                        images[i], masks[i] = pair
            images.flush(), masks.flush()
            del images, masks
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)  # a failed build leaves nothing behind
            raise
        (tmp / "index.json").write_text(json.dumps([s.image.name for s in self.samples]))
        if skipped:
            (tmp / "skipped.json").write_text(json.dumps(skipped))
        (tmp / "done").write_text("ok\n")
        DecodedCache.decode_count += n
        try:
            tmp.rename(self.dir)
        except OSError:  # another process finished the same cache first: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        if not self.ready:
            raise RuntimeError(f"cache {self.dir} is not built: call build() first")
        return (np.load(self.dir / "images.npy", mmap_mode="r"),
                np.load(self.dir / "masks.npy", mmap_mode="r"))
