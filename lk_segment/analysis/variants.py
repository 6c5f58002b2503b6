"""The variants table: what each variant in configs/variant is, its params, GFLOPs and
theoretical receptive field; and the README's copy of it, between two markers.

    lk-segment variants                                # for a terminal
    lk-segment variants --markdown --readme README.md  # rewrite the README's table (make readme-variants)
"""

from __future__ import annotations

from lk_segment.analysis.flops import count_gflops
from lk_segment.blocks import get_block_class
from lk_segment.config import available_variants, load_config, to_container, training_size
from lk_segment.markdown import table

README_MARKERS = ("<!-- variants:start -->", "<!-- variants:end -->")


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
        block = get_block_class(cfg.model.block)
        rows.append({
            "name": variant,
            "block": cfg.model.block,
            "kernel_size": cfg.model.kernel_size,
            "description": block.description,
            "params_formula": block.params_formula,
            "params": sum(p.numel() for p in model.parameters()),
            "gflops": count_gflops(model, size),
            "receptive_field_px": model.receptive_field_px(),
            "width": cfg.model.width, "depth": cfg.model.depth, "size": size,
        })
    return rows


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
        ]
        lines += table(["name", "block", "k", "what it is", "params for C_in→C_out", "U-Net params", "GFLOPs",
                        "RF (px)"],
                       [[f"`{r['name']}`", f"`{r['block']}`", r["kernel_size"], r["description"], r["params_formula"],
                         f"{r['params']:,}", f"{r['gflops']:.3f}", r["receptive_field_px"]] for r in rows],
                       right=(2, 5, 6, 7))
        return "\n".join(lines)
    header = ("name", "block", "k", "params", "GFLOPs", "RF px", "what it is")
    body = [(r["name"], r["block"], str(r["kernel_size"]), f"{r['params']:,}", f"{r['gflops']:.3f}",
             str(r["receptive_field_px"]), r["description"]) for r in rows]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header) - 1)]
    lines = [f"model.width={first['width']} model.depth={first['depth']}, GFLOPs per {h}x{w} image"]
    for row in [header, *body]:
        lines.append("  ".join(cell.ljust(n) for cell, n in zip(row[:-1], widths, strict=True)) + "  " + row[-1])
    return "\n".join(lines)


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
