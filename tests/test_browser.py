"""The MLflow UI shows a comparison side by side: every variant's runs and their val/dice.

Drives Debian's headless Chromium (``chromium``, ``chromium-driver``; CI installs them in
.ci/run) with Selenium against ``mlflow ui`` on a free 127.0.0.1 port. MLflow 3's runs page
folds child runs under their parent and shows no metric column by default, so the test
expands the comparison's parent run and adds the ``val/dice`` column, as a user would.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def test_runs_page_shows_every_variant_and_val_dice(tiny_comparison, mlflow_ui, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    client = MlflowClient(tiny_comparison["uri"])
    exp_id = client.get_experiment_by_name(tiny_comparison["experiment"]).experiment_id
    parent_id = tiny_comparison["parent_run_id"]
    children = [
        r
        for r in client.search_runs([exp_id], f"tags.`mlflow.parentRunId` = '{parent_id}'")
        if r.info.status == "FINISHED"
    ]
    assert {r.data.tags["variant"] for r in children} == {"3x3", "1x5"}

    wait = WebDriverWait(browser, 120)
    browser.get(f"{mlflow_ui}/#/experiments/{exp_id}/runs")
    name_cell = f"[row-id='{parent_id}'] [col-id='attributes.`Run Name`']"
    wait.until(EC.element_to_be_clickable((By.CSS_SELECTOR, name_cell + " button")))
    assistant_close = "button[data-component-id='mlflow.assistant.chat_panel.close']"
    for close in browser.find_elements(By.CSS_SELECTOR, assistant_close):
        close.click()  # the assistant side panel would hide the metric columns
    browser.find_element(By.CSS_SELECTOR, name_cell + " button").click()  # expand the nested runs
    browser.find_element(By.CSS_SELECTOR, "[data-testid='column-selection-dropdown']").click()
    selector = wait.until(EC.visibility_of_element_located((By.CSS_SELECTOR, "[role='dialog']")))
    selector.find_element(By.XPATH, ".//*[text()='val/dice']").click()
    browser.find_element(By.TAG_NAME, "body").send_keys(Keys.ESCAPE)

    dice_cell = "[row-id='{}'] [col-id='metrics.`val/dice`']"
    for run in children:
        cell = wait.until(EC.visibility_of_element_located((By.CSS_SELECTOR, dice_cell.format(run.info.run_id))))
        wait.until(lambda _, cell=cell: cell.text.strip() not in ("", "-"))
        assert float(cell.text) == pytest.approx(run.data.metrics["val/dice"], abs=1e-4)
        name = browser.find_element(By.CSS_SELECTOR, f"[row-id='{run.info.run_id}'] [col-id='attributes.`Run Name`']")
        assert (
            name.text.splitlines()[-1] == f"{run.data.tags['variant']} seed {run.data.tags['seed']}"
        )  # after its colour
    headers = [h.text for h in browser.find_elements(By.CSS_SELECTOR, "[role='columnheader']")]
    assert "val/dice" in headers and "Run Name" in headers

    screenshot = tmp_path / "mlflow_runs.png"
    assert browser.save_screenshot(str(screenshot)) and screenshot.stat().st_size > 10_000
    print(f"screenshot: {screenshot}")
