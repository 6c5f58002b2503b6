"""What a variant costs and how far it sees: FLOPs, receptive fields, the variants table.

    lk-segment variants --markdown          # params, GFLOPs, theoretical receptive field
    lk-segment erf --run <mlflow run id>    # effective receptive field of a trained run

The theoretical receptive field (``UNet.receptive_field_px``) is the square an output pixel
*can* depend on; the effective receptive field (Luo et al. 2016, "Understanding the Effective
Receptive Field in Deep CNNs"; measured the same way in RepLKNet, Ding et al. 2022) is where
its gradient actually lands, which is usually far smaller and Gaussian-shaped. Large-kernel
designs are meant to widen the second, not only the first.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from lk_segment.blocks import get_block_class
from lk_segment.config import CONFIG_DIR, available_variants, load_config, to_container, training_size

ERF_FRACTIONS = (0.2, 0.5, 0.99)
README_MARKERS = ("<!-- variants:start -->", "<!-- variants:end -->")


def count_gflops(model: nn.Module, size: tuple[int, int]) -> float:
    """GFLOPs of one forward pass of one image of ``size`` (height, width).

    Counted by ``torch.utils.flop_counter.FlopCounterMode``: a multiply-add is 2 FLOPs, and
    only the matrix products and convolutions count (BatchNorm, activations, pooling and
    additions are a rounding error beside them). The model runs once in eval mode on meta
    copies of its parameters and buffers (shapes only, no arithmetic: free at the training
    size, and nothing of the model moves). This is the cost of the architecture, not of one
    implementation: depthwise convolutions that may run by FFT are counted as direct ones.
    """
    from itertools import chain

    from torch.func import functional_call

    meta = {name: torch.empty_like(t, device="meta") for name, t in chain(model.named_parameters(),
                                                                            model.named_buffers())}
    x = torch.zeros(1, _in_chs(model), *size, dtype=next(model.parameters()).dtype, device="meta")
    counter = FlopCounterMode(display=False)
    with _eval_mode(model), native_depthwise(model), counter, torch.no_grad():
        functional_call(model, meta, (x,))
    return counter.get_total_flops() / 1e9


@contextmanager
def native_depthwise(model: nn.Module) -> Iterator[None]:
    """Run every ``lk_segment.ops.DepthwiseConv2d`` natively inside, then give back its ``impl``.

    FlopCounterMode does not count FFTs, and ``impl="auto"`` would time both implementations
    (under the counter) before choosing one: neither belongs in a count of the architecture.
    """
    from lk_segment.ops import DepthwiseConv2d

    impls = [(module, module.impl) for module in model.modules() if isinstance(module, DepthwiseConv2d)]
    for module, _ in impls:
        module.impl = "native"
    try:
        yield
    finally:
        for module, impl in impls:
            module.impl = impl


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode inside, then every submodule back in the mode it had (a frozen norm stays frozen)."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def _in_chs(model: nn.Module) -> int:
    """The model's input channels: its ``in_chs`` if it says, else its first convolution's."""
    if hasattr(model, "in_chs"):
        return int(model.in_chs)
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            return module.in_channels
    raise ValueError(f"cannot tell the input channels of {type(model).__name__}: give it an in_chs attribute")


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
    with _eval_mode(model):
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


def variants_table(width: int | None = None, height: int | None = None, depth: int | None = None) -> list[dict]:
    """One row per variant in configs/variant: what it is, params, GFLOPs, theoretical RF.

    ``width`` is the U-Net's channels at its first level and ``depth`` its number of poolings
    (None: the configured defaults); ``height`` is the input's height in pixels, its width
    following Carvana's aspect as in training. GFLOPs are per image at that size.
    """
    from lk_segment.system import build_model

    overrides = [f"{key}={value}" for key, value in
                 [("model.width", width), ("model.depth", depth), ("data.height", height)] if value is not None]
    rows = []
    for variant in available_variants():
        cfg = load_config(variant, overrides)
        model = build_model(to_container(cfg)["model"])
        size = training_size(cfg.data.height, cfg.data.width, model.size_multiple)
        cls = get_block_class(cfg.model.block)
        rows.append({
            "name": variant,
            "block": cfg.model.block,
            "kernel_size": cfg.model.kernel_size,
            "description": _variant_description(variant, cls),
            "params_formula": _params_formula(cls),
            "params": sum(p.numel() for p in model.parameters()),
            "gflops": count_gflops(model, size),
            "receptive_field_px": model.receptive_field_px(),
            "width": cfg.model.width, "depth": cfg.model.depth, "size": size,
        })
    return rows


def _variant_description(variant: str, cls: type) -> str:
    """The comment heading configs/variant/<variant>.yaml, else the block's docstring's first line."""
    lines = []
    for line in (CONFIG_DIR / "variant" / f"{variant}.yaml").read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    text = " ".join(lines) or (inspect.getdoc(cls) or "").split("\n\n")[0]
    return re.sub(r"\s+", " ", text).strip()


def _params_formula(cls: type) -> str:
    """The block's ``params_formula``, else the "Params...: <formula>" line of its docstring, else ''."""
    if getattr(cls, "params_formula", ""):
        return cls.params_formula
    match = re.search(r"^\s*Params[^:\n]*:\s*(.+?)\.?\s*$", inspect.getdoc(cls) or "", flags=re.MULTILINE)
    if not match:
        return ""
    return match.group(1).replace("^2", "²").replace("*", "·")


def format_table(rows: list[dict], markdown: bool = False) -> str:
    """The table for a terminal (aligned columns) or for the README (markdown)."""
    if not rows:
        return "no variants: configs/variant holds no .yaml file"
    first = rows[0]
    h, w = first["size"]
    if markdown:
        lines = [
            f"The whole U-Net at `model.width={first['width']}`, `model.depth={first['depth']}`: its params, "
            f"GFLOPs per {h}×{w} image (`FlopCounterMode`: a multiply-add is 2 FLOPs) and theoretical "
            "receptive field (RF: the side, in input pixels, of the square one output pixel can see).",
            "",
            "| name | block | k | what it is | params for C_in→C_out | U-Net params | GFLOPs | RF (px) |",
            "| --- | --- | ---: | --- | --- | ---: | ---: | ---: |",
        ]
        for r in rows:
            lines.append(f"| `{r['name']}` | `{r['block']}` | {r['kernel_size']} | {_md(r['description'])} | "
                         f"{_md(r['params_formula'])} | {r['params']:,} | {r['gflops']:.3f} | "
                         f"{r['receptive_field_px']} |")
        return "\n".join(lines)
    header = ("name", "block", "k", "params", "GFLOPs", "RF px", "what it is")
    body = [(r["name"], r["block"], str(r["kernel_size"]), f"{r['params']:,}", f"{r['gflops']:.3f}",
             str(r["receptive_field_px"]), r["description"]) for r in rows]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header) - 1)]
    lines = [f"model.width={first['width']} model.depth={first['depth']}, GFLOPs per {h}x{w} image"]
    for row in [header, *body]:
        lines.append("  ".join(cell.ljust(n) for cell, n in zip(row[:-1], widths, strict=True)) + "  " + row[-1])
    return "\n".join(lines)


def _md(text: str) -> str:
    return text.replace("|", "\\|")


def readme_table(readme_text: str) -> str:
    """The text between the README's variants markers (without the markers)."""
    start, end = README_MARKERS
    if start not in readme_text or end not in readme_text:
        raise ValueError(f"the README lacks the markers {start} ... {end} around the variants table")
    return readme_text.split(start, 1)[1].split(end, 1)[0].strip("\n")


def replace_readme_table(readme_text: str, table: str) -> str:
    """``readme_text`` with the text between the variants markers replaced by ``table``."""
    start, end = README_MARKERS
    readme_table(readme_text)  # checks the markers are there
    before, rest = readme_text.split(start, 1)
    after = rest.split(end, 1)[1]
    return f"{before}{start}\n{table}\n{end}{after}"


def erf_metric_name(fraction: float) -> str:
    """0.2 -> 'erf/side_20_px': the MLflow metric holding that square's side."""
    return f"erf/side_{round(fraction * 100)}_px"


def validation_images(data: dict, size_multiple: int, count: int) -> torch.Tensor:
    """``count`` validation images (N, 3, H, W) at the training size, spread over the cars.

    ``data`` is a ``data`` config section (a run's own, from its checkpoint), so the split,
    the size and the normalisation are those the model was validated with.
    """
    from omegaconf import OmegaConf

    from lk_segment.config import DataConfig
    from lk_segment.data.module import CarvanaDataModule

    datamodule = CarvanaDataModule(OmegaConf.merge(OmegaConf.structured(DataConfig), data),
                                   size_multiple=size_multiple, progress=False)
    datamodule.prepare_data()
    datamodule.setup()
    val = datamodule.val_set
    # Evenly spaced indices: the first N would all be views of the same one or two cars.
    picks = np.unique(np.linspace(0, len(val) - 1, min(count, len(val))).round().astype(int))
    return torch.stack([val[int(i)][0] for i in picks])


def _measure_erf(model: nn.Module, images: torch.Tensor, png: Path, title: str) -> dict:
    from lk_segment.errors import UserError

    erf = erf_map(model, images)
    if not erf.sum() > 0:  # seen with width-4 models: every path to the centre crosses a ReLU at zero
        raise UserError(f"the centre logit has no gradient on these {len(images)} images (ReLUs all off there): "
                        "pass more --images or use a wider model (model.width)")
    sides = erf_sides(erf)
    h, w = erf.shape
    rf = model.receptive_field_px()
    title = f"{title}\nERF over {len(images)} validation images at {h}×{w}; theoretical RF {rf} px"
    return {"sides": sides, "png": save_erf_png(erf, png, title), "images": len(images), "size": (h, w),
            "receptive_field_px": rf}


def erf_of_run(run_id: str, count: int = 16, out_dir: str | Path = "erf") -> dict:
    """ERF of a run's best checkpoint on its own validation images; logged to that run.

    Logs ``erf/side_20_px``, ``erf/side_50_px``, ``erf/side_99_px`` and the artifact
    ``erf/erf.png``; the PNG is also kept at ``<out_dir>/<run_id>/erf.png``.
    """
    from lk_segment.errors import UserError
    from lk_segment.predict import load_system
    from lk_segment.tracking import client, find_checkpoint, get_run

    run = get_run(run_id)
    ckpt = find_checkpoint(run_id)
    system = load_system(ckpt)
    data = system.hparams.get("data")
    if not data:
        raise UserError(f"checkpoint {ckpt.name!r} of run {run_id!r} holds no data config: "
                        "use `lk-segment erf --variant` with the same data.* overrides instead")
    images = validation_images(data, system.model.size_multiple, count)
    variant = run.data.tags.get("variant", run.info.run_name)
    result = _measure_erf(system.model, images, Path(out_dir) / run_id / "erf.png",
                          f"{variant}, run {run_id[:8]} ({ckpt.name})")
    mlflow = client()
    for fraction, side in result["sides"].items():
        mlflow.log_metric(run_id, erf_metric_name(fraction), side)
    mlflow.log_artifact(run_id, str(result["png"]), "erf")
    return result


def erf_of_variant(variant: str, overrides: list[str] | tuple[str, ...] = (), count: int = 16,
                   out_dir: str | Path = "erf") -> dict:
    """ERF of a freshly initialised model of ``variant`` (seeded by ``seed``), PNG in ``<out_dir>/<variant>/``.

    The baseline for a trained run: what the architecture alone gives before training
    reshapes it. The images are the config's own validation images.
    """
    from lk_segment.system import build_model

    cfg = load_config(variant, overrides)
    torch.manual_seed(cfg.seed)
    model = build_model(to_container(cfg)["model"])
    images = validation_images(to_container(cfg)["data"], model.size_multiple, count)
    return _measure_erf(model, images, Path(out_dir) / variant / "erf.png",
                        f"{variant}, freshly initialised (seed {cfg.seed})")
