"""The comparison's and the study's plots, from numbers already computed (no MLflow here).

- ``plot_scatter``: Dice against epoch time or params, with the Pareto front (``make compare``);
- ``plot_curves``: every run's training curves; ``plot_erf``: the ERF heat-maps side by side;
- ``plot_time_to_accuracy``: val/dice against cumulative training time, median over folds (``make study``);
- ``plot_differences``: each variant's difference to the reference with its interval.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from lk_segment.comparison.records import CURVE_KEYS, RunRecord


def colours(variants: list[str]) -> dict[str, tuple]:
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return {v: cmap(i % 10) for i, v in enumerate(variants)}


def plot_scatter(rows: list, x_key: str, y_key: str, path: Path, xlabel: str, ylabel: str,
                 front: list[str] | None = None) -> None:
    """One point per variant row (mean ± std over seeds of ``x_key`` and ``y_key``); ``front`` joined."""
    import matplotlib.pyplot as plt

    colour = colours([r.variant for r in rows])
    key = y_key
    fig, ax = plt.subplots(figsize=(6, 4.2), dpi=90)
    points = {}
    for r in rows:
        x = (float(r.params), 0.0) if x_key == "params" else r.stats[x_key]
        y = r.stats[key]
        points[r.variant] = (x[0], y[0])
        ax.errorbar(x[0], y[0], xerr=x[1], yerr=y[1], fmt="o", color=colour[r.variant], capsize=3, label=r.variant)
        ax.annotate(r.variant, (x[0], y[0]), textcoords="offset points", xytext=(5, 5), fontsize=9)
    if front:
        xs, ys = zip(*sorted(points[v] for v in front), strict=True)
        ax.plot(xs, ys, "--", color="grey", lw=1, label="Pareto front")
    if x_key == "params":
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_curves(records: list[RunRecord], order: list[str], path: Path) -> None:
    """Every run's training curves (CURVE_KEYS against the epoch), coloured by variant."""
    import matplotlib.pyplot as plt

    colour = colours(order)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), dpi=90)
    for ax, key in zip(axes, CURVE_KEYS, strict=True):
        for r in sorted(records, key=lambda r: (order.index(r.variant), r.seed)):
            values = r.curves.get(key, [])
            label = r.variant if r.seed == min(o.seed for o in records if o.variant == r.variant) else None
            ax.plot(range(1, len(values) + 1), values, marker=".", color=colour[r.variant], alpha=0.8, label=label)
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_erf(records: list[RunRecord], rows: list, path: Path) -> bool:
    """ERF heat-maps side by side: each run's map scaled to max 1, averaged over seeds, on one log
    colour scale and cropped to one window around the centre (so the sizes compare at a glance)."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    maps = {}
    for row in rows:
        erfs = [
            r.erf / max(float(r.erf.max()), 1e-12) for r in records if r.variant == row.variant and r.erf is not None
        ]
        if erfs and all(e.shape == erfs[0].shape for e in erfs):
            maps[row.variant] = np.mean(erfs, axis=0)
    if not maps:
        return False
    widest = max((r.stats["erf_99_px"][0] for r in rows if "erf_99_px" in r.stats), default=64)
    half = max(16, int(widest * 0.75))  # window side: 1.5 x the widest 99% square
    fig, axes = plt.subplots(1, len(maps), figsize=(2.4 * len(maps) + 0.8, 2.9), dpi=90, squeeze=False)
    stats = {r.variant: r.stats for r in rows}
    for ax, (variant, erf) in zip(axes[0], maps.items(), strict=True):
        h, w = erf.shape
        crop = erf[max(0, h // 2 - half) : h // 2 + half + 1, max(0, w // 2 - half) : w // 2 + half + 1]
        image = ax.imshow(np.maximum(crop, 1e-4), cmap="magma", norm=LogNorm(vmin=1e-4, vmax=1.0))
        sides = [
            f"{pct}%: {stats[variant][f'erf_{pct}_px'][0]:.0f} px"
            for pct in (50, 99)
            if f"erf_{pct}_px" in stats[variant]
        ]
        ax.set_title(variant + ("\n" + ", ".join(sides) if sides else ""), fontsize=9)
        ax.set_xticks([]), ax.set_yticks([])
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8, label="|gradient| / max")
    fig.savefig(path)
    plt.close(fig)
    return True


def plot_time_to_accuracy(found: dict, machine: str | None, budget: float, path: Path) -> Path:
    """val/dice against training time, median over folds (each result's ``curve_times``, ``curve_dice``): the
    whole curves, and beside them the top of them (from just below the lowest final value), where the variants
    part; ``budget``, the equal time, as a line."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), dpi=90)
    cmap = plt.get_cmap("tab10")
    drawn = {v: r for v, r in found.items() if r.curve_times}
    for ax in axes:
        for i, (v, r) in enumerate(found.items()):
            if v in drawn:
                ax.plot(np.array(r.curve_times) / 60, r.curve_dice, marker=".", color=cmap(i % 10), label=v)
        if not math.isnan(budget):
            ax.axvline(budget / 60, color="grey", ls="--", lw=1, label="equal time (fastest's total)")
        ax.set_xlabel(f"cumulative training time (min){f', {machine}' if machine else ''}", fontsize=8)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("val/dice (median over folds)")
    axes[0].set_title("whole training", fontsize=9)
    finals = [r.curve_dice[-1] for r in drawn.values()]
    if finals:
        low = min(finals) - 0.01
        axes[1].set_ylim(low, max(max(r.curve_dice) for r in drawn.values()) + 0.002)
    axes[1].set_title("the top, where the variants part", fontsize=9)
    axes[1].legend(fontsize=7, ncol=2, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_differences(diffs: list, reference: str, confidence: float, path: Path) -> Path:
    """Each variant's difference to the reference with its interval (``statistics.Difference``): the
    conclusions at a glance."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 0.45 * len(diffs) + 1.4), dpi=90)
    colours = {"better": "tab:green", "worse": "tab:red", "no detectable difference": "tab:grey"}
    for y, d in enumerate(diffs):
        ax.errorbar(d.diff, y, xerr=[[d.diff - d.low], [d.high - d.diff]], fmt="o", capsize=3,
                    color=colours[d.verdict])
    ax.axvline(0, color="black", lw=1)
    ax.set_yticks(range(len(diffs)), [d.variant for d in diffs])
    ax.set_xlabel(f"mean per-photo full-resolution Dice minus {reference}'s ({confidence:.0%} interval, "
                  "bootstrap over cars)", fontsize=8)
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
