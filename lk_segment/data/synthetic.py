"""The embedded default dataset: synthetic "cars" in exactly the Kaggle Carvana layout.

Each car has a body colour, proportions and wheels; its 16 views turn it round a
turntable (long in profile, short head-on), over a background of its own (gradient floor,
wall, noise) with a soft shadow under it that is not part of the mask. Images are RGB JPEG,
masks palette GIF with values 0 and 1, as Kaggle's: ``train/<car>_<NN>.jpg``,
``train_masks/<car>_<NN>_mask.gif``.
"""

from __future__ import annotations

import math
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

VIEWS = 16


def _car_polygons(rng: np.random.Generator, view: int, width: int, height: int):
    """Outline polygons (body, cabin) and wheel ellipses of one view, in pixels."""
    theta = 2 * math.pi * view / VIEWS
    length, breadth = rng.uniform(0.55, 0.7), rng.uniform(0.28, 0.36)  # of the image width
    apparent = (length * abs(math.sin(theta)) + breadth * abs(math.cos(theta))) * width
    cx = width * rng.uniform(0.46, 0.54)
    ground = height * rng.uniform(0.72, 0.8)
    body_h = height * rng.uniform(0.17, 0.22)
    cabin_h = body_h * rng.uniform(0.7, 0.95)
    x0, x1 = cx - apparent / 2, cx + apparent / 2
    top = ground - body_h
    nose = apparent * 0.08
    body = np.array([[x0, ground - body_h * 0.25], [x0 + nose, top], [x1 - nose, top],
                     [x1, ground - body_h * 0.25], [x1, ground], [x0, ground]])
    cab_w = apparent * rng.uniform(0.5, 0.65)
    shift = apparent * 0.12 * math.cos(theta)  # the cabin sits back from the nose
    c0, c1 = cx - cab_w / 2 + shift, cx + cab_w / 2 + shift
    cabin = np.array([[c0, top + 2], [c0 + cab_w * 0.2, top - cabin_h],
                      [c1 - cab_w * 0.15, top - cabin_h], [c1, top + 2]])
    wheel_r = body_h * 0.42
    profile = abs(math.sin(theta))
    wheels = [(x0 + apparent * 0.2, ground, wheel_r * (0.35 + 0.65 * profile), wheel_r),
              (x1 - apparent * 0.2, ground, wheel_r * (0.35 + 0.65 * profile), wheel_r)]
    return body, cabin, wheels, (cx, ground, apparent)


def render(car: int, view: int, width: int = 1918, height: int = 1280) -> tuple[np.ndarray, np.ndarray]:
    """-> (RGB uint8 (H, W, 3) image, uint8 (H, W) mask of 0/1), deterministic per (car, view)."""
    car_rng = np.random.default_rng(1000 + car)
    rng = np.random.default_rng(car * VIEWS + view)
    # Background: a wall and a floor, coarse noise upsampled (cheap at full size).
    wall, floor = car_rng.uniform(60, 230, 3), car_rng.uniform(40, 200, 3)
    horizon = int(height * car_rng.uniform(0.45, 0.65))
    img = np.empty((height, width, 3), np.float32)
    img[:horizon] = wall
    ramp = np.linspace(0.8, 1.2, height - horizon, dtype=np.float32)[:, None, None]
    img[horizon:] = floor * ramp
    noise = cv2.resize(rng.normal(0, 14, (12, 18, 3)).astype(np.float32), (width, height),
                       interpolation=cv2.INTER_CUBIC)
    img += noise

    body, cabin, wheels, (cx, ground, apparent) = _car_polygons(car_rng, view, width, height)
    # Shadow: a blurred dark ellipse under the car, outside the mask.
    shadow = np.zeros((height // 8, width // 8), np.float32)
    cv2.ellipse(shadow, (int(cx / 8), int(ground / 8)), (int(apparent / 13), int(height / 80) + 1),
                0, 0, 360, 1.0, -1)
    shadow = cv2.resize(cv2.GaussianBlur(shadow, (0, 0), 3), (width, height))
    img *= (1 - 0.55 * shadow)[..., None]

    mask = np.zeros((height, width), np.uint8)
    cv2.fillPoly(mask, [body.astype(np.int32), cabin.astype(np.int32)], 1)
    for x, y, rx, ry in wheels:
        cv2.ellipse(mask, (int(x), int(y)), (max(1, int(rx)), int(ry)), 0, 0, 360, 1, -1)
    paint = car_rng.uniform(0, 255, 3).astype(np.float32)
    shade = np.linspace(1.15, 0.75, height, dtype=np.float32)[:, None, None]
    car_px = np.clip(paint * shade + noise * 0.5, 0, 255)
    img = np.where(mask[..., None] > 0, car_px, img)
    windows = np.zeros_like(mask)
    cv2.fillPoly(windows, [cabin.astype(np.int32)], 1)
    img = np.where(windows[..., None] > 0, img * 0.35 + 20, img)
    for x, y, rx, ry in wheels:  # tyres
        cv2.ellipse(img, (int(x), int(y)), (max(1, int(rx)), int(ry)), 0, 0, 360, (25, 25, 25), -1)
    return np.clip(img, 0, 255).astype(np.uint8), mask


def _write_one(args: tuple[Path, int, int, int, int]) -> None:
    root, car, view, width, height = args
    img, mask = render(car, view, width, height)
    name = f"synth{car:04d}_{view + 1:02d}"
    cv2.imwrite(str(root / "train" / f"{name}.jpg"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR),
                [cv2.IMWRITE_JPEG_QUALITY, 90])
    gif = Image.fromarray(mask, mode="L").convert("P")
    gif.putpalette([0, 0, 0, 255, 255, 255] + [0, 0, 0] * 254)
    gif.save(root / "train_masks" / f"{name}_mask.gif")


def generate(root: str | Path, cars: int = 32, width: int = 1918, height: int = 1280,
             workers: int = 2, progress: bool = True) -> Path:
    """Write ``cars`` x 16 images and masks under ``root`` in the Kaggle layout; return root."""
    root = Path(root)
    (root / "train").mkdir(parents=True, exist_ok=True)
    (root / "train_masks").mkdir(parents=True, exist_ok=True)
    jobs = [(root, car, view, width, height) for car in range(cars) for view in range(VIEWS)]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            results = pool.map(_write_one, jobs, chunksize=8)
            _drain(results, len(jobs), progress, "generating synthetic Carvana")
    else:
        _drain(map(_write_one, jobs), len(jobs), progress, "generating synthetic Carvana")
    (root / "SYNTHETIC").write_text(f"cars={cars} views={VIEWS} size={width}x{height}\n")
    return root


def _drain(results, total: int, progress: bool, desc: str) -> None:
    from tqdm.auto import tqdm

    for _ in tqdm(results, total=total, desc=desc, disable=not progress, unit="img"):
        pass
