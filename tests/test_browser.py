"""The MLflow UI shows a comparison side by side: every variant's runs and their val/dice.

Drives Debian's headless Chromium (``chromium``, ``chromium-driver``; CI installs them in
.ci/run) with Selenium against ``mlflow ui`` on a free 127.0.0.1 port, and reads the page's
text as a user would (run names, tags, metric names and values), not MLflow's markup, which
changes between MLflow releases.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import free_port

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


@pytest.fixture
def mlflow_ui(tiny_comparison):
    """``mlflow ui`` over the comparison's store; yields its base URL."""
    port = free_port()
    mlflow = Path(sys.executable).with_name("mlflow")
    log = open(tiny_comparison["work"] / f"mlflow-ui-{port}.log", "w")
    proc = subprocess.Popen(
        [
            str(mlflow),
            "ui",
            "--backend-store-uri",
            tiny_comparison["uri"],
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        cwd=tiny_comparison["work"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail(f"mlflow ui did not start: see {log.name}")
            time.sleep(1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


@pytest.fixture
def browser():
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


def test_compare_page_shows_each_run_its_variant_and_val_dice(tiny_comparison, mlflow_ui, browser, tmp_path):
    """MLflow's "Compare runs" page, as a user reads it: run names, the variant tag, val/dice per run."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    client = MlflowClient(tiny_comparison["uri"])
    exp_id = client.get_experiment_by_name(tiny_comparison["experiment"]).experiment_id
    children = client.search_runs([exp_id], f"tags.`mlflow.parentRunId` = '{tiny_comparison['parent_run_id']}'",
                                  order_by=["tags.variant", "tags.seed"])
    assert len(children) == 4 and {r.data.tags["variant"] for r in children} == {"3x3", "1x5"}
    names = [f"{r.data.tags['variant']} seed {r.data.tags['seed']}" for r in children]

    ids = json.dumps([r.info.run_id for r in children])
    browser.get(f"{mlflow_ui}/#/compare-runs?runs={ids}&experiments={json.dumps([exp_id])}")
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
    values = [float(line) for line in metrics if line.replace(".", "", 1).isdigit()]  # rounded, e.g. 0.612
    for run in children:
        assert any(v == pytest.approx(run.data.metrics["val/dice"], abs=1e-3) for v in values), run.info.run_name
    tags = lines[lines.index("Tags") :]
    assert " ".join(r.data.tags["variant"] for r in children) in [
        line.removeprefix("variant ") for line in tags if line.startswith("variant ")
    ]

    screenshot = tmp_path / "mlflow_compare.png"
    assert browser.save_screenshot(str(screenshot)) and screenshot.stat().st_size > 10_000
    print(f"screenshot: {screenshot}")
