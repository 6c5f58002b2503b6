"""Hardening: a killed training resumes in the same MLflow run, runs never stay RUNNING after
a crash, checkpoints are written atomically and loaded safely, a NaN loss stops the run.

Bad input, secrets and concurrent runs are in tests/training/test_bad_input.py and tests/tracking/test_shared_store.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image

from lk_segment.commands.cli import main
from lk_segment.commands.train import train
from lk_segment.config import load_config
from lk_segment.errors import UserError
from lk_segment.tracking import tracking_uri
from lk_segment.training.checkpointing import atomic_torch_save, load_checkpoint
from tests.conftest import tiny_overrides

EPOCH_METRICS = ["train/loss", "val/loss", "val/dice", "val/iou", "val/dice_best", "perf/epoch_time_s"]

# A real training that stands still in the middle of epoch 1 (a marker file says so), for the
# test to SIGKILL it there, or that interrupts itself with a real SIGINT (Ctrl-C).
STOPPING_TRAINING = """
import os, signal, sys, time
import lightning as L
from lk_segment.config import load_config
from lk_segment.commands.train import train

action, overrides = sys.argv[1], sys.argv[2:]

class StopMidEpoch(L.Callback):
    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.current_epoch == 1 and batch_idx == 2:
            if action == "sigint":
                os.kill(os.getpid(), signal.SIGINT)
            open("mid-epoch", "w").close()
            time.sleep(600)

train(load_config("3x3", overrides), callbacks=[StopMidEpoch()])
"""


def _overrides(root: Path, *extra: str) -> list[str]:
    # 2 cars (1 to train, 1 to validate), 4 batches an epoch: enough to stop one in its middle
    return tiny_overrides(root, "model.depth=2", "data.limit_images=32", "data.batch_size=4",
                          "trainer.deterministic=true", *extra)


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}


def _wait_for(path: Path, proc: subprocess.Popen, timeout_s: float = 240) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.1)


def _runs(experiment: str = "test") -> list:
    client = MlflowClient(tracking_uri())
    found = client.get_experiment_by_name(experiment)
    return [] if found is None else client.search_runs([found.experiment_id])


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_continues_the_same_run_with_the_same_weights(tiny_root, workdir):
    overrides = _overrides(tiny_root, "trainer.max_epochs=2")
    reference = train(load_config("3x3", overrides))  # uninterrupted

    proc = subprocess.Popen([sys.executable, "-c", STOPPING_TRAINING, "sigkill", *overrides], env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_for(workdir / "mid-epoch", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    (killed,) = [r for r in _runs() if r.info.run_id != reference["run_id"]]
    run_id = killed.info.run_id
    assert killed.info.status == "RUNNING"  # SIGKILL cannot be caught: resume is what ends it
    assert load_checkpoint(workdir / "checkpoints" / run_id / "last.ckpt")["epoch"] == 0  # epoch 1 was cut short

    resumed = subprocess.run([sys.executable, "-m", "lk_segment", "train", "-v", "3x3", *overrides,
                              f"resume={run_id}"], env=_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert run_id in resumed.stdout

    runs = _runs()
    assert len(runs) == 2, "resume must not create a run"
    client = MlflowClient(tracking_uri())
    assert client.get_run(run_id).info.status == "FINISHED"
    for key in EPOCH_METRICS:
        steps = [m.step for m in client.get_metric_history(run_id, key)]
        reference_steps = [m.step for m in client.get_metric_history(reference["run_id"], key)]
        assert sorted(steps) == sorted(reference_steps) and len(steps) == 2, key  # each epoch once
    last = load_checkpoint(workdir / "checkpoints" / run_id / "last.ckpt")
    expected = load_checkpoint(reference["last_checkpoint"])
    assert (last["epoch"], last["global_step"]) == (expected["epoch"], expected["global_step"]) == (1, 8)
    assert last["state_dict"].keys() == expected["state_dict"].keys()
    for name, tensor in expected["state_dict"].items():
        assert torch.equal(last["state_dict"][name], tensor), name
    artifacts = {a.path for a in client.list_artifacts(run_id, "checkpoints")}
    assert "checkpoints/last.ckpt" in artifacts


@pytest.mark.slow
def test_resume_last_picks_the_latest_run_of_the_variant(tiny_root, workdir):
    first = train(load_config("3x3", _overrides(tiny_root)))
    again = train(load_config("3x3", _overrides(tiny_root, "trainer.max_epochs=2", "resume=last")))
    assert again["run_id"] == first["run_id"] and len(_runs()) == 1
    history = MlflowClient(tracking_uri()).get_metric_history(first["run_id"], "val/dice")
    assert len(history) == 2  # epoch 0 from the first call, epoch 1 from the resumed one


@pytest.mark.slow
def test_resume_with_another_model_is_refused_before_the_run_is_touched(tiny_root, workdir):
    first = train(load_config("3x3", _overrides(tiny_root)))
    with pytest.raises(UserError, match="trained with another model .*model.width"):
        train(load_config("3x3", _overrides(tiny_root, "model.width=8", f"resume={first['run_id']}")))
    assert MlflowClient(tracking_uri()).get_run(first["run_id"]).info.status == "FINISHED"


class _Boom(L.Callback):
    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        raise RuntimeError("boom")


class _CtrlC(L.Callback):
    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C, delivered to this process


@pytest.mark.slow
def test_an_exception_leaves_the_run_failed(tiny_root, workdir):
    with pytest.raises(RuntimeError, match="boom"):
        train(load_config("3x3", _overrides(tiny_root)), callbacks=[_Boom()])
    (run,) = _runs()
    assert run.info.status == "FAILED"


@pytest.mark.slow
def test_ctrl_c_leaves_the_run_killed_and_the_command_exits_130(tiny_root, workdir, monkeypatch, capsys):
    before = signal.getsignal(signal.SIGINT)
    handler = signal.default_int_handler  # Python's own Ctrl-C, whatever a test before this one left
    signal.signal(signal.SIGINT, handler)
    try:
        # Lightning shuts down gracefully and calls exit(1); train() turns that back into the interrupt
        with pytest.raises(KeyboardInterrupt):
            train(load_config("3x3", _overrides(tiny_root)), callbacks=[_CtrlC()])
        assert signal.getsignal(signal.SIGINT) is handler  # Lightning had set SIGINT to be ignored
        (run,) = _runs()
        assert run.info.status == "KILLED"

        # the command line imports lk_segment.commands.train.train when it runs: give it one that gets a Ctrl-C
        monkeypatch.setattr("lk_segment.commands.train.train", lambda cfg, **kw: train(cfg, callbacks=[_CtrlC()]))
        assert main(["train", "-v", "3x3", *_overrides(tiny_root)]) == 130
        assert capsys.readouterr().err.strip().endswith("lk-segment: interrupted")
    finally:
        signal.signal(signal.SIGINT, before)


@pytest.mark.slow
def test_nan_loss_stops_the_run_naming_the_step_and_marks_it_failed(tiny_root, workdir, capsys):
    argv = ["train", "-v", "3x3", *_overrides(tiny_root, "optim.lr=1e30", "optim.warmup_fraction=0")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    (line,) = [ln for ln in err.splitlines() if ln.startswith("lk-segment: error:")]
    assert line.startswith("lk-segment: error: training loss is ") and "Traceback" not in err
    assert " at step " in line and ("nan" in line or "inf" in line)
    (run,) = _runs()
    assert run.info.status == "FAILED"


# A process that saves a good checkpoint, then is SIGKILLed in the middle of the next save.
KILLED_DURING_SAVE = """
import sys, time
from pathlib import Path
import torch
from lk_segment.training.checkpointing import atomic_torch_save

class SlowToPickle:
    def __reduce__(self):
        Path("saving").touch()  # the temporary file is open, half written
        time.sleep(600)

path = Path(sys.argv[1])
atomic_torch_save({"state_dict": {"w": torch.ones(3)}, "epoch": 0}, path)
atomic_torch_save({"state_dict": {"w": torch.zeros(1_000_000)}, "epoch": 1, "slow": SlowToPickle()}, path)
"""


@pytest.mark.slow
def test_a_kill_during_a_save_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "last.ckpt"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_DURING_SAVE, str(path)], env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_for(tmp_path / "saving", proc, timeout_s=120)
    assert any(p.name.endswith(".tmp") for p in tmp_path.iterdir())  # the save was under way
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    checkpoint = load_checkpoint(path)
    assert checkpoint["epoch"] == 0 and torch.equal(checkpoint["state_dict"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.glob("*.ckpt")] == ["last.ckpt"]  # no half-written *.ckpt
    (left,) = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    alive = tmp_path / f".last.ckpt.{os.getppid()}.tmp"  # a save under way in a running process
    alive.touch()
    atomic_torch_save({"state_dict": {"w": torch.ones(1)}, "epoch": 2}, path)  # the next save, e.g. on resume
    assert not left.exists() and alive.exists()


def test_atomic_save_replaces_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "sub" / "last.ckpt"
    atomic_torch_save({"state_dict": {"w": torch.ones(2)}}, path)
    atomic_torch_save({"state_dict": {"w": torch.zeros(2)}}, path)
    assert torch.equal(load_checkpoint(path)["state_dict"]["w"], torch.zeros(2))
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]


class _CreatesAFile:
    """Unpickling this calls Path.touch: what a malicious checkpoint would do (or worse)."""

    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (Path.touch, (self.target,))


def test_a_malicious_checkpoint_is_refused_and_runs_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "pwned"
    ckpt = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {}, "payload": _CreatesAFile(marker)}, ckpt)

    (tmp_path / "in").mkdir()
    Image.new("RGB", (32, 24)).save(tmp_path / "in" / "car_01.jpg")  # predict checks its input first
    assert main(["predict", "--ckpt", str(ckpt), "--input", "in", "--out", "out"]) == 2
    (line,) = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("lk-segment: error:")]
    assert line.startswith(f"lk-segment: error: refusing to load checkpoint '{ckpt}'")
    assert "only full unpickling could rebuild" in line and "arbitrary code" in line and "weights_only=True" in line
    with pytest.raises(UserError, match="refusing to load"):
        load_checkpoint(ckpt)  # the path resume= takes
    assert not marker.exists()

    torch.load(ckpt, weights_only=False)  # the payload is real: full unpickling does run it
    assert marker.exists()
