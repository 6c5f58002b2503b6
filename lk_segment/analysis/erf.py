"""The effective receptive field (ERF): where a centre output pixel's gradient actually lands.

    lk-segment erf --run <mlflow run id>    # of a trained run, logged to it
    lk-segment erf --variant 5x5            # of a freshly initialised model

The theoretical receptive field (``UNet.receptive_field_px``) is the square an output pixel
*can* depend on; the effective receptive field (Luo et al. 2016, "Understanding the Effective
Receptive Field in Deep CNNs"; measured the same way in RepLKNet, Ding et al. 2022) is where
its gradient actually lands, which is usually far smaller and Gaussian-shaped. Large-kernel
designs are meant to widen the second, not only the first. One pipeline measures it for
``lk-segment erf --run`` and for every training of ``lk-segment compare``:
``erf_of_checkpoint``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from torch import nn

from lk_segment import names
from lk_segment.analysis import eval_mode
from lk_segment.config import DataConfig, load_config, to_container
from lk_segment.errors import UserError

ERF_FRACTIONS = (0.2, 0.5, 0.99)  # sides of the centred squares holding these shares of the ERF


def erf_metric_name(fraction: float) -> str:
    """0.2 -> 'erf/side_20_px': the MLflow metric holding that square's side."""
    return f"erf/side_{round(fraction * 100)}_px"


def erf_map(model: nn.Module, images: torch.Tensor, batch_size: int = 8) -> np.ndarray:
    """Effective receptive field (H, W) of the centre output pixel over ``images`` (N, C, H, W).

    For each image, the gradient of the centre pixel's first logit with respect to the input,
    |grad| summed over the input channels; averaged over the N images. The model runs in eval
    mode (BatchNorm uses its running statistics, so images do not interact) and its
    parameters' gradients are left untouched.
    """
    param = next(model.parameters())
    n, _, h, w = images.shape
    total = torch.zeros(h, w, dtype=torch.float64)
    with eval_mode(model):
        for start in range(0, n, batch_size):
            x = images[start : start + batch_size].to(device=param.device, dtype=param.dtype).requires_grad_(True)
            centre = model(x)[:, 0, h // 2, w // 2]  # (B,): one logit per image
            (grad,) = torch.autograd.grad(centre.sum(), x)  # images are independent: one backward for all
            total += grad.abs().sum(dim=1).sum(dim=0).double().cpu()  # (B, C, H, W) -> (H, W)
    return (total / n).numpy()


def erf_sides(erf: np.ndarray, fractions: tuple[float, ...] = ERF_FRACTIONS) -> dict[float, int]:
    """Side (px) of the smallest square centred on the centre pixel that holds each fraction.

    The square of side 2r+1 holds the pixels within Chebyshev distance r of (H//2, W//2);
    near the border it is clipped to the image, so its side can exceed the image's.
    """
    h, w = erf.shape
    total = float(erf.sum())
    if not total > 0:
        raise ValueError("the ERF map holds no gradient at all (all zero): is the model's output constant?")
    ys, xs = np.ogrid[:h, :w]
    ring = np.maximum(np.abs(ys - h // 2), np.abs(xs - w // 2))  # (H, W): Chebyshev distance to the centre
    mass_within = np.cumsum(np.bincount(ring.ravel(), weights=erf.ravel().astype(np.float64)))  # by radius r
    sides = {}
    for fraction in fractions:
        # The tolerance keeps fraction=1.0 from missing the last ring by a rounding error.
        r = int(np.searchsorted(mass_within, fraction * total * (1 - 1e-12)))
        sides[fraction] = 2 * min(r, len(mass_within) - 1) + 1
    return sides


def save_erf_png(erf: np.ndarray, path: str | Path, title: str) -> Path:
    """Heat-map of ``erf`` on a log scale, with the 20/50/99% squares outlined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm
    from matplotlib.patches import Rectangle

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = erf.shape
    rel = erf / erf.max()
    floor = max(float(rel[rel > 0].min()), 1e-6)  # log scale: zeros drawn at the floor colour
    fig, ax = plt.subplots(figsize=(6.4, 6.4 * h / w + 0.8), layout="constrained")
    image = ax.imshow(np.maximum(rel, floor), cmap="inferno", norm=LogNorm(vmin=floor, vmax=1.0),
                      interpolation="nearest")
    cy, cx = h // 2, w // 2
    for (fraction, side), colour in zip(erf_sides(erf).items(), ["#7fdbff", "#2ecc40", "#ffffff"], strict=False):
        ax.add_patch(Rectangle((cx - side / 2, cy - side / 2), side, side, fill=False, lw=1.2, ls="--",
                               edgecolor=colour, label=f"{fraction:.0%} of the total: {side} px"))
    ax.plot([cx], [cy], marker="+", color="cyan", markersize=8)
    ax.set_xlim(-0.5, w - 0.5), ax.set_ylim(h - 0.5, -0.5)
    ax.set_xlabel("x (input pixels)"), ax.set_ylabel("y (input pixels)")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="lower left", fontsize=8, framealpha=0.6)
    fig.colorbar(image, ax=ax, shrink=0.8, label="|d centre logit / d input|, relative to its maximum")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def measure_erf(model: nn.Module, images: torch.Tensor, png: Path, title: str) -> dict:
    """The ERF map of ``model`` over ``images``, the sides of its squares and its heat-map at ``png``."""
    erf = erf_map(model, images)
    if not erf.sum() > 0:  # seen with width-4 models: every path to the centre crosses a ReLU at zero
        raise UserError(f"the centre logit has no gradient on these {len(images)} images (ReLUs all off there): "
                        "pass more --images or use a wider model (model.width)")
    sides = erf_sides(erf)
    h, w = erf.shape
    rf = model.receptive_field_px()
    title = f"{title}\nERF over {len(images)} validation images at {h}×{w}; theoretical RF {rf} px"
    return {"erf": erf, "sides": sides, "png": save_erf_png(erf, png, title), "images": len(images), "size": (h, w),
            "receptive_field_px": rf}


def erf_of_checkpoint(checkpoint: str | Path, run_id: str, count: int = names.ERF_IMAGES,
                      out_dir: str | Path = "erf") -> dict:
    """ERF of a run's checkpoint on ``count`` of its own validation images, logged to the run.

    Logs ``erf/side_20_px``, ``erf/side_50_px``, ``erf/side_99_px`` and, under the artifact
    folder ``erf/``, the heat-map ``erf.png`` and the map itself, ``erf.npy`` (from which the
    comparison's report draws every variant side by side, from MLflow alone). Both files are
    also kept under ``<out_dir>/<run_id>/``.
    """
    from lk_segment.tracking import client, get_run
    from lk_segment.training.checkpointing import load_system

    run = get_run(run_id)
    checkpoint = Path(checkpoint)
    system = load_system(checkpoint)
    data = system.hparams.get("data")
    if not data:
        raise UserError(f"checkpoint {checkpoint.name!r} of run {run_id!r} holds no data config: "
                        "use `lk-segment erf --variant` with the same data.* overrides instead")
    from lk_segment.data.module import validation_photos

    images = validation_photos(OmegaConf.merge(OmegaConf.structured(DataConfig), data), system.model.size_multiple,
                               count)
    variant = run.data.tags.get("variant", run.info.run_name)
    folder = Path(out_dir) / run_id
    result = measure_erf(system.model, images, folder / "erf.png",
                         f"{variant}, run {run_id[:8]} ({checkpoint.name})")
    np.save(folder / "erf.npy", result["erf"].astype(np.float32))
    mlflow = client()
    for fraction, side in result["sides"].items():
        mlflow.log_metric(run_id, erf_metric_name(fraction), side)
    for name in ("erf.png", "erf.npy"):
        mlflow.log_artifact(run_id, str(folder / name), "erf")
    return result


def erf_of_run(run_id: str, count: int = names.ERF_IMAGES, out_dir: str | Path = "erf") -> dict:
    """ERF of a run's best checkpoint (else its last), logged to that run (see ``erf_of_checkpoint``)."""
    from lk_segment.tracking import find_checkpoint

    return erf_of_checkpoint(find_checkpoint(run_id), run_id, count, out_dir)


def erf_of_variant(variant: str, overrides: list[str] | tuple[str, ...] = (), count: int = names.ERF_IMAGES,
                   out_dir: str | Path = "erf") -> dict:
    """ERF of a freshly initialised model of ``variant`` (seeded by ``seed``), PNG in ``<out_dir>/<variant>/``.

    The baseline for a trained run: what the architecture alone gives before training
    reshapes it. The images are the config's own validation images.
    """
    from lk_segment.system import build_model

    cfg = load_config(variant, overrides)
    torch.manual_seed(cfg.seed)
    model = build_model(to_container(cfg)["model"])
    from lk_segment.data.module import validation_photos

    images = validation_photos(cfg.data, model.size_multiple, count)
    return measure_erf(model, images, Path(out_dir) / variant / "erf.png",
                       f"{variant}, freshly initialised (seed {cfg.seed})")
