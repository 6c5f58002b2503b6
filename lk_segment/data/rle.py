"""Kaggle's run-length encoding for Carvana masks.

The (H, W) mask is flattened row-major, pixels are numbered from 1, and the string is
space-separated ``start length`` pairs of the runs of 1s.
"""

from __future__ import annotations

import numpy as np


def rle_encode(mask: np.ndarray) -> str:
    flat = np.asarray(mask).reshape(-1) > 0
    padded = np.concatenate([[False], flat, [False]])
    edges = np.flatnonzero(padded[1:] != padded[:-1]) + 1  # 1-based starts and ends of runs
    starts, ends = edges[::2], edges[1::2]
    return " ".join(f"{s} {n}" for s, n in zip(starts, ends - starts, strict=True))


def rle_decode(rle: str, shape: tuple[int, int]) -> np.ndarray:
    """-> uint8 (H, W) array of 0/1."""
    flat = np.zeros(shape[0] * shape[1], dtype=np.uint8)
    values = np.asarray(rle.split(), dtype=np.int64)
    if values.size % 2:
        raise ValueError("an RLE string holds an even count of numbers (start length pairs)")
    for start, length in zip(values[::2], values[1::2], strict=True):
        flat[start - 1 : start - 1 + length] = 1
    return flat.reshape(shape)
