"""The sweep: jobs trained in fresh processes as nested runs of one MLflow parent run.

    lk-segment compare --variants 3x3 5x5 1x5 --seeds 3 --experiment compare data.root=../shared/carvana-sample

A ``Job`` is one training: a variant, its seed (and, in a study, its fold) and the overrides every
job of the sweep shares. The trainings are nested runs of one parent run (tag
``mlflow.parentRunId``), tagged ``variant`` and ``seed`` (and ``fold``), so the MLflow UI lines
them up. Running the same sweep again reuses that parent and skips the jobs that already
FINISHED: an interrupted sweep resumes where it stopped.

Each training runs in a fresh process: the runs then share no allocator state, warm caches
or peak-memory counter (``perf/cpu_peak_rss_mb`` is the process's peak), and one crashed run
does not end the sweep. With several GPUs, one training runs per GPU at a time (see docs/study.md).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from lk_segment import names
from lk_segment.config import load_config
from lk_segment.errors import UserError
from lk_segment.markdown import format_seconds
from lk_segment.tracking import PARENT_TAG, ROLE_TAG, SWEEP_TAG, finished_child_runs

ERF_IMAGES = 8  # validation images (spread over the cars) the effective receptive field is averaged over


@dataclass(frozen=True)
class Job:
    """One training of a sweep."""

    variant: str
    seed: int
    overrides: tuple[str, ...] = ()  # shared by every job of the sweep
    fold: int | None = None  # a study's cross-validation fold (its seed too)
    erf: bool = True  # measure the trained model's effective receptive field

    @property
    def key(self) -> tuple[str, int]:
        """How a finished run is recognised: its (variant, seed) tags."""
        return self.variant, self.seed

    @property
    def name(self) -> str:
        """The run's name: "3x3 seed 1" rather than "3x3", so the runs of a variant stay apart."""
        return f"{self.variant} fold {self.fold}" if self.fold is not None else f"{self.variant} seed {self.seed}"

    def all_overrides(self, experiment: str) -> list[str]:
        folds = [f"data.fold={self.fold}"] if self.fold is not None else []
        return [*self.overrides, *folds, f"experiment={experiment}", f"seed={self.seed}"]

    def tags(self) -> dict[str, str]:
        return {"fold": str(self.fold)} if self.fold is not None else {}


@dataclass
class SweepResult:
    parent_run_id: str
    trained: list[Job] = field(default_factory=list)
    skipped: list[Job] = field(default_factory=list)  # already finished before this call
    failed: list[Job] = field(default_factory=list)
    finished: dict[tuple[str, int], str] = field(default_factory=dict)  # job key -> run id, every finished job


def sweep_key(variants: list[str], seeds: list[int], overrides: list[str]) -> str:
    """Same variants, seeds and overrides -> same key -> the same parent run is resumed."""
    text = json.dumps({"variants": list(variants), "seeds": list(seeds), "overrides": sorted(overrides)})
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def run_sweep(jobs: list[Job], experiment: str, key: str, parent_name: str, parent_params: dict[str, str],
              workers: int | None = None, prefix: str = "compare", role: str = "comparison") -> SweepResult:
    """Train the jobs that have not FINISHED under the parent run of ``key`` (created if none)."""
    from lk_segment.tracking import client as mlflow_client
    from lk_segment.tracking import experiment_id

    configs = {job: load_config(job.variant, job.all_overrides(experiment)) for job in jobs}  # bad keys fail now
    client = mlflow_client()
    exp_id = experiment_id(experiment, client)
    parent_id = _parent_run(client, exp_id, key, parent_name, parent_params, role)
    finished = {k: run.info.run_id for k, run in finished_child_runs(client, exp_id, parent_id).items()}
    todo = [job for job in jobs if job.key not in finished]
    print(f"[{prefix}] experiment {experiment!r}, parent run {parent_id}: {len(jobs)} runs, "
          f"{len(jobs) - len(todo)} already finished, {len(todo)} to train", flush=True)
    result = SweepResult(parent_id, skipped=[job for job in jobs if job.key in finished])
    status = "FINISHED"
    try:
        result.failed = _run_all(todo, configs, experiment, parent_id, key, len(jobs) - len(todo), len(jobs),
                                 _workers(configs, workers), prefix, role)
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    except BaseException:
        status = "FAILED"
        raise
    finally:
        client.set_terminated(parent_id, "FAILED" if result.failed and status == "FINISHED" else status)
    result.trained = [job for job in todo if job not in result.failed]
    result.finished = {k: run.info.run_id for k, run in finished_child_runs(client, exp_id, parent_id).items()}
    return result


def compare(variants: list[str], seeds: int | list[int], overrides: list[str] | tuple[str, ...] = (),
            experiment: str = "compare", report_dir: str | Path | None = None, workers: int | None = None) -> dict:
    """Every variant x seed as children of one parent run; then the report and the registered models.

    Returns the parent run id, the jobs trained now and skipped, and the report's files.
    """
    from lk_segment.comparison.report import write_report
    from lk_segment.model_registry import register_comparison

    seeds = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    if not variants or not seeds:
        raise UserError("compare needs at least one variant (VARIANTS=...) and one seed (SEEDS=...)")
    if len(set(variants)) != len(variants):
        raise UserError(f"a variant is listed twice in {' '.join(variants)}")
    for item in overrides:
        if item.split("=", 1)[0] in ("seed", "experiment"):
            raise UserError(f"override {item!r} is set by the sweep: use --seeds / --experiment instead")
    overrides = tuple(overrides)
    # seed-major: a sweep stopped early still has every variant at its first seeds
    jobs = [Job(v, s, overrides) for s in seeds for v in variants]
    result = run_sweep(jobs, experiment, sweep_key(variants, seeds, list(overrides)),
                       f"compare {' '.join(variants)} x{len(seeds)}",
                       {"compare.variants": " ".join(variants), "compare.seeds": " ".join(map(str, seeds)),
                        "compare.overrides": " ".join(overrides) or "(none)"}, workers)
    parent_id = result.parent_run_id
    out_dir = Path(report_dir) if report_dir is not None else Path(names.REPORTS_DIR) / experiment
    report, registered = None, {}
    if result.finished:
        report = write_report(experiment, out_dir, parent_run_id=parent_id)
        print(f"[compare] report written to {report['markdown']} and logged to parent run {parent_id}", flush=True)
        registered = register_comparison(experiment, parent_id, report["champions"])
        if registered:
            champion = next(iter(registered))
            print(f"[compare] registered model {experiment!r}: {len(registered)} variant(s), champion {champion} "
                  f"(make predict MODEL=models:/{experiment}@champion)", flush=True)
    if result.failed:
        failed = ", ".join(job.name for job in result.failed)
        raise UserError(f"{len(result.failed)} training(s) failed ({failed}); see their output above, then run the "
                        "same command again to retry only those")
    return {
        "parent_run_id": parent_id,
        "trained": result.trained,
        "skipped": result.skipped,
        "report": report,
        "registered": registered,  # variant -> version of the registered model <experiment>
    }


def _parent_run(client, exp_id: str, key: str, name: str, params: dict[str, str], role: str) -> str:
    """The latest parent run of this exact sweep, reopened; else a new one."""
    runs = client.search_runs([exp_id], f"tags.`{ROLE_TAG}` = '{role}' and tags.`{SWEEP_TAG}` = '{key}'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    if runs:
        parent_id = runs[0].info.run_id
        client.update_run(parent_id, status="RUNNING")
        # Children left RUNNING by a killed sweep will never finish: say so in the store.
        for run in client.search_runs(
            [exp_id], f"tags.`{PARENT_TAG}` = '{parent_id}' and attributes.status = 'RUNNING'", max_results=10000
        ):
            client.set_terminated(run.info.run_id, "KILLED")
        return parent_id
    parent_id = client.create_run(exp_id, run_name=name, tags={ROLE_TAG: role, SWEEP_TAG: key}).info.run_id
    for param, value in params.items():
        client.log_param(parent_id, param, value)
    return parent_id


def _workers(configs: dict, workers: int | None) -> int:
    """One training per GPU when there are several and each run asks for one device."""
    if workers is not None:
        return max(1, workers)
    import torch

    cfg = next(iter(configs.values()))
    one_device = str(cfg.trainer.devices) == "1" and cfg.trainer.accelerator in ("auto", "gpu", "cuda")
    return max(1, torch.cuda.device_count()) if one_device else 1


def _run_all(todo: list[Job], configs: dict, experiment: str, parent_id: str, key: str, done_before: int,
             total: int, workers: int, prefix: str, role: str) -> list[Job]:
    """Train ``todo`` in fresh processes, ``workers`` at a time (each pinned to one GPU when > 1)."""
    start = time.time()
    epochs_total = sum(int(configs[job].trainer.max_epochs) for job in todo)
    epochs_started = 0
    free_devices = list(range(workers))
    running: list[tuple] = []  # (process, job, device, started, label)
    failed: list[Job] = []
    queue = list(todo)
    finished_now = 0
    try:
        while queue or running:
            while queue and free_devices:
                job = queue.pop(0)
                device = free_devices.pop(0)
                label = f"run {done_before + todo.index(job) + 1}/{total} ({job.name})"
                child = {
                    "variant": job.variant,
                    "overrides": job.all_overrides(experiment),
                    "tags": {PARENT_TAG: parent_id, ROLE_TAG: "training", SWEEP_TAG: key, **job.tags()},
                    "erf": job.erf,
                    "progress": {"label": label, "run_name": job.name, "sweep_start": start,
                                 "epochs_done": epochs_started, "epochs_total": epochs_total, "workers": workers,
                                 "prefix": prefix},
                }
                env = dict(os.environ)
                if workers > 1:
                    env["CUDA_VISIBLE_DEVICES"] = str(device)
                where = f" (CUDA_VISIBLE_DEVICES={device})" if workers > 1 else ""
                print(f"[{prefix}] {label}: starting{where}", flush=True)
                proc = subprocess.Popen([sys.executable, "-m", "lk_segment.comparison.sweep", json.dumps(child)],
                                        env=env)
                running.append((proc, job, device, time.time(), label))
                epochs_started += int(configs[job].trainer.max_epochs)
            time.sleep(0.2)
            for item in [item for item in running if item[0].poll() is not None]:
                running.remove(item)
                proc, job, device, started, label = item
                free_devices.append(device)
                finished_now += 1
                left = (time.time() - start) / finished_now * (len(todo) - finished_now) / workers
                if proc.returncode != 0:
                    failed.append(job)
                outcome = "finished" if proc.returncode == 0 else f"FAILED (exit code {proc.returncode})"
                print(f"[{prefix}] {label} {outcome} in {format_seconds(time.time() - started)}; "
                      f"{len(todo) - finished_now} to go, about {format_seconds(left)} left", flush=True)
    finally:
        for proc, *_ in running:  # interrupted: leave no training orphaned
            proc.terminate()
            proc.wait()
    return failed


def _train_child(child: dict) -> None:
    """In a fresh process: train one job, then measure its effective receptive field."""
    import warnings

    from lk_segment.commands.train import train
    from lk_segment.training.callbacks import SweepProgress

    # A sweep prints one line per epoch; these notices would repeat in each of its dozens of trainings.
    for notice in (".*LeafSpec.*", ".*on_after_batch_transfer.*", ".*Integer columns in Python.*"):
        warnings.filterwarnings("ignore", message=notice)

    cfg = load_config(child["variant"], child["overrides"])
    result = train(cfg, tags=child["tags"], callbacks=[SweepProgress(**child["progress"])])
    if child.get("erf", True):
        erf_after_training(result["best_checkpoint"] or result["last_checkpoint"], result["run_id"])


def erf_after_training(checkpoint: str, run_id: str) -> dict[float, int] | None:
    """Log the trained model's ERF to its run (``lk_segment.analysis.erf.erf_of_checkpoint``).

    A collapsed model, whose centre logit has no gradient, is said and left unmeasured (None)
    rather than ending the sweep.
    """
    import tempfile

    from lk_segment.analysis.erf import erf_of_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        try:
            return erf_of_checkpoint(checkpoint, run_id, ERF_IMAGES, tmp)["sides"]
        except UserError as exc:
            print(f"[compare] effective receptive field not measured for run {run_id}: {exc}", flush=True)
            return None


if __name__ == "__main__":  # one training of a sweep: python -m lk_segment.comparison.sweep '<job as JSON>'
    _train_child(json.loads(sys.argv[1]))
