"""Bad input: one line naming the culprit and the fix, exit status 2, no traceback (``--debug``
shows it), and nothing lost: the existing run, its checkpoints and the cache stay as they were.
Also: data.on_bad_file=skip, secrets kept out of the run, ``make ui`` on 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image

from lk_segment.commands.cli import main
from lk_segment.commands.train import train
from lk_segment.config import load_config
from lk_segment.tracking import redact
from tests.conftest import free_port, store_uri, tiny_overrides, use_working_folder

REPO = Path(__file__).resolve().parents[2]
SECRETS = {"MLFLOW_TRACKING_PASSWORD": "hunter2-pw", "AWS_SECRET_ACCESS_KEY": "aws-s3cr3t-key",
           "HF_TOKEN": "hf_t0ken_value", "DATABASE_URL": "postgresql://bob:db-passw0rd@db.example/x"}


def _overrides(root, *extra: str) -> list[str]:
    return tiny_overrides(root, "model.width=4", "model.depth=2", "data.limit_images=32", "data.batch_size=4", *extra)


@pytest.fixture(scope="module")
def existing(tiny_root, tmp_path_factory) -> Path:
    """A working folder with one finished run, its checkpoints and a cache."""
    work = tmp_path_factory.mktemp("existing")
    with pytest.MonkeyPatch.context() as mp:
        use_working_folder(mp, work)
        train(load_config("3x3", _overrides(tiny_root)))
    return work


def _snapshot(work: Path) -> dict:
    """Every file under checkpoints/ and data/cache/ with its hash, and every run with its state."""
    files = {str(p.relative_to(work)): hashlib.sha1(p.read_bytes()).hexdigest()
             for folder in ("checkpoints", "data/cache") for p in sorted((work / folder).rglob("*")) if p.is_file()}
    client = MlflowClient(store_uri(work))
    runs = {r.info.run_id: (r.info.status, r.data.metrics, r.data.params)
            for e in client.search_experiments() for r in client.search_runs([e.experiment_id])}
    return {"files": files, "runs": runs}


def _damaged(tiny_root: Path, tmp_path: Path, damage) -> Path:
    root = tmp_path / "carvana"
    shutil.copytree(tiny_root, root)
    damage(root)
    return root


def _write(path: Path, data: bytes) -> None:
    path.write_bytes(data)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _small_mask(path: Path) -> None:
    Image.new("P", (10, 10)).save(path)


def _empty_train(root: Path) -> None:
    for p in (root / "train").iterdir():
        p.unlink()


IMG = "train/synth0001_03.jpg"
MASK = "train_masks/synth0001_03_mask.gif"
DATA_CASES = {
    "corrupt JPEG": (lambda r: _write(r / IMG, b"this is not a jpeg"), "cannot read image", "synth0001_03.jpg"),
    "truncated JPEG": (lambda r: _truncate(r / IMG), "truncated JPEG", "synth0001_03.jpg"),
    "mask of another size": (lambda r: _small_mask(r / MASK), "is 10x10 but its image is 240x160",
                             "synth0001_03_mask.gif"),
    "image without mask": (lambda r: (r / MASK).unlink(), "has no mask", "synth0001_03.jpg"),
    "empty train/": (_empty_train, "holds no .jpg images", "train"),
    "non-image file in train/": (lambda r: _write(r / "train/notes.txt", b"hello"), "is not a .jpg image",
                                 "notes.txt"),
}


def _run_cli(argv: list[str], capsys) -> str:
    """The CLI in-process: exit 2 and exactly one error line, which is returned."""
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err[-2000:]
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("lk-segment: error:")]
    assert len(lines) == 1, err[-2000:]
    print(f"observed: {lines[0]}", file=sys.__stdout__)
    return lines[0]


@pytest.mark.slow
@pytest.mark.parametrize("case", list(DATA_CASES))
def test_bad_data_is_one_line_exit_2_and_loses_nothing(case, existing, tiny_root, tmp_path, capsys, monkeypatch):
    damage, message, culprit = DATA_CASES[case]
    work = use_working_folder(monkeypatch, existing)  # the bad command runs beside the existing run
    root = _damaged(tiny_root, tmp_path, damage)
    before = _snapshot(work)
    line = _run_cli(["train", "-v", "3x3", *_overrides(root)], capsys)
    assert message in line and culprit in line, line
    assert "data.on_bad_file=skip" in line or case == "empty train/"
    assert _snapshot(work) == before


def _other_model_checkpoint(path: Path) -> None:
    torch.save({"state_dict": {"linear.weight": torch.ones(2, 2)}, "hyper_parameters": {"hidden": 3}}, path)


def _truncated_checkpoint(work: Path, path: Path) -> None:
    good = next((work / "checkpoints").rglob("last.ckpt")).read_bytes()
    path.write_bytes(good[: len(good) // 2])


OTHER_CASES = {
    "data root that does not exist": (["train", "data.root=no/such/folder"],
                                      "data root 'no/such/folder' does not exist"),
    "unknown variant": (["train", "-v", "9x9"], "unknown variant '9x9': choose one of"),
    "unknown config key": (["train", "trainer.max_epoch=1"], "unknown config key 'trainer.max_epoch'"),
    "wrong type": (["train", "trainer.max_epochs=abc"], "trainer.max_epochs"),
    "size the depth cannot take": (["train", "{tiny}", "data.height=8", "model.depth=4"],
                                   "too small for model.depth=4"),
    "corrupt checkpoint": (["predict", "--ckpt", "{tmp}/bad.ckpt", "--input", "{tiny}/train", "--out", "{tmp}/o"],
                           "is corrupt or truncated"),
    "truncated checkpoint": (["predict", "--ckpt", "{tmp}/half.ckpt", "--input", "{tiny}/train", "--out", "{tmp}/o"],
                             "is corrupt or truncated"),
    "checkpoint of another model": (["predict", "--ckpt", "{tmp}/other.ckpt", "--input", "{tiny}/train",
                                     "--out", "{tmp}/o"], "is not a checkpoint of this model"),
    "run id that does not exist (predict)": (["predict", "--run", "0123456789abcdef", "--input", "{tiny}/train",
                                              "--out", "{tmp}/o"], "no MLflow run with id '0123456789abcdef'"),
    "run id that does not exist (resume)": (["train", "{tiny}", "resume=0123456789abcdef"],
                                            "no MLflow run with id '0123456789abcdef'"),
    "tracking URI that cannot be reached": (["train", "{tiny}"], "cannot reach the MLflow tracking server"),
}


@pytest.mark.parametrize("argv", [["predict", "--run", "0123456789abcdef", "--input", ".", "--out", "o"],
                                  ["evaluate", "--run", "0123456789abcdef", "--data", "."],
                                  ["register", "--run", "0123456789abcdef"]])
def test_a_run_id_where_there_is_no_store_says_so_and_creates_none(argv, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    line = _run_cli(argv, capsys)
    assert "no MLflow run with id '0123456789abcdef': there is no store at sqlite:///mlruns/mlflow.db" in line
    assert list(tmp_path.iterdir()) == []  # no empty store made for a lookup


@pytest.mark.slow
@pytest.mark.parametrize("case", list(OTHER_CASES))
def test_bad_input_is_one_line_exit_2_and_loses_nothing(case, existing, tiny_root, tmp_path, capsys, monkeypatch):
    argv, message = OTHER_CASES[case]
    work = use_working_folder(monkeypatch, existing)  # the bad command runs beside the existing run
    (tmp_path / "bad.ckpt").write_bytes(b"\x00garbage" * 100)
    _truncated_checkpoint(work, tmp_path / "half.ckpt")
    _other_model_checkpoint(tmp_path / "other.ckpt")
    if case == "tracking URI that cannot be reached":
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://alice:uri-s3cret@127.0.0.1:{free_port()}")
    argv = [a.format(tmp=tmp_path, tiny=tiny_root) for a in argv]
    argv = [x for a in argv for x in (_overrides(tiny_root) if a == str(tiny_root) else [a])]
    before = _snapshot(work)
    line = _run_cli(argv, capsys)
    assert message in line, line
    assert "uri-s3cret" not in line
    assert _snapshot(work) == before


@pytest.mark.slow
def test_debug_shows_the_traceback(workdir):
    # (without --debug, the same command's one line and exit 2: tests/training/test_train.py, in a subprocess too)
    argv = [sys.executable, "-m", "lk_segment", "--debug", "train", "data.root=no/such/folder"]
    loud = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert loud.returncode != 0 and "Traceback" in loud.stderr and "UserError: data root" in loud.stderr


@pytest.mark.slow
def test_skip_leaves_bad_files_out_reports_them_and_logs_the_count(tiny_root, workdir, tmp_path, capsys):
    def damage(root: Path) -> None:
        _write(root / IMG, b"not a jpeg")
        _truncate(root / "train/synth0001_05.jpg")
        (root / "train_masks/synth0000_07_mask.gif").unlink()
        _write(root / "train/notes.txt", b"hello")

    root = _damaged(tiny_root, tmp_path, damage)
    result = train(load_config("3x3", _overrides(root, "data.on_bad_file=skip")))
    err = capsys.readouterr().err
    assert "skipped 4 bad file(s)" in err
    for name in ["synth0001_03.jpg", "synth0001_05.jpg", "synth0000_07.jpg", "notes.txt"]:
        assert name in err
    client = MlflowClient(store_uri(workdir))
    run = client.get_run(result["run_id"])
    assert run.info.status == "FINISHED" and run.data.params["data/skipped_files"] == "4"
    assert "skipped_files.txt" in {a.path for a in client.list_artifacts(result["run_id"])}


@pytest.mark.slow
def test_no_secret_reaches_the_run(tiny_root, workdir, monkeypatch):
    # A URI with credentials in a config value the run logs (here the cache folder, which the
    # training creates and uses), and secrets in the environment, which is never logged.
    for key, value in SECRETS.items():
        monkeypatch.setenv(key, value)
    cache_dir = "s3://carol:cache-s3cret@bucket.example/cache"
    result = train(load_config("3x3", _overrides(tiny_root, f"data.cache_dir={cache_dir}")))
    run = MlflowClient(store_uri(workdir)).get_run(result["run_id"])
    assert run.data.params["data.cache_dir"] == "s3://***@bucket.example/cache"  # logged, credentials masked
    logged = " ".join(f"{k}={v}" for d in (run.data.params, run.data.tags) for k, v in d.items())
    for secret in ["cache-s3cret", "hunter2-pw", "aws-s3cr3t-key", "hf_t0ken_value", "db-passw0rd"]:
        assert secret not in logged


def test_redact_hides_uri_credentials():
    assert redact("http://bob:pw@host:5000/x") == "http://***@host:5000/x"
    assert redact("sqlite:///mlruns/mlflow.db") == "sqlite:///mlruns/mlflow.db"


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_ui_binds_localhost_unless_host_is_given():
    def ui_line(target: str, *args: str) -> str:
        out = subprocess.run(["make", "-n", target, *args], cwd=REPO, capture_output=True, text=True,
                             timeout=60).stdout
        return out[out.index("lk-segment ui"):]  # the command (make -n prints it, runs nothing)

    from lk_segment.commands.cli import build_parser

    for target in ("ui", "server"):
        assert "--host" not in ui_line(target)  # unset, the command's own default: this machine only
        assert "--host 0.0.0.0" in ui_line(target, "HOST=0.0.0.0")
    assert build_parser().parse_args(["ui"]).host == "127.0.0.1"
    assert "--server" in ui_line("server") and "--server" not in ui_line("ui")


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_train_passes_resume():
    out = subprocess.run(["make", "-n", "train", "RESUME=last"], cwd=REPO, capture_output=True, text=True,
                         timeout=60).stdout
    assert "lk-segment train --variant 3x3" in out and "resume=last" in out
