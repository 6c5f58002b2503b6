"""Every command README.md and docs/ show, run as a user types it: ``make <target> ...`` from the root of a copy of
the repository, with the Makefile's own relative defaults (the store ``mlruns/mlflow.db``, ``checkpoints/``,
``reports/``, ``evaluations/``, ``erf/``, ``bench.json``). Only the size is smaller, through ``ARGS=``, on the
tiny synthetic data (``data.root=``). No ``MLFLOW_TRACKING_URI`` is passed on: the commands find the store
the Makefile and the package default to.

One copy serves the whole module, in the order a user goes: ``make train`` (the module fixture ``trained``),
then predict, evaluate, register, erf on that run; the variants table (compare and report, study and bench:
test_sweep_commands.py, with a copy of its own; both from tests/commands/conftest.py). Each
test writes only its own outputs (its own folder, experiment or registered name) and reads only what the
fixtures made, so the tests pass in any order (CI shuffles them).

``test_every_readme_command_is_run_through_make_by_a_test`` fails when README.md or a page of docs/ shows a
``make`` target that no test runs through make and that is not exempted below, with the reason.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
from pathlib import Path

import cv2
import pytest

from lk_segment.config import available_variants
from tests.conftest import REPO, tiny_overrides

pytestmark = pytest.mark.skipif(shutil.which("make") is None or shutil.which("git") is None,
                                reason="needs make and git")

# README targets no test runs through make, and why. An exemption is removed once a test runs the target.
EXEMPT = {
    "test": "the suite itself: CI runs `make test`",
    "test-fast": "a subset of the suite (pytest -m 'not slow'), which `make test` runs whole",
    "install": "CI's set-up step and every target's first step (.venv/.installed); "
               "tests/commands/test_install.py builds a venv through it with -C and its own VENV=",
}
MAKE_CALL = re.compile(r'\[\s*"make",\s*"([a-z][a-z-]*)"')  # ["make", "<target>", ...]: a target run as typed


DOCUMENTS = ["README.md", *sorted(str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md"))]
CODE = re.compile(r"```.*?```|`[^`\n]+`", re.DOTALL)  # fenced blocks and inline code: what a user types


def shown_targets(text: str) -> set[str]:
    """The make targets in the code of a Markdown text (not ``make`` as an English word in its prose)."""
    return {target for code in CODE.findall(text) for target in re.findall(r"\bmake ([a-z][a-z-]*)", code)}


def readme_targets() -> set[str]:
    """The targets README.md and the pages of docs/ show."""
    return set().union(*(shown_targets((REPO / name).read_text()) for name in DOCUMENTS))


def test_targets_are_read_from_code_only():
    text = "It would make them slow.\n\n```bash\nmake train VARIANT=5x5\n```\n\nThen `make ui` and `make  x`."
    assert shown_targets(text) == {"train", "ui"}
    assert "docs/study.md" in DOCUMENTS and "README.md" in DOCUMENTS


def make(copy: Path, argv: list[str], timeout: float = 900) -> str:
    """Run ``argv`` (``["make", target, ...]``) from the root of ``copy`` with the user's environment, less
    any store or make state the test run itself carries; assert it succeeds; return its output."""
    assert argv[0] == "make"
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    proc = subprocess.run(argv, cwd=copy, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (f"{' '.join(argv)} exited {proc.returncode}\n--- stdout\n{proc.stdout[-3000:]}"
                                  f"\n--- stderr\n{proc.stderr[-3000:]}")
    return proc.stdout + proc.stderr


def tiny_args(root: Path, *extra: str) -> str:
    """ARGS= of a seconds-long training on the tiny data, in the default experiment; later keys win."""
    items = dict(o.split("=", 1) for o in tiny_overrides(root, "model.width=8", "model.depth=2", *extra))
    items.pop("experiment")
    return " ".join(f"{key}={value}" for key, value in items.items())


@pytest.fixture(scope="module")
def trained(copy, client, tiny_root) -> dict:
    """``make train VARIANT=5x5 ARGS=...``, its MLflow model logged (``make register`` needs one): the run id
    as the store holds it, and the command's output."""
    output = make(copy, ["make", "train", "VARIANT=5x5", f"ARGS={tiny_args(tiny_root, 'tracking.log_model=true')}"])
    experiment = client.get_experiment_by_name("lk_segment")  # the config's default experiment
    assert experiment is not None, output[-3000:]
    (run,) = client.search_runs([experiment.experiment_id])
    return {"run_id": run.info.run_id, "output": output}


@pytest.fixture(scope="module")
def photos(copy, tiny_root) -> list[str]:
    """A folder ``photos/`` of three .jpg in the copy, as a user would point INPUT= at."""
    (copy / "photos").mkdir()
    names = sorted(p.name for p in (tiny_root / "train").glob("*.jpg"))[:3]
    for name in names:
        shutil.copy2(tiny_root / "train" / name, copy / "photos" / name)
    return names


def assert_masks(folder: Path, photos: list[str], photo_dir: Path) -> None:
    """One full-size 0/255 mask per photo and a submission.csv row for each, in ``folder``."""
    for name in photos:
        mask = cv2.imread(str(folder / f"{Path(name).stem}_mask.png"), cv2.IMREAD_UNCHANGED)
        photo = cv2.imread(str(photo_dir / name))
        assert mask is not None and mask.shape == photo.shape[:2], name
        assert set(mask.ravel().tolist()) <= {0, 255}, name
    with open(folder / "submission.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["img"] for r in rows) == photos


@pytest.mark.slow
def test_make_train_as_typed_records_its_run_in_the_default_store_and_folders(copy, client, trained):
    run_id = trained["run_id"]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["variant"] == "5x5"
    assert 0 <= run.data.metrics["val/dice"] <= 1 and run.data.metrics["perf/epoch_time_s"] > 0
    assert f"run {run_id}" in trained["output"]  # the line that tells the user the run id
    assert list((copy / "checkpoints" / run_id).glob("best-*.ckpt"))  # checkpoints/<run id>/, relative
    assert (copy / "mlruns" / "artifacts" / run_id).is_dir()  # the artifacts beside the store
    assert (copy / "data" / "cache").is_dir()  # the decoded cache, under the copy's data/


@pytest.mark.slow
def test_make_predict_with_a_run_writes_masks_and_a_submission(copy, trained, photos):
    make(copy, ["make", "predict", f"RUN={trained['run_id']}", "INPUT=photos/", "OUT=predictions/"])
    assert_masks(copy / "predictions", photos, copy / "photos")


@pytest.mark.slow
def test_make_register_then_predict_with_the_registered_model(copy, client, trained, photos):
    run_id = trained["run_id"]
    output = make(copy, ["make", "register", f"RUN={run_id}"])
    version = client.get_model_version_by_alias("lk-segment", "champion")  # the defaults NAME=, ALIAS=
    assert version.run_id == run_id and f"version {version.version}" in output
    make(copy, ["make", "predict", "MODEL=models:/lk-segment@champion", "INPUT=photos/", "OUT=masks/"])
    assert_masks(copy / "masks", photos, copy / "photos")


@pytest.mark.slow
def test_make_evaluate_scores_every_photo_and_logs_to_the_run(copy, client, trained, tiny_root):
    run_id = trained["run_id"]
    make(copy, ["make", "evaluate", f"RUN={run_id}", f"DATA={tiny_root}"])
    (table,) = (copy / "evaluations").glob("*/per_image.csv")  # EVAL_OUT=evaluations, one folder per data set
    with open(table, newline="") as f:
        rows = list(csv.DictReader(f))
    photos = len(list((tiny_root / "train").glob("*.jpg")))
    assert len(rows) == photos
    metrics = client.get_run(run_id).data.metrics
    (mean,) = [key for key in metrics if key.startswith("eval/") and key.endswith("/dice_mean")]
    assert 0 <= metrics[mean] <= 1 and metrics[mean.replace("dice_mean", "images")] == photos


@pytest.mark.slow
def test_make_erf_of_a_run_logs_it_and_keeps_the_png(copy, client, trained):
    run_id = trained["run_id"]
    make(copy, ["make", "erf", f"RUN={run_id}"])
    assert (copy / "erf" / run_id / "erf.png").stat().st_size > 0  # ERF_OUT=erf
    metrics = client.get_run(run_id).data.metrics
    assert 1 <= metrics["erf/side_20_px"] <= metrics["erf/side_50_px"] <= metrics["erf/side_99_px"]
    assert {"erf/erf.png", "erf/erf.npy"} <= {a.path for a in client.list_artifacts(run_id, "erf")}


@pytest.mark.slow
def test_make_variants_lists_every_variant(copy):
    output = make(copy, ["make", "variants"])
    rows = [line.split() for line in output.splitlines() if line.split() and line.split()[0] in available_variants()]
    assert sorted(row[0] for row in rows) == available_variants()
    assert all(int(row[3].replace(",", "")) > 0 for row in rows)  # params


@pytest.mark.slow
def test_make_readme_variants_writes_the_table_into_readme(copy):
    readme = copy / "README.md"
    text = readme.read_text()
    start, end = text.index("<!-- variants:start -->"), text.index("<!-- variants:end -->")
    readme.write_text(text[: start] + "<!-- variants:start -->\n(stale)\n" + text[end:])
    make(copy, ["make", "readme-variants"])
    assert readme.read_text() == (REPO / "README.md").read_text(), \
        "README.md's variants table is not what make readme-variants writes: run it and commit README.md"


@pytest.mark.slow
def test_make_help_lists_every_target_the_readme_shows(copy):
    listed = set(re.findall(r"^  make (\S+)", make(copy, ["make", "help"]), re.MULTILINE))
    assert "study" in listed
    assert readme_targets() <= listed


def test_every_readme_command_is_run_through_make_by_a_test():
    """A target README.md or docs/ shows is either run by some test as ``["make", "<target>", ...]`` or exempted in
    EXEMPT with its reason; an exemption that a test has since made unnecessary is an error too."""
    makefile_targets = set(re.findall(r"^([a-z][a-z-]*):", (REPO / "Makefile").read_text(), re.MULTILINE))
    shown = readme_targets()
    assert shown <= makefile_targets, f"README.md shows targets the Makefile lacks: {sorted(shown - makefile_targets)}"
    tested = {target for path in (REPO / "tests").rglob("test_*.py") for target in MAKE_CALL.findall(path.read_text())}
    assert "train" in tested and "study" in tested  # the pattern finds this module's own calls
    untested = shown - tested - set(EXEMPT)
    assert not untested, f"README.md shows `make {'`, `make '.join(sorted(untested))}` but no test runs it as typed"
    assert not set(EXEMPT) & tested, f"exempted yet tested (drop the exemption): {sorted(set(EXEMPT) & tested)}"
    assert set(EXEMPT) <= shown, f"exempted but no longer in README.md: {sorted(set(EXEMPT) - shown)}"
