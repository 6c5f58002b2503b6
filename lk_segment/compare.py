"""The side-by-side sweep: every variant x seed, one MLflow parent run, then the report.

    lk-segment compare --variants 3x3 5x5 1x5 --seeds 3 --experiment compare data.root=../shared/carvana-sample

Every training gets the same overrides (data, split, schedule, budget) and differs only in
its variant file and its seed. The trainings are nested runs of one parent run (tag
``mlflow.parentRunId``), tagged ``variant`` and ``seed``, so the MLflow UI lines them up.
Running the same command again reuses that parent and skips the (variant, seed) pairs that
already FINISHED: an interrupted sweep resumes where it stopped.

Each training runs in a fresh process: the runs then share no allocator state, warm caches
or peak-memory counter (``perf/cpu_peak_rss_mb`` is the process's peak), and one crashed run
does not end the sweep. With several GPUs, one training runs per GPU at a time (see README).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import lightning as L

from lk_segment.config import load_config
from lk_segment.errors import UserError
from lk_segment.tracking import PARENT_TAG, ROLE_TAG, SWEEP_TAG, finished_child_runs

ERF_IMAGES = 8  # validation images (spread over the cars) the effective receptive field is averaged over


@dataclass(frozen=True)
class Pair:
    variant: str
    seed: int


def sweep_key(variants: list[str], seeds: list[int], overrides: list[str]) -> str:
    """Same variants, seeds and overrides -> same key -> the same parent run is resumed."""
    text = json.dumps({"variants": list(variants), "seeds": list(seeds), "overrides": sorted(overrides)})
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def format_seconds(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return (
        f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"
    )


class SweepProgress(L.Callback):
    """One line per epoch: which run of how many, its epoch, Dice, and the time left.

    The estimate is the sweep's wall time per trained epoch so far times the epochs still to
    train; with ``workers`` trainings at once it is divided among them.
    """

    def __init__(
        self, label: str, run_name: str, sweep_start: float, epochs_done: int, epochs_total: int, workers: int = 1
    ):
        self.label, self.run_name, self.sweep_start, self.workers = label, run_name, sweep_start, workers
        self.epochs_done, self.epochs_total = epochs_done, epochs_total

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # "3x3 seed 1" rather than "3x3": the seeds of a variant stay apart in the MLflow UI.
        if trainer.is_global_zero and trainer.logger is not None:
            trainer.logger.experiment.set_tag(trainer.logger.run_id, "mlflow.runName", self.run_name)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        self.epochs_done += 1
        elapsed = time.time() - self.sweep_start
        left = elapsed / self.epochs_done * (self.epochs_total - self.epochs_done) / self.workers
        dice = trainer.callback_metrics.get("val/dice")
        dice_text = f", val/dice {float(dice):.4f}" if dice is not None else ""
        print(
            f"[compare] {self.label}: epoch {trainer.current_epoch + 1}/{trainer.max_epochs}{dice_text}; "
            f"about {format_seconds(left)} left",
            flush=True,
        )


def compare(
    variants: list[str],
    seeds: int | list[int],
    overrides: list[str] | tuple[str, ...] = (),
    experiment: str = "compare",
    report_dir: str | Path | None = None,
    workers: int | None = None,
) -> dict:
    """Train the missing (variant, seed) pairs as children of one parent run; write the report.

    Returns the parent run id, the pairs trained now and skipped, and the report's files.
    """
    from lk_segment.model_registry import register_comparison
    from lk_segment.report import write_report
    from lk_segment.tracking import client as mlflow_client

    seeds = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    if not variants or not seeds:
        raise UserError("compare needs at least one variant (VARIANTS=...) and one seed (SEEDS=...)")
    if len(set(variants)) != len(variants):
        raise UserError(f"a variant is listed twice in {' '.join(variants)}")
    for item in overrides:
        if item.split("=", 1)[0] in ("seed", "experiment"):
            raise UserError(f"override {item!r} is set by the sweep: use --seeds / --experiment instead")
    overrides = list(overrides)
    configs = {
        Pair(v, s): load_config(v, [*overrides, f"experiment={experiment}", f"seed={s}"])
        for s in seeds  # seed-major: a sweep stopped early still has every variant at its first seeds
        for v in variants
    }  # fails early on a bad variant or key
    key = sweep_key(variants, seeds, overrides)

    client = mlflow_client()
    exp_id = _experiment_id(client, experiment)
    parent_id = _parent_run(client, exp_id, key, variants, seeds, overrides)
    finished = {Pair(*pair): run.info.run_id for pair, run in finished_child_runs(client, exp_id, parent_id).items()}
    todo = [pair for pair in configs if pair not in finished]
    print(
        f"[compare] experiment {experiment!r}, parent run {parent_id}: {len(configs)} runs "
        f"({len(variants)} variants x {len(seeds)} seeds), {len(configs) - len(todo)} already finished, "
        f"{len(todo)} to train",
        flush=True,
    )

    failed: list[Pair] = []
    status = "FINISHED"
    try:
        failed = _run_all(
            todo,
            configs,
            overrides,
            experiment,
            parent_id,
            key,
            len(configs) - len(todo),
            len(configs),
            _workers(configs, workers),
        )
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    except BaseException:
        status = "FAILED"
        raise
    finally:
        client.set_terminated(parent_id, "FAILED" if failed and status == "FINISHED" else status)

    out_dir = Path(report_dir) if report_dir is not None else Path("reports") / experiment
    report, registered = None, {}
    if len(finished) + len(todo) > len(failed):
        report = write_report(experiment, out_dir, parent_run_id=parent_id)
        print(f"[compare] report written to {report['markdown']} and logged to parent run {parent_id}", flush=True)
        registered = register_comparison(experiment, parent_id)
        if registered:
            champion = next(iter(registered))
            print(f"[compare] registered model {experiment!r}: {len(registered)} variant(s), champion {champion} "
                  f"(make predict MODEL=models:/{experiment}@champion)", flush=True)
    if failed:
        names = ", ".join(f"{p.variant} seed {p.seed}" for p in failed)
        raise UserError(
            f"{len(failed)} training(s) failed ({names}); see their output above, then run the same "
            "command again to retry only those"
        )
    return {
        "parent_run_id": parent_id,
        "trained": [p for p in todo if p not in failed],
        "skipped": sorted(finished, key=lambda p: (variants.index(p.variant), p.seed)),
        "report": report,
        "registered": registered,  # variant -> version of the registered model <experiment>
    }


def _experiment_id(client, name: str) -> str:
    from lk_segment.tracking import artifact_location

    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    return client.create_experiment(name, artifact_location=artifact_location())


def _parent_run(client, exp_id: str, key: str, variants, seeds, overrides) -> str:
    """The latest parent run of this exact sweep, reopened; else a new one."""
    runs = client.search_runs(
        [exp_id],
        f"tags.`{ROLE_TAG}` = 'comparison' and tags.`{SWEEP_TAG}` = '{key}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if runs:
        parent_id = runs[0].info.run_id
        client.update_run(parent_id, status="RUNNING")
        # Children left RUNNING by a killed sweep will never finish: say so in the store.
        for run in client.search_runs(
            [exp_id], f"tags.`{PARENT_TAG}` = '{parent_id}' and attributes.status = 'RUNNING'", max_results=10000
        ):
            client.set_terminated(run.info.run_id, "KILLED")
        return parent_id
    run = client.create_run(
        exp_id, run_name=f"compare {' '.join(variants)} x{len(seeds)}", tags={ROLE_TAG: "comparison", SWEEP_TAG: key}
    )
    parent_id = run.info.run_id
    client.log_param(parent_id, "compare.variants", " ".join(variants))
    client.log_param(parent_id, "compare.seeds", " ".join(map(str, seeds)))
    client.log_param(parent_id, "compare.overrides", " ".join(overrides) or "(none)")
    return parent_id


def _workers(configs: dict, workers: int | None) -> int:
    """One training per GPU when there are several and each run asks for one device."""
    if workers is not None:
        return max(1, workers)
    import torch

    cfg = next(iter(configs.values()))
    one_device = str(cfg.trainer.devices) == "1" and cfg.trainer.accelerator in ("auto", "gpu", "cuda")
    return max(1, torch.cuda.device_count()) if one_device else 1


def _run_all(
    todo: list[Pair],
    configs: dict,
    overrides: list[str],
    experiment: str,
    parent_id: str,
    key: str,
    done_before: int,
    total: int,
    workers: int,
) -> list[Pair]:
    """Train ``todo`` in fresh processes, ``workers`` at a time (each pinned to one GPU when > 1)."""
    start = time.time()
    epochs_total = sum(int(configs[p].trainer.max_epochs) for p in todo)
    epochs_started = 0
    free_devices = list(range(workers))
    running: list[tuple] = []  # (process, pair, device, started, label)
    failed: list[Pair] = []
    queue = list(todo)
    finished_now = 0
    try:
        while queue or running:
            while queue and free_devices:
                pair = queue.pop(0)
                device = free_devices.pop(0)
                label = f"run {done_before + todo.index(pair) + 1}/{total} ({pair.variant}, seed {pair.seed})"
                job = {
                    "variant": pair.variant,
                    "overrides": [*overrides, f"experiment={experiment}", f"seed={pair.seed}"],
                    "tags": {PARENT_TAG: parent_id, ROLE_TAG: "training", SWEEP_TAG: key},
                    "progress": {
                        "label": label,
                        "run_name": f"{pair.variant} seed {pair.seed}",
                        "sweep_start": start,
                        "epochs_done": epochs_started,
                        "epochs_total": epochs_total,
                        "workers": workers,
                    },
                }
                env = dict(os.environ)
                if workers > 1:
                    env["CUDA_VISIBLE_DEVICES"] = str(device)
                where = f" (CUDA_VISIBLE_DEVICES={device})" if workers > 1 else ""
                print(f"[compare] {label}: starting{where}", flush=True)
                proc = subprocess.Popen([sys.executable, "-m", "lk_segment.compare", json.dumps(job)], env=env)
                running.append((proc, pair, device, time.time(), label))
                epochs_started += int(configs[pair].trainer.max_epochs)
            time.sleep(0.2)
            for item in [item for item in running if item[0].poll() is not None]:
                running.remove(item)
                proc, pair, device, started, label = item
                free_devices.append(device)
                finished_now += 1
                left = (time.time() - start) / finished_now * (len(todo) - finished_now) / workers
                if proc.returncode != 0:
                    failed.append(pair)
                outcome = "finished" if proc.returncode == 0 else f"FAILED (exit code {proc.returncode})"
                print(
                    f"[compare] {label} {outcome} in {format_seconds(time.time() - started)}; "
                    f"{len(todo) - finished_now} to go, about {format_seconds(left)} left",
                    flush=True,
                )
    finally:
        for proc, *_ in running:  # interrupted: leave no training orphaned
            proc.terminate()
            proc.wait()
    return failed


def _train_child(job: dict) -> None:
    """In a fresh process: train one pair, then measure its effective receptive field."""
    from lk_segment.train import train

    cfg = load_config(job["variant"], job["overrides"])
    result = train(cfg, tags=job["tags"], callbacks=[SweepProgress(**job["progress"])])
    measure_erf(result["best_checkpoint"] or result["last_checkpoint"], result["run_id"])


def measure_erf(checkpoint: str, run_id: str) -> dict[float, int] | None:
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


if __name__ == "__main__":  # one training of a sweep: python -m lk_segment.compare '<job as JSON>'
    _train_child(json.loads(sys.argv[1]))
