"""A study: the sweep that answers the question, described by one file, ``configs/study/<name>.yaml``.

    make study STUDY=cpu-sample            # lk-segment study cpu-sample

Every variant it names is trained once per fold of a k-fold cross-validation by car (fold i also
seeds run i), so every car is validated exactly once by every variant and each variant has a
full-resolution Dice for every photo, paired with every other variant's on the same photo. The
trainings are nested runs of one MLflow parent run (role ``study``), resumable like ``make compare``:
the same command after a kill trains only what did not finish. First, where the study asks for it,
each variant's clean training step is timed with the variants taking turns (the bench's
``steps_in_turns_ms``), which also estimates the study's time against its budget; last, the report
(``study_report``) is written and logged to the parent run.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lk_segment import names
from lk_segment.comparison.sweep import Job, run_sweep
from lk_segment.config import CONFIG_DIR, available_variants, load_config
from lk_segment.errors import UserError

STUDY_DIR = CONFIG_DIR / "study"
STEP_METRIC = "bench/step_ms"  # on the parent run: "<STEP_METRIC>/<variant>", median ms of a clean step


@dataclass
class StudyConfig:
    """What a study file may say; each field's default is what an unsaid one means."""

    name: str = ""  # the MLflow experiment and the report's title; "": the file's name
    question: str = ""  # one line: what the study answers (the report's first line)
    variants: list[str] = field(default_factory=list)  # files of configs/variant/; empty: every one
    reference: str = "3x3"  # every variant is compared against this one
    folds: int = 3  # k of the k-fold cross-validation by car
    split_seed: int = 0  # shuffles the cars before they are dealt to the folds
    # the real data: the folder this environment variable names (data.root); "": the overrides say
    data_root_env: str = "LK_CARVANA_ROOT"
    overrides: list[str] = field(default_factory=list)  # key=value for every training (size, epochs, ...)
    budget_minutes: float = 120.0  # what the whole study should take on the machine it was sized for
    bench_steps: bool = True  # time each variant's clean training step, variants in turns, after the trainings
    bench_turns: int = 10  # timed steps per variant (after 3 untimed ones)
    erf: bool = True  # measure each trained model's effective receptive field
    resamples: int = 10_000  # of the car bootstrap
    confidence: float = 0.95
    source: str = ""  # set by load_study: what named the file (cpu-sample, or a path to a .yaml file)


def study_path(name: str) -> Path:
    """``cpu-sample`` -> configs/study/cpu-sample.yaml; a path to a .yaml file is taken as it is."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise UserError(f"no study file {name!r}")
        return path
    path = STUDY_DIR / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in STUDY_DIR.glob("*.yaml"))) or "none"
        raise UserError(f"unknown study {name!r}: choose one of configs/study/ ({known}) or give a .yaml file")
    return path


def load_study(name: str, extra_overrides: list[str] | tuple[str, ...] = ()) -> StudyConfig:
    """The study file over the defaults; ``extra_overrides`` (the command line's) after its own."""
    path = study_path(name)
    try:
        study = OmegaConf.merge(OmegaConf.structured(StudyConfig), OmegaConf.load(path))
    except OmegaConfBaseException as exc:
        raise UserError(f"study file {path}: {str(exc).splitlines()[0]}") from exc
    study = OmegaConf.to_object(study)
    study.name = study.name or path.stem
    study.source = name
    study.variants = list(study.variants) or available_variants()
    study.overrides = [*study.overrides, *extra_overrides]
    unknown = sorted(set(study.variants) - set(available_variants()))
    if unknown:
        raise UserError(f"study {study.name!r} names unknown variants {', '.join(unknown)}: choose from "
                        f"{', '.join(available_variants())}")
    if study.reference not in study.variants:
        raise UserError(f"study {study.name!r}: its reference {study.reference!r} is not among its variants")
    if len(set(study.variants)) != len(study.variants):
        raise UserError(f"study {study.name!r} lists a variant twice")
    if study.folds < 2:
        raise UserError(f"study {study.name!r}: folds={study.folds}, give 2 or more")
    for item in study.overrides:
        if item.split("=", 1)[0] in ("seed", "experiment", "data.folds", "data.fold", "data.split_seed"):
            raise UserError(f"override {item!r} is set by the study itself (folds, split_seed, name)")
    return study


def training_overrides(study: StudyConfig) -> list[str]:
    """What every training of the study gets, the data root first (from its environment variable)."""
    root = []
    if study.data_root_env:
        value = os.environ.get(study.data_root_env)
        if not value:
            raise UserError(f"study {study.name!r} trains on the folder named by ${study.data_root_env}, which is "
                            f"unset: export {study.data_root_env}=<Kaggle-layout folder> (e.g. the real sample)")
        root = [f"data.root={value}"]
    return [*root, *study.overrides, f"data.folds={study.folds}", f"data.split_seed={study.split_seed}"]


def study_key(study: StudyConfig) -> str:
    """Same variants, folds and overrides -> the same parent run is resumed (the data root by its
    variable's name, so the same study on another machine's copy of the data has the same key)."""
    text = json.dumps({"variants": study.variants, "folds": study.folds, "split_seed": study.split_seed,
                       "data": study.data_root_env, "overrides": sorted(study.overrides)})
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def jobs(study: StudyConfig) -> list[Job]:
    """Fold-major (every variant at fold 0 first): a study stopped early is still paired on its first folds."""
    overrides = tuple(training_overrides(study))
    return [Job(v, fold, overrides, fold=fold, erf=study.erf) for fold in range(study.folds) for v in study.variants]


def run_study(name: str, extra_overrides: list[str] | tuple[str, ...] = (), out_dir: str | Path | None = None,
              markdown: str | Path | None = None, report_only: bool = False) -> dict:
    """Train what is missing, time the steps if asked, write the report; return its files and figures."""
    from lk_segment.comparison.study_report import write_study_report

    study = load_study(name, extra_overrides)
    todo = jobs(study)
    for job in todo[: len(study.variants)]:  # a bad key or value fails before anything trains
        load_config(job.variant, job.all_overrides(study.name))
    params = {"study.name": study.name, "study.variants": " ".join(study.variants),
              "study.reference": study.reference, "study.folds": study.folds,
              "study.overrides": " ".join(study.overrides) or "(none)", "study.data_root_env": study.data_root_env,
              "study.budget_minutes": study.budget_minutes}
    if report_only:
        from lk_segment.comparison.records import load_parent
        from lk_segment.tracking import client

        parent_id = load_parent(client(), study.name, role="study")[0].info.run_id
    else:
        # The clean steps first: on a machine not yet warmed by hours of training, and they size the study.
        parent_id = open_parent(study, params)
        if study.bench_steps:
            estimate(study, bench_steps(study, parent_id))
        result = run_sweep(todo, study.name, study_key(study), f"study {study.name}", params, workers=None,
                           prefix="study", role="study")
        parent_id = result.parent_run_id
        if result.failed:
            failed = ", ".join(job.name for job in result.failed)
            raise UserError(f"{len(result.failed)} training(s) failed ({failed}); see their output above, then run "
                            f"`make study STUDY={name}` again to retry only those")
    out_dir = Path(out_dir) if out_dir is not None else Path(names.REPORTS_DIR) / f"study-{study.name}"
    report = write_study_report(study, parent_id, out_dir, markdown)
    print(f"[study] report written to {report['markdown']} and logged to parent run {parent_id}", flush=True)
    return report


def open_parent(study: StudyConfig, params: dict) -> str:
    """The study's parent run (created if this is its first start), before anything is measured."""
    from lk_segment.comparison.sweep import _parent_run
    from lk_segment.tracking import client, experiment_id

    mlflow = client()
    return _parent_run(mlflow, experiment_id(study.name, mlflow), study_key(study), f"study {study.name}", params,
                       "study")


def estimate(study: StudyConfig, steps_ms: dict[str, float]) -> float:
    """The trainings' time from the clean steps: epochs x batches x step, validation at a third of a step per
    image, per fold; printed against the budget. A lower bound: start-up and the full-resolution scoring add."""
    import math

    from lk_segment.data.carvana import find_samples

    cfg = load_config(study.reference, [f"experiment={study.name}", *training_overrides(study)])
    cars = len({s.car for s in find_samples(cfg.data.root)[0]}) if cfg.data.root else cfg.data.synthetic_cars
    train_images = 16 * cars * (study.folds - 1) / study.folds
    batches = math.floor(train_images / cfg.data.batch_size)
    if cfg.trainer.limit_train_batches is not None:
        limit = cfg.trainer.limit_train_batches
        batches = min(batches, int(limit) if limit >= 1 else int(batches * limit))
    seconds = sum(ms / 1000 * (batches + 16 * cars / study.folds / cfg.data.batch_size / 3) * cfg.trainer.max_epochs
                  for ms in steps_ms.values()) * study.folds
    over = seconds > study.budget_minutes * 60
    print(f"[study] {len(steps_ms)} variants x {study.folds} folds x {cfg.trainer.max_epochs} epochs: about "
          f"{seconds / 60:.0f} min of training from the clean steps, budget {study.budget_minutes:.0f} min"
          + (": OVER BUDGET, expect it to run longer than planned" if over else ""), flush=True)
    return seconds


def bench_steps(study: StudyConfig, parent_id: str) -> dict[str, float]:
    """Median ms of each variant's clean training step at the study's size, batch and precision, the
    variants taking turns step by step (so a slow spell of the machine hits them all alike); logged to the
    parent run once per study, the machine's name and precision beside them (``bench.machine``)."""
    import torch

    from lk_segment.bench.pairs import steps_in_turns_ms
    from lk_segment.bench.run import random_batch
    from lk_segment.config import training_size
    from lk_segment.device import device_name, resolve_precision
    from lk_segment.tracking import client

    mlflow = client()
    parent = mlflow.get_run(parent_id)
    cfgs = {v: load_config(v, [f"experiment={study.name}", *training_overrides(study)]) for v in study.variants}
    first = next(iter(cfgs.values()))
    device = torch.device("cuda" if torch.cuda.is_available() and first.trainer.accelerator != "cpu" else "cpu")
    precision = resolve_precision(first.trainer.precision, first.trainer.accelerator)
    machine = f"{device_name(device)}, precision {precision}"  # as RunRecord.machine names it
    measured = parent.data.params.get("bench.machine")
    if measured is not None and all(f"{STEP_METRIC}/{v}" in parent.data.metrics for v in study.variants):
        # once per study: a study resumed elsewhere keeps the first machine's steps (its report says which)
        print(f"[study] clean step times already measured on {measured}", flush=True)
        return {v: parent.data.metrics[f"{STEP_METRIC}/{v}"] for v in study.variants}
    height, width = training_size(first.data.height, first.data.width, 2**first.model.depth)
    images, masks = random_batch(first.data.batch_size, height, width)
    setting = {"precision": precision, "channels_last": bool(first.trainer.channels_last),
               "compile": bool(first.trainer.compile)}
    print(f"[study] timing a clean training step of each of {len(cfgs)} variants in turns on {machine} "
          f"({height}x{width}, batch {first.data.batch_size}, {study.bench_turns} turns)", flush=True)
    times = steps_in_turns_ms(cfgs, setting, images, masks, study.bench_turns, 3, device)
    if "bench.machine" not in parent.data.params:
        mlflow.log_param(parent_id, "bench.machine", machine)
    for variant, ms in times.items():
        mlflow.log_metric(parent_id, f"{STEP_METRIC}/{variant}", ms)
    return times
