"""The study's report, from its MLflow records alone: the answer, with intervals, and its cost.

- **Accuracy**: per variant, the mean per-photo full-resolution Dice over every photo of the sample
  (each scored by the fold model that did not train on its car) and its difference to the reference
  with a car-bootstrap interval (``statistics.car_bootstrap``); the verdict follows from the interval.
- **Trained enough**: whether each variant's median ``val/dice`` curve over folds had flattened.
- **Cost**: params, GFLOPs per image, peak memory, epoch time and total training time of the runs
  that had the machine to themselves, per machine (device and precision), and the clean step time
  of each variant measured in turns (``study.bench_steps``). A run that shared the machine is named
  with the reason and left out of the time columns.
- **Time to accuracy**: ``val/dice`` against cumulative training time (median over folds), Dice at
  equal epochs and at equal time (the training time of the fastest variant).
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lk_segment import names
from lk_segment.comparison import statistics as st
from lk_segment.comparison.plots import plot_differences, plot_time_to_accuracy
from lk_segment.comparison.records import RunRecord, load_comparison, median
from lk_segment.markdown import number, table


@dataclass
class VariantResult:
    variant: str
    runs: list[RunRecord]  # one per fold
    photos: dict[str, tuple[str, float]]  # every validated photo -> (car, full-resolution Dice)
    difference: st.Difference | None  # against the reference (None for the reference itself)
    family: st.Difference | None = None  # the same at the Bonferroni level of all the study's comparisons
    curve_times: list[float] = field(default_factory=list)  # median over clean folds on the study's machine
    curve_dice: list[float] = field(default_factory=list)  # median val/dice over folds, per epoch
    clean: list[RunRecord] = field(default_factory=list)  # runs that had the machine to themselves

    @property
    def mean_dice(self) -> float:
        return float(np.mean([d for _, d in self.photos.values()])) if self.photos else math.nan

    @property
    def gain(self) -> float:
        return st.last_quarter_gain(self.curve_dice)


def shared_machine(record: RunRecord, threshold: float | None = None) -> str | None:
    """Why a run's times are not the model's, or None when it had the machine to itself."""
    threshold = names.SHARED_MACHINE_THRESHOLD if threshold is None else threshold
    others = record.curves.get(names.OTHERS_CPU_SHARE, [])
    if not others:
        return "its machine share was not recorded (a run from before perf/others_cpu_share)"
    worst = int(np.argmax(others))
    if others[worst] <= threshold:
        return None
    load = record.curves.get(names.LOAD_AVG, [])
    load_text = f", 1-minute load average {load[worst]:.1f}" if worst < len(load) else ""
    busy = sum(o > threshold for o in others)
    return (f"other processes used {others[worst]:.0%} of the machine's cores in epoch {worst + 1}{load_text} "
            f"({busy} of {len(others)} epochs above {threshold:.0%})")


def main_machine(records: list[RunRecord]) -> str | None:
    """The machine most of the clean runs trained on: the one the time curves are drawn for."""
    clean = [r.machine for r in records if shared_machine(r) is None]
    return max(sorted(set(clean)), key=clean.count) if clean else None


def results(study, records: list[RunRecord]) -> dict[str, VariantResult]:
    machine = main_machine(records)
    by_variant = {v: sorted((r for r in records if r.variant == v), key=lambda r: r.fold or 0) for v in study.variants}
    photos = {v: {p: s for r in runs for p, s in r.photo_scores.items()} for v, runs in by_variant.items()}
    out = {}
    compared = [v for v, runs in by_variant.items() if runs and v != study.reference and photos[v]]
    family_level = st.family_confidence(study.confidence, len(compared))
    for variant, runs in by_variant.items():
        if not runs:
            continue
        difference = family = None
        if variant in compared and photos.get(study.reference):
            difference, family = (st.difference(study.reference, photos[study.reference], variant, photos[variant],
                                                resamples=study.resamples, confidence=level)
                                  for level in (study.confidence, family_level))
        clean = [r for r in runs if shared_machine(r) is None]
        timed = [r for r in clean if r.machine == machine]
        length = min(len(r.curves[names.VAL_DICE]) for r in runs)
        out[variant] = VariantResult(
            variant, runs, photos[variant], difference, family,
            curve_times=st.median_curve([r.curves[names.TRAIN_TIME_CUM][:length] for r in timed]) if timed else [],
            curve_dice=st.median_curve([r.curves[names.VAL_DICE][:length] for r in runs]), clean=clean)
    return out


def machines(found: dict[str, VariantResult]) -> dict[str, list[str]]:
    """Machine -> the variants with clean runs measured there."""
    groups: dict[str, list[str]] = {}
    for result in found.values():
        for machine in sorted({r.machine for r in result.clean}):
            groups.setdefault(machine, []).append(result.variant)
    return groups


def equal_time(found: dict[str, VariantResult]) -> tuple[float, dict[str, float]]:
    """The fastest variant's median total training time on the study's machine, and every variant's best
    val/dice by then (the variants with clean runs there)."""
    curves = {v: r for v, r in found.items() if r.curve_times}
    if not curves:
        return math.nan, {}
    budget = min(r.curve_times[-1] for r in curves.values())
    return budget, {v: st.value_at(r.curve_times, r.curve_dice, budget) for v, r in curves.items()}


def answer(study, found: dict[str, VariantResult], steps: dict[str, float]) -> str:
    """The paragraph on top: what the intervals allow one to say, and the cost beside it."""
    ref = found.get(study.reference)
    if ref is None:
        return f"No finished run of the reference {study.reference} yet: nothing can be compared."
    cars = len({c for c, _ in ref.photos.values()})
    scored = (f"mean per-photo full-resolution Dice {ref.mean_dice:.4f} over {len(ref.photos)} photos of {cars} "
              "cars, each scored by the fold model that never saw its car")
    alone = study.variants == [study.reference]  # a pilot: how far the reference trains, nothing compared
    parts = ([f"{study.reference} alone ({scored}): one variant, nothing compared."] if alone else
             [f"Against {study.reference} ({scored}), with {study.confidence:.0%} intervals from a bootstrap "
              "over cars:"])
    groups: dict[str, list[str]] = {"better": [], "worse": [], "no detectable difference": []}
    for result in found.values():
        d = result.difference
        if d is not None:
            groups[d.verdict].append(f"{result.variant} ({d.diff:+.4f}, [{d.low:+.4f}, {d.high:+.4f}])")
    for label, items in groups.items():
        if items:
            parts.append(f"{label}: {'; '.join(items)}.")
    family = [r.family for r in found.values() if r.family is not None]
    if family:
        held = [f"{d.variant} {d.verdict}" for d in family if d.verdict != "no detectable difference"]
        parts.append(f"Read together, as {len(family)} comparisons at once (Bonferroni: each interval at "
                     f"{family[0].confidence:.2%}), the verdicts that still hold: "
                     f"{', '.join(held) if held else 'none'}.")
    not_worse = [v for v, r in found.items() if v == study.reference or (r.difference and r.difference.verdict !=
                                                                         "worse")]
    if not alone and not_worse == [study.reference]:
        parts.append(f"No other variant is as accurate as {study.reference}: whatever each saves costs Dice.")
    elif steps and all(v in steps for v in not_worse):
        cheapest = min(not_worse, key=lambda v: steps[v])
        ratio = steps[cheapest] / steps[study.reference] if study.reference in steps else math.nan
        parts.append(f"Of the variants not worse than {study.reference}, the cheapest clean training step on this "
                     f"machine is {cheapest}'s ({steps[cheapest]:.0f} ms, x{ratio:.2f} of {study.reference}'s).")
    budget, at_budget = equal_time(found)
    if study.reference in at_budget and len(at_budget) > 1:
        best = max(at_budget, key=lambda v: at_budget[v])
        if best != study.reference:
            parts.append(f"Given only the fastest variant's training time ({budget / 60:.1f} min), {best} reaches the "
                         f"highest val/dice ({at_budget[best]:.4f} against {study.reference}'s "
                         f"{at_budget[study.reference]:.4f}; median over folds, at the training size, no interval).")
    short = [v for v, r in found.items() if math.isnan(r.gain)]
    climbing = [v for v, r in found.items() if not math.isnan(r.gain) and not st.flattened(r.curve_dice)]
    if climbing:
        parts.append(f"Still climbing at the end of training (last-quarter gain >= {st.FLAT_GAIN}): "
                     f"{', '.join(climbing)}; their verdicts may change with longer training.")
    if short:
        parts.append(f"Too few epochs to tell whether training had flattened: {', '.join(short)}.")
    if not climbing and not short:
        parts.append(f"Every variant's median val/dice curve had flattened (last-quarter gain < {st.FLAT_GAIN}).")
    missing = [f"{v} ({len(r.runs)} of {study.folds} folds)" for v, r in found.items() if len(r.runs) < study.folds]
    missing += [f"{v} (no fold)" for v in study.variants if v not in found]
    if missing:
        parts.append(f"Incomplete: {', '.join(missing)}; their photos are fewer, and `make study` again trains "
                     "what is missing.")
    if not alone:
        parts.append("The intervals cover the sampling of cars, not a change of training seed beyond the one "
                     "each fold used.")
    return " ".join(parts)


def write_study_report(study, parent_id: str, out_dir: str | Path, markdown: str | Path | None = None) -> dict:
    """The study's report from its MLflow records, written to ``out_dir`` and logged to its parent run."""
    from lk_segment.tracking import client

    parent, records = load_comparison(study.name, parent_id, role="study", photos=True)
    report = render_study_report(study, parent, records, out_dir, markdown)
    mlflow = client()
    for path in [report["markdown"], *report["files"]]:
        mlflow.log_artifact(parent.info.run_id, str(path), "report")
    return report


def render_study_report(study, parent, records: list[RunRecord], out_dir: str | Path,
                        markdown: str | Path | None = None) -> dict:
    """The Markdown, CSVs and plots of a study from its records and its parent run (its params and the bench's
    step times in its metrics): files only, nothing read from or logged to MLflow."""
    import matplotlib

    matplotlib.use("Agg")
    steps = {v: parent.data.metrics[f"bench/step_ms/{v}"] for v in study.variants
             if f"bench/step_ms/{v}" in parent.data.metrics}
    found = results(study, records)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    markdown = Path(markdown) if markdown is not None else out_dir / "results.md"
    markdown.parent.mkdir(parents=True, exist_ok=True)
    groups = machines(found)
    machine = main_machine(records)
    diffs = [r.difference for r in found.values() if r.difference is not None]
    plots = {"time_to_accuracy": plot_time_to_accuracy(found, machine, equal_time(found)[0],
                                                       out_dir / "time_to_accuracy.png"),
             "differences": plot_differences(diffs, study.reference, study.confidence, out_dir / "differences.png")}
    write_csvs(study, found, steps, out_dir)
    text = study_markdown(study, parent, found, steps, groups, machine, plots, markdown,
                          report_places(study, out_dir, markdown))
    markdown.write_text(text)
    return {"parent_run_id": parent.info.run_id, "markdown": markdown, "plots": plots, "results": found,
            "answer": answer(study, found, steps), "csv": out_dir / "variants.csv",
            "files": [out_dir / "variants.csv", out_dir / "runs.csv", *plots.values()]}


def write_csvs(study, found: dict[str, VariantResult], steps: dict[str, float], out_dir: Path) -> None:
    with open(out_dir / "variants.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["variant", "folds", "photos", "cars", "mean_dice_full", "diff_vs_reference", "ci_low",
                         "ci_high", "verdict", "family_ci_low", "family_ci_high", "family_verdict", "last_quarter_gain",
                         "params", "gflops", "clean_runs", "epoch_time_s", "train_time_s", "step_ms_in_turns"])
        for v, r in found.items():
            d = r.difference
            writer.writerow([v, len(r.runs), len(r.photos), len({c for c, _ in r.photos.values()}), r.mean_dice,
                             d.diff if d else "", d.low if d else "", d.high if d else "", d.verdict if d else
                             "reference", *((r.family.low, r.family.high, r.family.verdict) if r.family else ("",) * 3),
                             r.gain, r.runs[0].params.get(names.MODEL_PARAMS),
                             r.runs[0].params.get(names.MODEL_GFLOPS), len(r.clean),
                             median([c.epoch_time_s for c in r.clean]),
                             median([c.curves[names.TRAIN_TIME_CUM][-1] for c in r.clean
                                     if c.curves[names.TRAIN_TIME_CUM]]), steps.get(v, "")])
    with open(out_dir / "runs.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["variant", "fold", "run_id", "machine", names.HEADLINE, "best_val_dice", "epochs",
                         "train_time_s", "shared_machine"])
        for r in found.values():
            for run in r.runs:
                cum = run.curves[names.TRAIN_TIME_CUM]
                writer.writerow([run.variant, run.fold, run.run_id, run.machine, run.headline, run.best_dice,
                                 len(run.curves[names.VAL_DICE]), cum[-1] if cum else "", shared_machine(run) or ""])


def regenerate_command(study, parent, places: list[str] = ()) -> str:
    """The ``make study`` that trained the parent run: the study as it was named, where its report went
    (``places``: STUDY_OUT=, STUDY_MD= where not the defaults) and the overrides it was given beyond its
    file's as ARGS."""
    from lk_segment.comparison.study import load_study

    source = study.source or study.name
    given = parent.data.params.get("study.overrides", "(none)")
    given = [] if given == "(none)" else given.split()
    try:
        own = load_study(source).overrides
    except Exception:  # noqa: BLE001 (a study file since removed or renamed: then every override is extra)
        own = []
    extra = given[len(own):] if given[: len(own)] == own else given
    return " ".join([f"make study STUDY={source}", *places, *([f'ARGS="{" ".join(extra)}"'] if extra else [])])


def report_places(study, out_dir: Path, markdown: Path) -> list[str]:
    """The make variables that put a study's report where it went, for the folders that are not the defaults."""
    places = []
    if out_dir != Path(names.REPORTS_DIR) / f"study-{study.name}":
        places.append(f"STUDY_OUT={out_dir}")
    if markdown != out_dir / "results.md":
        places.append(f"STUDY_MD={markdown}")
    return places


def study_markdown(study, parent, found: dict[str, VariantResult], steps: dict[str, float],
                   groups: dict[str, list[str]], machine: str | None, plots: dict[str, Path], markdown: Path,
                   places: list[str] = ()) -> str:
    first = next(iter(found.values())).runs[0].params
    size = f"{first.get('data.train_height', '?')}×{first.get('data.train_width', '?')}"
    all_runs = [run for r in found.values() for run in r.runs]
    wall = sum(run.wall_s for run in all_runs)
    lines = [f"# Which kernel design is worth its cost: study `{study.name}`", ""]
    if study.question:
        lines += [study.question, ""]
    lines += ["## The answer", "", answer(study, found, steps), "",
              "Regenerate (the trainings already finished are skipped; the report is rewritten from MLflow):", "",
              "```bash", regenerate_command(study, parent, places), "```", "",
              f"{len(all_runs)} trainings of {len(found)} variants, {study.folds}-fold cross-validation by car "
              f"(split seed {study.split_seed}; fold i seeds run i), training size {size}, "
              f"{first.get('trainer.max_epochs', '?')} epochs, batch {first.get('data.batch_size', '?')}, precision "
              f"{first.get('trainer.precision', '?')}; study overrides: "
              f"`{parent.data.params.get('study.overrides', '(none)')}`; MLflow parent run `{parent.info.run_id}`. "
              "The trainings "
              f"took {wall / 60:.0f} min of wall time in all (budget {study.budget_minutes:.0f} min).", ""]
    # accuracy
    header = ["variant", "photos (cars)", "mean full-res Dice", f"minus {study.reference} [{study.confidence:.0%} CI]",
              "verdict", "all at once (Bonferroni)", "best val/dice (median over folds)", "last-quarter gain",
              "flattened"]
    rows = []
    for v, r in found.items():
        d = r.difference
        cars = len({c for c, _ in r.photos.values()})
        rows.append([v, f"{len(r.photos)} ({cars})", number(r.mean_dice, ",.4f"),
                     f"{d.diff:+.4f} [{d.low:+.4f}, {d.high:+.4f}]" if d else "reference",
                     d.verdict if d else "", r.family.verdict if r.family else "",
                     number(max(r.curve_dice, default=math.nan), ",.4f"),
                     number(r.gain, "+.4f"),
                     "yes" if st.flattened(r.curve_dice) else "no"])
    lines += ["## Accuracy", "", *table(header, rows), "",
              "Mean full-res Dice: the mean over every validated photo of its Dice at 1918×1280 (Kaggle's metric), "
              "each photo scored by the best checkpoint (by val/dice) of the fold model that did not train on its "
              f"car. The interval resamples cars ({study.resamples} resamples): a car's 16 views are not "
              "independent. Verdict: better or worse when the interval excludes 0, otherwise no detectable "
              "difference; each comparison on its own. All at once: the verdict of the same bootstrap at the "
              "Bonferroni level, which holds for every comparison of the table together. "
              f"Flattened: the median val/dice curve gained less than {st.FLAT_GAIN} over its last "
              "quarter of epochs.", ""]
    # cost
    lines += ["## Cost", ""]
    flagged = [(run, shared_machine(run)) for r in found.values() for run in r.runs if shared_machine(run)]
    if len(groups) > 1:
        lines += [f"Clean runs come from {len(groups)} machines: one table each, times are never mixed.", ""]
    if not groups:
        lines += ["No run had the machine to itself: the epoch and training times are left out (the runs and "
                  "why are listed below).", ""]
    for machine in groups:
        header = ["variant", "params", "GFLOPs / image", "peak memory (MB)", "epoch time (s)",
                  "training time (min)", "clean runs"]
        rows = []
        for v, r in found.items():
            clean = [c for c in r.clean if c.machine == machine]
            rows.append([v, number(float(r.runs[0].params.get(names.MODEL_PARAMS, "nan")), ",.0f"),
                         number(float(r.runs[0].params.get(names.MODEL_GFLOPS, "nan")), ",.3f"),
                         number(median([c.peak_mem_mb for c in clean]), ",.0f"),
                         number(median([c.epoch_time_s for c in clean]), ",.1f"),
                         number(median([c.curves[names.TRAIN_TIME_CUM][-1] / 60 for c in clean
                                        if c.curves[names.TRAIN_TIME_CUM]]), ",.1f"),
                         f"{len(clean)} of {len(r.runs)}"])
        lines += [f"Machine: {machine}.", "", *table(header, rows), ""]
    if steps:
        bench_machine = parent.data.params.get("bench.machine", "?")
        ref = steps.get(study.reference)
        rows = [[v, number(ms, ",.0f"), number(ms / ref if ref else math.nan, ",.2f")] for v, ms in steps.items()]
        lines += [f"Clean training step (forward, loss, backward, AdamW on one batch already in memory), median of "
                  f"{study.bench_turns} steps with the variants taking turns, on {bench_machine}:", "",
                  *table(["variant", "step (ms)", f"x {study.reference}"], rows), ""]
    lines += ["Epoch and training time: median over the variant's clean runs (training batches only; the first "
              "epoch's start-up included in the total). Peak memory: the process's peak resident memory on a CPU, "
              "allocated memory on a GPU.", ""]
    medians = [median([c.peak_mem_mb for c in r.clean]) for r in found.values() if r.clean]
    peaks = {round(m) for m in medians if not math.isnan(m)}
    if len(medians) > 1 and len(peaks) == 1:
        lines += [f"The peak memory is the same for every variant ({peaks.pop():,} MB): it is the whole process's "
                  "peak, set by what every run does besides its model, not by the model. "
                  "The model's own figure is the bench's per-step peak (`make bench`).", ""]
    if flagged:
        lines += [f"Runs left out of the time columns ({len(flagged)}): they shared the machine.", ""]
        lines += [f"- {run.variant} fold {run.fold} (`{run.run_id}`): {why}" for run, why in flagged]
        lines += [""]
    else:
        lines += ["Every run had the machine to itself (other processes below "
                  f"{names.SHARED_MACHINE_THRESHOLD:.0%} of the cores in every epoch).", ""]
    # time to accuracy
    if not machine:
        lines += ["## Time to accuracy", "", "Not measured: no run had the machine to itself (see Cost). Run the "
                  "study again alone on the machine.", ""]
    else:
        budget, at_budget = equal_time(found)
        rows = [[v, number(max(r.curve_dice, default=math.nan), ",.4f"), number(at_budget.get(v), ",.4f"),
                 number(r.curve_times[-1] / 60 if r.curve_times else math.nan, ",.1f")] for v, r in found.items()]
        lines += ["## Time to accuracy", "",
                  f"Equal epochs asks which design learns most per step; equal time asks which gives most per second "
                  f"of this machine ({machine}). Equal time: {budget / 60:.1f} min of training, the fastest variant's "
                  "whole training; a variant's Dice then is the best val/dice among its epochs finished by that "
                  "time (median curves over folds).", "",
                  *table(["variant", "val/dice at equal epochs", "val/dice at equal time",
                                   "training time (min)"], rows), ""]
    lines += ["## Plots", ""]
    captions = {"time_to_accuracy": "val/dice against cumulative training time, median over folds",
                "differences": f"Each variant minus {study.reference}, with its interval"}
    for name, path in plots.items():
        lines += [f"{captions[name]}:", "", f"![{name}]({os.path.relpath(path, markdown.parent)})", ""]
    lines += [f"Per-variant figures: `{os.path.relpath(plots['differences'].parent / 'variants.csv', markdown.parent)}`"
              f"; per run: `{os.path.relpath(plots['differences'].parent / 'runs.csv', markdown.parent)}`.", ""]
    return "\n".join(lines)
