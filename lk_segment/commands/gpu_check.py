"""``make gpu-check``: one command that shows the project works on a GPU, and how fast.

    python -m lk_segment.commands.gpu_check --out gpu-check            # GPU mode where torch sees CUDA, else CPU mode
    python -m lk_segment.commands.gpu_check --out gpu-check --mode cpu  # the small CPU mode CI runs

Each step runs as its own process (in its own process group, all of it ended when the step runs
past its time limit), as a user would run it, and the check goes on after a failed step; a step
whose output is missing has failed; the summary says which passed, with each step's time and
limit. In GPU mode (estimated at about 6 minutes on an H200, docs/performance.md):

1. the environment: torch, CUDA, the device, bf16;
2. the ``cuda`` tests (``pytest -m cuda``);
3. synthetic photos in the Kaggle layout (1918x1280);
4. ``lk-segment train`` of 3x3 and replk, 2 epochs at 512x768, and their MLflow runs checked:
   FINISHED, GPU peak memory logged, Dice logged and in [0, 1];
5. ``lk-segment bench`` at 1024x1024 for 3x3 and replk in bf16 + channels_last, on the check's photos;
6. the loader's images/s (steady state: its workers, pinned memory) against the model's at 1024x1536;
7. ``lk-segment predict`` of a few photos on the device.

The CPU mode runs the same steps at toy sizes (the ``cuda`` tests then report themselves skipped).
Writes ``<out>/gpu-check.json`` and ``<out>/gpu-check.md``; the steps' logs go to ``<out>/logs/``
and their data, MLflow store and outputs to ``<out>/work/`` (``<out>`` is resolved first: the steps
run in ``<out>/work/`` and are given absolute paths). Exit status 1 when a step failed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from lk_segment import names
from lk_segment.commands.gpu_check_summary import markdown, pytest_counts, summarise_bench

ROOT = Path(__file__).resolve().parents[2]
BENCH_VARIANTS = ("3x3", "replk")  # the GPU trainings' two: the plain kernel and the largest


@dataclass
class ModeSettings:
    """What each mode runs at, and each step's time limit."""

    photo: tuple[int, int]  # synthetic photos (width, height)
    cars: int  # x 16 views
    train: tuple[int, int]  # training (height, width)
    train_args: list[str]  # more key=value for the trainings
    train_variants: tuple[str, ...]  # a training each
    epochs: int  # of each training
    bench: tuple[int, int]  # bench steps (height, width)
    bench_variants: tuple[str, ...]
    bench_args: list[str]
    loader: tuple[int, int]  # loader against model (height, width)
    loader_images: int
    predict_photos: int
    timeout_s: dict[str, int] = field(default_factory=dict)


MODES = {
    "gpu": ModeSettings(photo=(1918, 1280), cars=6, train=(512, 768), train_args=[],
                 train_variants=BENCH_VARIANTS, epochs=2, bench=(1024, 1024),
                 bench_variants=BENCH_VARIANTS,
                 bench_args=["--steps", "5", "--warmup", "2", "--pair-turns", "3", "--loader-images", "24"],
                 loader=(1024, 1536), loader_images=48, predict_photos=8,
                 # limits; the estimates on an H200 (docs/performance.md): tests 120 s, data 10, each training
                 # 40, bench 90, loader 40, predict 20: about 6 minutes in all
                 timeout_s={"tests": 240, "train": 150, "bench": 200, "loader": 120, "predict": 90}),
    # The same steps on toy models and sizes: it checks that the script and every command in it work (one
    # training of one epoch proves the training step's plumbing; a second variant would prove nothing more).
    "cpu": ModeSettings(photo=(240, 160), cars=3, train=(32, 48), train_args=["model.width=4", "model.depth=2"],
                 train_variants=("3x3",), epochs=1,
                 bench=(32, 48), bench_variants=("3x3",),
                 bench_args=["--steps", "1", "--warmup", "1", "--pair-turns", "1", "--loader-images", "32",
                             "--matmul-size", "256", "--copy-mb", "16", "--dw-kernels", "7", "--dw-shapes",
                             "1x8x32x48", "--batch-size", "2", "model.width=4", "model.depth=2"],
                 loader=(64, 96), loader_images=32, predict_photos=2,
                 timeout_s={"tests": 300, "train": 300, "bench": 400, "loader": 200, "predict": 120}),
}


# ----------------------------------------------------------------------------- the steps in Python


def environment() -> dict:
    from lk_segment.device import environment, resolve_device

    return environment(resolve_device("auto"))


def make_data(root: Path, sizes: ModeSettings) -> dict:
    from lk_segment.data.synthetic import generate

    if not (root / "SYNTHETIC").exists():
        generate(root, cars=sizes.cars, width=sizes.photo[0], height=sizes.photo[1],
                 workers=max(1, min(16, os.cpu_count() or 1)), progress=False)
    return {"root": str(root), "photos": len(list((root / "train").glob("*.jpg"))), "size": list(sizes.photo)}


def loader_vs_model(root: Path, sizes: ModeSettings, device_type: str) -> dict:
    """Images/s the training loader delivers (cached, its default workers for the device) against
    images/s the 3x3 training step consumes (bf16 + channels_last), at the same size and batch."""
    import torch

    from lk_segment.bench.config import BenchConfig, parse_setting
    from lk_segment.bench.loader import bench_loader
    from lk_segment.bench.run import random_batch
    from lk_segment.bench.steps import project_step
    from lk_segment.config import load_config, training_size
    from lk_segment.data.module import default_num_workers
    from lk_segment.device import resolve_device

    device = resolve_device(device_type)
    torch.backends.cudnn.benchmark = device.type == "cuda"
    height, width = sizes.loader
    workers = default_num_workers(device.type == "cuda")
    cfg = load_config("3x3", [f"data.root={root}", *sizes.train_args])
    bcfg = BenchConfig(loader_height=height, loader_images=sizes.loader_images, loader_workers=[workers])
    # the model's step at the loader's size: (loader_height, the width of Carvana's aspect), 1024 -> 1024x1536
    images, masks = random_batch(bcfg.batch_size, *training_size(height, None, 2 ** cfg.model.depth))
    model = project_step(cfg, parse_setting("bf16+cl"), images, masks, steps=5, warmup=2, device=device)
    loader = bench_loader(cfg, bcfg, model, device)
    cached = loader.cached_images_per_s[f"cpu_aug_w{workers}"]
    return {"size": loader.size, "batch_size": bcfg.batch_size, "workers": workers,
            "loader_images_per_s": cached,
            "loader_device_aug_images_per_s": loader.cached_images_per_s["device_aug_w0"],
            "model_images_per_s": model.images_per_s, "loader_over_model": cached / model.images_per_s}


STEPS = {"loader": lambda args, sizes: loader_vs_model(Path(args.work) / "carvana", sizes, args.device)}


# ----------------------------------------------------------------------------- the check


class Check:
    """Runs the steps one after the other, each in its own process, and collects the results."""

    def __init__(self, out: Path, mode: str):
        out = Path(out).resolve()  # the steps run in work/: every path they are given is absolute
        self.out, self.mode, self.sizes = out, mode, MODES[mode]
        self.work, self.logs = out / "work", out / "logs"
        self.work.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        self.device = "cuda" if mode == "gpu" else "cpu"
        self.steps: list[dict] = []
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1",
                    "MLFLOW_TRACKING_URI": f"sqlite:///{self.work.resolve()}/mlruns/mlflow.db",
                    "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}

    def run(self, name: str, argv: list[str], timeout_key: str, cwd: Path | None = None) -> dict:
        """One step's process, in a process group of its own (a DDP run a test starts, a loader's workers:
        all of it ends on a timeout, none keeps the GPU); its output to logs/<name>.log; how it went."""
        number, limit = len(self.steps) + 1, self.sizes.timeout_s[timeout_key]
        print(f"[{number}] {name} ... (limit {limit} s)", flush=True)
        start = time.perf_counter()
        log = self.logs / f"{name}.log"
        with open(log, "w") as f:
            proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, cwd=cwd or self.work, env=self.env,
                                    start_new_session=True)
            try:
                code = proc.wait(timeout=limit)
                status = "passed" if code == 0 else f"failed (exit {code})"
            except subprocess.TimeoutExpired:
                status = f"failed (over {limit} s)"
            finally:
                _end_group(proc)
        step = {"name": name, "status": status, "seconds": round(time.perf_counter() - start, 1), "limit_s": limit,
                "log": str(log)}
        self.steps.append(step)
        print(f"[{number}] {name}: {status} in {step['seconds']} s (limit {limit} s)", flush=True)
        if status != "passed":
            print("    " + "\n    ".join(log.read_text(errors="replace").splitlines()[-15:]), flush=True)
        return step

    def python_step(self, name: str, timeout_key: str) -> dict | None:
        """A step of this module (STEPS) in its own process; its JSON result, or None when it failed."""
        result = self.work / f"{name}.json"
        result.unlink(missing_ok=True)
        step = self.run(name, [sys.executable, "-m", "lk_segment.commands.gpu_check", "--step", name,
                               "--mode", self.mode, "--work", str(self.work), "--device", self.device], timeout_key)
        if step["status"] != "passed":
            return None
        try:
            return json.loads(result.read_text())
        except (OSError, ValueError) as exc:  # exited 0 without its result: a failed step all the same
            self.fail(step, f"no result from the step: {exc!r}")
            return None

    def inline(self, name: str, function):
        """A cheap step in this process (the environment, the synthetic photos); None when it failed."""
        print(f"[{len(self.steps) + 1}] {name} ...", flush=True)
        start, result = time.perf_counter(), None
        try:
            result, status = function(), "passed"
        except Exception as exc:
            status = f"failed ({type(exc).__name__}: {exc})"
        self.steps.append({"name": name, "status": status, "seconds": round(time.perf_counter() - start, 1)})
        print(f"[{len(self.steps)}] {name}: {status} in {self.steps[-1]['seconds']} s", flush=True)
        return result

    def fail(self, step: dict, why: str) -> None:
        step["status"] = f"failed ({why})"
        print(f"    {why}", flush=True)

    def run_all(self) -> dict:
        results: dict = {"mode": self.mode, "environment": self.inline("environment", environment)}
        # the cuda tests' own file: collecting every test file would import what only CI installs (selenium)
        tests = self.run("cuda-tests", [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider",
                                        str(ROOT / "tests" / "training" / "test_cuda.py")], "tests", cwd=ROOT)
        results["cuda_tests"] = pytest_counts(Path(tests["log"]).read_text(errors="replace"))
        root = self.work / "carvana"
        self.inline("data", lambda: make_data(root, self.sizes))
        results["trainings"] = {v: self.train(v, root) for v in self.sizes.train_variants}
        results["bench"] = self.bench(root)
        results["loader"] = self.python_step("loader", "loader")
        results["predict"] = self.predict(root, results["trainings"].get("3x3") or {})
        results["steps"] = self.steps
        results["passed"] = all(step["status"] == "passed" for step in self.steps)
        return results

    def train(self, variant: str, root: Path) -> dict:
        height, width = self.sizes.train
        step = self.run(f"train-{variant}", [
            sys.executable, "-m", "lk_segment", "train", "-v", variant, f"data.root={root}",
            f"data.height={height}", f"data.width={width}", f"trainer.max_epochs={self.sizes.epochs}",
            "trainer.enable_progress_bar=false",
            f"trainer.accelerator={'gpu' if self.device == 'cuda' else 'cpu'}", "experiment=gpu-check",
            *self.sizes.train_args], "train")
        if step["status"] != "passed":
            return {}
        try:
            return self.check_run(step, variant)
        except Exception as exc:  # no experiment, no run: the step failed, the check goes on
            self.fail(step, f"its MLflow run could not be read: {exc!r}")
            return {}

    def check_run(self, step: dict, variant: str) -> dict:
        """The latest run of ``variant`` in the check's store: FINISHED, Dice logged (2 short epochs may
        not lift it above 0 yet: the figure is reported, not judged), GPU memory exactly on a GPU."""
        from mlflow.tracking import MlflowClient

        client = MlflowClient(self.env["MLFLOW_TRACKING_URI"])
        experiment = client.get_experiment_by_name("gpu-check")
        runs = client.search_runs([experiment.experiment_id], f"tags.variant = '{variant}'",
                                  order_by=["attributes.start_time DESC"], max_results=1)
        run = runs[0]
        m = run.data.metrics
        record = {"run_id": run.info.run_id, "status": run.info.status, "device_name":
                  run.data.params.get(names.DEVICE_NAME), "val_dice": m.get(names.VAL_DICE),
                  "epoch_time_s": m.get(names.EPOCH_TIME), "train_images_per_s": m.get(names.IMAGES_PER_S),
                  "gpu_peak_mem_mb": m.get(names.GPU_PEAK_MEM),
                  "gpu_peak_reserved_mb": m.get(names.GPU_PEAK_RESERVED),
                  "size": list(self.sizes.train)}
        ckpts = sorted((self.work / "checkpoints" / run.info.run_id).glob("best-*.ckpt"))
        record["checkpoint"] = str(ckpts[-1]) if ckpts else None
        dice = record["val_dice"]
        if run.info.status != "FINISHED":
            self.fail(step, f"run {run.info.run_id} is {run.info.status}")
        elif dice is None or not (math.isfinite(dice) and 0 <= dice <= 1):
            self.fail(step, f"val/dice {dice} is not in [0, 1]")
        elif (self.device == "cuda") != (record["gpu_peak_mem_mb"] is not None):
            self.fail(step, f"perf/gpu_peak_mem_mb {record['gpu_peak_mem_mb']} on a {self.device} run")
        return record

    def bench(self, root: Path) -> dict | None:
        """The bench on the check's photos (its loader figure would otherwise generate the default set)."""
        height, width = self.sizes.bench
        path = self.work / "bench.json"
        path.unlink(missing_ok=True)
        step = self.run("bench", [sys.executable, "-m", "lk_segment", "bench", "--out", str(path), "--device",
                                  self.device, "--variants", *self.sizes.bench_variants, "--height", str(height),
                                  "--width", str(width), "--settings", "bf16+cl", *self.sizes.bench_args,
                                  f"data.root={root}"], "bench")
        if step["status"] != "passed":
            return None
        try:
            return summarise_bench(json.loads(path.read_text()))
        except (OSError, KeyError, TypeError, ValueError) as exc:  # a missing JSON too: a failed step
            self.fail(step, f"bench JSON not as expected: {exc!r}")
            return None

    def predict(self, root: Path, training: dict) -> dict | None:
        ckpt = training.get("checkpoint")
        photos = self.work / "predict-in"
        photos.mkdir(exist_ok=True)
        for path in sorted((root / "train").glob("*.jpg"))[: self.sizes.predict_photos]:
            link = photos / path.name
            if not link.exists():
                link.symlink_to(path.resolve())
        out = self.work / "predict-out"
        argv = [sys.executable, "-m", "lk_segment", "predict", "--ckpt", str(ckpt), "--input", str(photos),
                "--out", str(out), "--device", self.device]
        step = self.run("predict", argv, "predict")
        masks = len(list(out.glob("*_mask.png")))
        if step["status"] == "passed" and masks != self.sizes.predict_photos:
            self.fail(step, f"{masks} masks written for {self.sizes.predict_photos} photos")
        return {"photos": self.sizes.predict_photos, "masks": masks, "seconds": step["seconds"], "device": self.device}


def _end_group(proc: subprocess.Popen) -> None:
    """Kill what is left of a step's process group (its leader exited or ran past its limit) and reap the leader."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:  # the whole group had already exited
        pass
    proc.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lk_segment.commands.gpu_check",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gpu-check", help="folder for gpu-check.json, gpu-check.md, logs/, work/")
    parser.add_argument("--mode", choices=["auto", "gpu", "cpu"], default="auto",
                        help="auto: gpu where torch sees CUDA, else the small cpu mode")
    parser.add_argument("--step", choices=sorted(STEPS), help=argparse.SUPPRESS)  # one step, in its own process
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--device", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    mode = args.mode
    if mode == "auto":
        import torch

        mode = "gpu" if torch.cuda.is_available() else "cpu"
    if args.step:
        result = STEPS[args.step](args, MODES[mode])
        (Path(args.work) / f"{args.step}.json").write_text(json.dumps(result, indent=1))
        print(json.dumps(result, indent=1))
        return 0
    out = Path(args.out).resolve()  # the steps run in <out>/work/: a relative --out would name another folder there
    started = time.perf_counter()
    print(f"gpu-check in {mode} mode, into {out}/", flush=True)
    results = Check(out, mode).run_all()
    results["seconds"] = round(time.perf_counter() - started, 1)
    (out / "gpu-check.json").write_text(json.dumps(results, indent=1, default=str))
    (out / "gpu-check.md").write_text(markdown(results) + f"\nWhole check: {results['seconds']} s.\n")
    print(f"{'passed' if results['passed'] else 'FAILED'} in {results['seconds']} s: {out}/gpu-check.md, "
          f"{out}/gpu-check.json", flush=True)
    return 0 if results["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
