"""The comparison's report, rebuilt from MLflow alone (no retraining): a results table (CSV and
Markdown), plots (PNG) and a conclusions paragraph generated from the numbers.

    lk-segment report compare                      # the latest comparison in experiment "compare"
    lk-segment report compare --out docs/results --markdown docs/results.md

The headline per run: ``val/dice_full_best``, the best checkpoint's mean per-image Dice at the
photos' full resolution (Kaggle's metric, ``lk_segment.training.full_res``), with the best low-resolution
``val/dice`` over its epochs beside it (runs that did not log the former rank by the latter).
Also per run: the median over epochs of
``perf/epoch_time_s`` and ``perf/train_images_per_s`` (the median ignores the first epoch's
one-off start-up); the peak of ``perf/gpu_peak_mem_mb`` where present, else of
``perf/cpu_peak_rss_mb``. Per variant: mean and standard deviation over its seeds.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lk_segment import names
from lk_segment.analysis.erf import ERF_FRACTIONS, erf_metric_name
from lk_segment.comparison.plots import plot_curves, plot_erf, plot_scatter
from lk_segment.comparison.records import RunRecord, load_comparison
from lk_segment.markdown import mean_sd, number, table

HEADLINES = {"dice_full": names.HEADLINE, "best_dice": "best val/dice"}  # stats key -> its name in the report
PLOTS = {
    "dice_vs_epoch_time": "The headline Dice against epoch time; the Pareto front (nothing both faster and better) "
    "joined",
    "dice_vs_params": "The headline Dice against parameter count",
    "training_curves": "Training curves of every run (one colour per variant, one line per seed)",
    "erf": "Effective receptive fields (|gradient| of the centre output pixel w.r.t. the input, mean over seeds; "
    "log scale, cropped around the centre)",
}


@dataclass
class VariantRow:
    variant: str
    seeds: int
    stats: dict[str, tuple[float, float]]  # name -> (mean, std over seeds)
    params: int | None
    gflops: float | None
    rf_px: float | None


def _erf_stat(fraction: float) -> str:
    """0.5 -> 'erf_50_px': the summary's name for the ERF side at that fraction."""
    return f"erf_{round(fraction * 100)}_px"


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def summarise(records: list[RunRecord], order: list[str] | None = None) -> list[VariantRow]:
    """One row per variant: mean and standard deviation (ddof=1; 0 with one seed) over seeds."""
    variants = list(order or [])
    variants += sorted({r.variant for r in records} - set(variants))
    rows = []
    for variant in variants:
        runs = [r for r in records if r.variant == variant]
        if not runs:
            continue
        values = {
            "best_dice": [r.best_dice for r in runs],
            "epoch_time_s": [r.epoch_time_s for r in runs],
            "images_per_s": [r.images_per_s for r in runs],
            "peak_mem_mb": [r.peak_mem_mb for r in runs],
        }
        if any(names.HEADLINE in r.metrics for r in runs):
            values["dice_full"] = [r.metrics[names.HEADLINE] for r in runs if names.HEADLINE in r.metrics]
        for fraction in ERF_FRACTIONS:
            key = erf_metric_name(fraction)
            if any(key in r.metrics for r in runs):  # over the seeds measured (a collapsed model has no ERF)
                values[_erf_stat(fraction)] = [r.metrics[key] for r in runs if key in r.metrics]
        stats = {
            name: (float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0) for name, v in values.items()
        }
        params = runs[0].params
        n_params = _number(params.get(names.MODEL_PARAMS))
        rows.append(
            VariantRow(
                variant,
                len(runs),
                stats,
                int(n_params) if n_params is not None else None,
                _number(params.get(names.MODEL_GFLOPS)),
                _number(params.get(names.RECEPTIVE_FIELD)),
            )
        )
    return rows


def exceeds_spread(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Means further apart than the sum of the two seed-to-seed standard deviations."""
    return abs(a[0] - b[0]) > a[1] + b[1]


def headline(rows: list[VariantRow]) -> str:
    """The stats key the report ranks by, by the headline rule (``names.HEADLINE``): ``dice_full`` where every
    variant has it, else ``best_dice`` (runs from before full-resolution scoring)."""
    return "dice_full" if rows and all("dice_full" in r.stats for r in rows) else "best_dice"


def pareto_front(rows: list[VariantRow]) -> list[str]:
    """Variants that no other variant beats on both the headline Dice (higher) and epoch time (lower)."""
    key = headline(rows)

    def dominated(r: VariantRow) -> bool:
        d, t = r.stats[key][0], r.stats["epoch_time_s"][0]
        return any(
            o.stats[key][0] >= d
            and o.stats["epoch_time_s"][0] <= t
            and (o.stats[key][0] > d or o.stats["epoch_time_s"][0] < t)
            for o in rows
            if o is not r
        )

    return [r.variant for r in rows if not dominated(r)]


def conclusions(rows: list[VariantRow]) -> str:
    """A paragraph generated from the numbers: what exceeds the seed-to-seed spread, what does not."""
    if not rows:
        return "No finished runs."
    seeds = min(r.seeds for r in rows)
    rule = (
        "A difference counts as real here only when two means differ by more than the sum of their "
        f"standard deviations over seeds ({'' if all(r.seeds == seeds for r in rows) else 'at least '}{seeds} seeds "
        "per variant)."
    )
    if seeds < 2:
        rule = "With one seed per variant the seed-to-seed spread is unknown, so no difference below is established."
    key = headline(rows)
    best = max(rows, key=lambda r: r.stats[key][0])
    ref = rows[0]
    parts = [rule, f"Highest {HEADLINES[key]}: {best.variant} ({mean_sd(best.stats[key], '.4f')})."]
    below = [r for r in rows if r is not best and exceeds_spread(r.stats[key], best.stats[key])]
    within = [r for r in rows if r is not best and r not in below]
    if below:
        parts.append(
            "Below it by more than the spread: "
            + ", ".join(f"{r.variant} ({r.stats[key][0] - best.stats[key][0]:+.4f})" for r in below)
            + "."
        )
    if within:
        parts.append(
            "Within the spread of it (not distinguishable at this budget): "
            + ", ".join(f"{r.variant} ({r.stats[key][0] - best.stats[key][0]:+.4f})" for r in within)
            + "."
        )
    faster, slower, same = [], [], []
    for r in rows[1:]:
        ratio = r.stats["epoch_time_s"][0] / ref.stats["epoch_time_s"][0]
        text = f"{r.variant} x{ratio:.2f}"
        if not exceeds_spread(r.stats["epoch_time_s"], ref.stats["epoch_time_s"]):
            same.append(text)
        else:
            (faster if ratio < 1 else slower).append(text)
    groups = (
        ("slower by more than the spread", slower),
        ("faster by more than the spread", faster),
        ("within the spread", same),
    )
    described = [f"{label}: {', '.join(items)}" for label, items in groups if items]
    if described:
        parts.append(f"Epoch time against {ref.variant}'s, {'; '.join(described)}.")
    if key == "dice_full":
        parts.append(rankings(rows))
    parts.append(f"Pareto front of {HEADLINES[key]} against epoch time: {', '.join(pareto_front(rows))}.")
    if not any("erf_50_px" in r.stats for r in rows):
        parts.append("The effective receptive field was not measured for these runs.")
    return " ".join(parts)


def rankings(rows: list[VariantRow]) -> str:
    """The order of the variants by full-resolution Dice against their order by low-resolution Dice."""
    full = [r.variant for r in sorted(rows, key=lambda r: -r.stats["dice_full"][0])]
    low = [r.variant for r in sorted(rows, key=lambda r: -r.stats["best_dice"][0])]
    text = (f"Ranked by the means of {names.HEADLINE}: {' > '.join(full)}; by those of the low-resolution best "
            f"val/dice: {' > '.join(low)}")
    if full == low:
        return text + ": the same order."
    moved = [f"{v} {low.index(v) + 1} -> {full.index(v) + 1}" for v in full if low.index(v) != full.index(v)]
    return text + f"; places that change (low resolution -> full resolution): {', '.join(moved)}."


def table_rows(rows: list[VariantRow]) -> tuple[list[str], list[list[str]]]:
    """The Markdown table: header and cells."""
    mem_kind = "peak memory (MB)"
    header = [
        "variant",
        "seeds",
        f"{names.HEADLINE} (headline)",
        "best val/dice (training size)",
        "epoch time (s)",
        "images/s",
        mem_kind,
        "params",
        "GFLOPs",
        "RF (px)",
        "ERF 50% side (px)",
        "ERF 99% side (px)",
    ]
    cells = [
        [
            r.variant,
            str(r.seeds),
            mean_sd(r.stats.get("dice_full"), ".4f"),
            mean_sd(r.stats["best_dice"], ".4f"),
            mean_sd(r.stats["epoch_time_s"], ".2f"),
            mean_sd(r.stats["images_per_s"], ".1f"),
            mean_sd(r.stats["peak_mem_mb"], ".0f"),
            number(r.params),
            number(r.gflops, ",.3f"),
            number(r.rf_px),
            mean_sd(r.stats.get("erf_50_px"), ".1f"),
            mean_sd(r.stats.get("erf_99_px"), ".1f"),
        ]
        for r in rows
    ]
    return header, cells


def write_csv(rows: list[VariantRow], path: Path) -> None:
    stat_keys = ["dice_full", "best_dice", "epoch_time_s", "images_per_s", "peak_mem_mb",
                 *map(_erf_stat, ERF_FRACTIONS)]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            [
                "variant",
                "seeds",
                *[f"{n}_{s}" for n in stat_keys for s in ("mean", "std")],
                "params",
                "gflops",
                "receptive_field_px",
            ]
        )
        for r in rows:
            stats = [v for n in stat_keys for v in r.stats.get(n, (math.nan, math.nan))]
            writer.writerow([r.variant, r.seeds, *stats, r.params, r.gflops, r.rf_px])


def regenerate_command(parent, experiment: str) -> str:
    """The ``make compare`` that produced the comparison; the real-data folder written as
    ``$LK_CARVANA_ROOT`` where it is that variable's value, so a committed report names no machine's path."""
    params = parent.data.params
    overrides = params.get("compare.overrides", "")
    overrides = "" if overrides == "(none)" else overrides
    if os.environ.get("LK_CARVANA_ROOT"):
        overrides = overrides.replace(f"data.root={os.environ['LK_CARVANA_ROOT']}", "data.root=$LK_CARVANA_ROOT")
    seeds = params.get("compare.seeds", "0").split()
    seeds_arg = str(len(seeds)) if seeds == [str(i) for i in range(len(seeds))] else '"' + " ".join(seeds) + '"'
    return f'make compare EXPERIMENT={experiment} VARIANTS="{params.get("compare.variants", "")}" SEEDS={seeds_arg}' + (
        f' ARGS="{overrides}"' if overrides else ""
    )


def write_report(
    experiment: str,
    out_dir: str | Path,
    parent_run_id: str | None = None,
    markdown_path: str | Path | None = None,
    log_to_parent: bool = True,
) -> dict:
    """Write results.csv, the plots and the Markdown report; log them to the parent run's ``report/``."""
    import matplotlib

    matplotlib.use("Agg")
    parent, records = load_comparison(experiment, parent_run_id)
    order = parent.data.params.get("compare.variants", "").split() or sorted({r.variant for r in records})
    order = [v for v in order if any(r.variant == v for r in records)]
    rows = summarise(records, order)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    markdown = Path(markdown_path) if markdown_path is not None else out_dir / "results.md"
    markdown.parent.mkdir(parents=True, exist_ok=True)

    write_csv(rows, out_dir / "results.csv")
    plots = {}
    key = headline(rows)
    ylabel = f"{HEADLINES[key]} (mean ± std over seeds)"
    plot_scatter(rows, "epoch_time_s", key, out_dir / "dice_vs_epoch_time.png", "epoch time (s, median over epochs)",
                 ylabel, front=pareto_front(rows))
    plots["dice_vs_epoch_time"] = out_dir / "dice_vs_epoch_time.png"
    if all(r.params is not None for r in rows):
        plot_scatter(rows, "params", key, out_dir / "dice_vs_params.png", "parameters", ylabel)
        plots["dice_vs_params"] = out_dir / "dice_vs_params.png"
    plot_curves(records, order, out_dir / "training_curves.png")
    plots["training_curves"] = out_dir / "training_curves.png"
    if plot_erf(records, rows, out_dir / "erf.png"):
        plots["erf"] = out_dir / "erf.png"

    text = _markdown(experiment, parent, records, rows, plots, markdown, out_dir)
    markdown.write_text(text)
    if log_to_parent:
        from lk_segment.tracking import client as mlflow_client

        client = mlflow_client()
        for path in [out_dir / "results.csv", markdown, *plots.values()]:
            client.log_artifact(parent.info.run_id, str(path), "report")
    return {
        "parent_run_id": parent.info.run_id,
        "rows": rows,
        "csv": out_dir / "results.csv",
        "markdown": markdown,
        "plots": plots,
        "conclusions": conclusions(rows),
        "champions": champions(records, rows),
    }


def champions(records: list[RunRecord], rows: list[VariantRow]) -> list[tuple[str, str, int]]:
    """(variant, run id, seed) of each variant's best seed by the headline, the best variant (by the
    headline's mean over seeds) first: what the model registry registers, the first as champion."""
    key = headline(rows)

    def score(record: RunRecord) -> float:
        return record.metrics[names.HEADLINE] if key == "dice_full" else record.best_dice

    best = []
    for row in sorted(rows, key=lambda r: -r.stats[key][0]):
        run = max((r for r in records if r.variant == row.variant), key=score)
        best.append((row.variant, run.run_id, run.seed))
    return best


def _markdown(
    experiment: str,
    parent,
    records: list[RunRecord],
    rows: list[VariantRow],
    plots: dict,
    markdown: Path,
    out_dir: Path,
) -> str:
    header, cells = table_rows(rows)
    first = records[0].params
    size = f"{first.get('data.train_height', '?')}×{first.get('data.train_width', '?')}"
    mem = sorted({r.mem_kind for r in records})
    lines = [
        f"# Kernel variants side by side: experiment `{experiment}`",
        "",
        f"Generated from MLflow alone (comparison run `{parent.info.run_id}`, {len(records)} finished trainings). "
        "The sweep that produced it (it skips the trainings already finished), then this report again:",
        "",
        "```bash",
        regenerate_command(parent, experiment),
        f'make report EXPERIMENT={experiment} ARGS="--out {out_dir} --markdown {markdown}"',
        "```",
        "",
        f"Every run: training size {size} (height × width), epochs {first.get('trainer.max_epochs', '?')}, batch "
        f"{first.get('data.batch_size', '?')}, model width {first.get('model.width', '?')}, depth "
        f"{first.get('model.depth', '?')}, split seed {first.get('data.split_seed', '?')}, precision "
        f"{first.get('trainer.precision', '?')}.",
        "",
        "## Results",
        "",
        *table(header, cells),
        "",
        "Mean ± standard deviation over seeds; the Pareto plot and the conclusions use the headline. "
        f"{names.HEADLINE}: "
        "the best checkpoint's (by val/dice) mean over the validation photos of each one's Dice at its original "
        "resolution, its mask made as `make predict` makes it (Kaggle's metric); best val/dice: the best epoch's "
        "Dice of all validation pixels pooled, at the training size; "
        "epoch time and images/s: median over epochs of the training batches' wall time (validation excluded); "
        f"peak memory: {' / '.join(mem)} peak; params, GFLOPs (one forward pass at the training size), RF "
        "(theoretical receptive field) as logged by the training; ERF: side of the centred square holding 50% / "
        "99% of the effective receptive field measured on validation images. n/a: not logged by these runs.",
        "",
        "## Conclusions",
        "",
        conclusions(rows),
        "",
        "## Plots",
        "",
    ]
    for name, path in plots.items():
        rel = os.path.relpath(path, markdown.parent)
        lines += [f"{PLOTS[name]}:", "", f"![{name}]({rel})", ""]
    if "erf" not in plots:
        lines += ["No ERF heat-maps: the runs carry no `erf/erf.npy` artifact.", ""]
    return "\n".join(lines)
