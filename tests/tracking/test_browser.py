"""The MLflow UI shows a comparison side by side: every variant's runs and their val/dice.

Drives Debian's headless Chromium (``chromium``, ``chromium-driver``; CI installs them in
.ci/run) with Selenium against ``mlflow ui`` on a free 127.0.0.1 port, and reads the page's
text as a user would (run names, tags, metric names and values), not MLflow's markup, which
changes between MLflow releases.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from tests.conftest import free_port, start_ui, stop_ui, store_client

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1600,900",
]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()),
        reason="Debian chromium and chromium-driver are not installed "
        "(apt-get install chromium chromium-driver; .ci/run does it)",
    ),
]


@pytest.fixture(scope="module")
def make_ui(tiny_comparison):
    """``lk-segment ui`` (what ``make ui`` runs) over the comparison's store, one for the module (the tests only
    read it); yields the page it prints."""
    port = free_port()
    proc, first = start_ui(["--experiment", tiny_comparison["experiment"]], tiny_comparison["work"], port)
    try:
        yield first.split("open ", 1)[1].strip()
    finally:
        stop_ui(proc)


@pytest.fixture
def browser():
    """A fresh browser profile for each test (no view state a test before it left in local storage)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def _section(lines: list[str], title: str, count: int) -> list[str]:
    """The ``count`` lines after the line ``title`` (one value per run, in the runs' order)."""
    start = lines.index(title) + 1
    return lines[start : start + count]


def test_compare_page_shows_each_run_its_variant_and_metrics(tiny_comparison, make_ui, browser, tmp_path):
    """MLflow's "Compare runs" page, as a user reads it: run names, the variant tag, each run's metrics."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    client = store_client(tiny_comparison["uri"])
    exp_id = client.get_experiment_by_name(tiny_comparison["experiment"]).experiment_id
    children = client.search_runs([exp_id], f"tags.`mlflow.parentRunId` = '{tiny_comparison['parent_run_id']}'",
                                  order_by=["tags.variant", "tags.seed"])
    assert len(children) == 4 and {r.data.tags["variant"] for r in children} == {"3x3", "1x5"}
    names = [f"{r.data.tags['variant']} seed {r.data.tags['seed']}" for r in children]

    ids = json.dumps([r.info.run_id for r in children])
    browser.set_window_size(1600, 2400)  # tall enough for every metric's row (system metrics included)
    browser.get(f"{make_ui.split('/#/')[0]}/#/compare-runs?runs={ids}&experiments={json.dumps([exp_id])}")
    body = browser.find_element(By.TAG_NAME, "body")
    # The page fills in as MLflow's API answers: wait for the last section, with every run named.
    WebDriverWait(browser, 120).until(lambda _: "Run details" in body.text and "Tags" in body.text
                                      and all(name in body.text for name in names))
    lines = [line.strip() for line in body.text.split("Run details", 1)[1].splitlines()]

    assert _section(lines, "Run Name:", 4) == names
    metrics = lines[lines.index("Metrics") : lines.index("Tags")]
    # The metrics table: metric names (MLflow 3 renders only the first rows' names), then the values.
    shown_names = [line for line in metrics if "/" in line]
    assert shown_names and set(shown_names) <= {key for run in children for key in run.data.metrics}
    # Then the values, a row per metric in the order of the names, a column per run: MLflow renders the first
    # rows only (here up to the system metrics), rounded to 4 significant digits, NaN where a run has none.
    keys = sorted({key for run in children for key in run.data.metrics})
    cells = [float(line) for line in metrics if _is_number(line)]
    rows = [cells[i : i + len(children)] for i in range(0, len(cells) - len(children) + 1, len(children))]
    assert len(rows) > keys.index("perf/epoch_time_s")  # the epoch time's row is among those shown
    for key, row in zip(keys, rows, strict=False):  # the rows shown: the first keys
        expected = [run.data.metrics.get(key, math.nan) for run in children]
        assert row == pytest.approx(expected, rel=1e-3, abs=1e-3, nan_ok=True), key
    tags = lines[lines.index("Tags") :]
    assert " ".join(r.data.tags["variant"] for r in children) in [
        line.removeprefix("variant ") for line in tags if line.startswith("variant ")
    ]

    screenshot = tmp_path / "mlflow_compare.png"
    assert browser.save_screenshot(str(screenshot)) and screenshot.stat().st_size > 10_000
    print(f"screenshot: {screenshot}")


def _children(tiny_comparison) -> tuple[str, list]:
    client = store_client(tiny_comparison["uri"])
    exp_id = client.get_experiment_by_name(tiny_comparison["experiment"]).experiment_id
    runs = client.search_runs([exp_id], f"tags.`mlflow.parentRunId` = '{tiny_comparison['parent_run_id']}'")
    return exp_id, runs


def _is_number(line: str) -> bool:
    try:
        float(line)
    except ValueError:
        return False
    return True


def _as_shown(value: float) -> str:
    """A metric as the page writes it (JavaScript's shortest round-trip form, as Python's repr; 0, not 0.0)."""
    return str(int(value)) if value == int(value) else repr(value)


def _page_text(browser, url: str, ready) -> str:
    """The page's text once ``ready(text)`` holds (MLflow fills the page in as its API answers)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(url)
    body = browser.find_element(By.TAG_NAME, "body")
    WebDriverWait(browser, 120).until(lambda _: ready(body.text))
    return body.text


def test_the_page_make_ui_prints_shows_every_run_with_its_val_dice(tiny_comparison, make_ui, browser, tmp_path):
    """A fresh browser profile on the page ``make ui`` prints: the training runs (named by variant and seed),
    best headline Dice first, each with its val/dice as text, with no column to pick by hand."""
    _, children = _children(tiny_comparison)
    runs = {r.info.run_name: r for r in children}
    assert {r.data.tags["variant"] for r in children} == {"3x3", "1x5"}
    text = _page_text(browser, make_ui, lambda t: all(n in t for n in runs) and "val/dice" in t)
    browser.save_screenshot(str(tmp_path / "make_ui.png"))
    lines = [line.strip() for line in text.splitlines()]
    assert {"val/dice", "val/dice_full_best"} <= set(lines)  # column headers
    for name, run in runs.items():
        assert _as_shown(run.data.metrics["val/dice"]) in lines, name  # the value as logged, as text
    headline = [runs[line].data.metrics["val/dice_full_best"] for line in lines if line in runs]
    assert len(headline) == len(runs) and headline == sorted(headline, reverse=True)  # best first


def test_a_runs_page_shows_its_model_datasets_and_system_metrics(tiny_comparison, make_ui, browser):
    """The champion's run page: its logged model and registered version, its datasets; then its system metrics."""
    client = store_client(tiny_comparison["uri"])
    exp_id, _ = _children(tiny_comparison)
    champion = client.get_model_version_by_alias(tiny_comparison["experiment"], "champion")
    run = client.get_run(champion.run_id)
    page = f"{make_ui.split('/#/')[0]}/#/experiments/{exp_id}/runs/{run.info.run_id}"
    text = _page_text(browser, page, lambda t: "Logged models (1)" in t and "Datasets" in t and "Tags" in t)
    lines = [line.strip() for line in text.splitlines()]
    models = lines[lines.index("Logged models (1)") : lines.index("About this run")]
    assert "model" in models and "Ready" in models  # the model logged under model/
    assert [tiny_comparison["experiment"], f"v{champion.version}"] == models[models.index("Ready") + 2 :][:2]
    training = next(d.dataset for d in run.inputs.dataset_inputs if d.dataset.name == "carvana-training")
    shown = lines.index(f"carvana-training ({training.digest})")  # in the run's "Datasets" box
    assert lines[shown - 1] == "Datasets" and lines[shown + 1 : shown + 3] == ["Training", "+1"]  # +1: validation

    text = _page_text(browser, page + "/system-metrics", lambda t: "cpu_utilization_percentage" in t)
    logged = {k.removeprefix("system/") for k in run.data.metrics if k.startswith("system/")}
    assert {"cpu_utilization_percentage", "system_memory_usage_megabytes"} <= logged
    charts = {line.strip() for line in text.splitlines()} & logged
    assert "cpu_utilization_percentage" in charts and len(charts) >= 2
