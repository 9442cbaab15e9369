"""The MLflow UI in a real browser shows a sweep's runs with their variant tags and accuracy.

Needs Debian's chromium (`.ci/run` installs it; `make browser` does too). Screenshots go to
outputs/e2e/.
"""

from __future__ import annotations

import json
import shutil
import urllib.parse
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from .conftest import reviews, write_csv
from .test_pipeline import quick, textclf

pytestmark = [pytest.mark.slow, pytest.mark.e2e]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = Path(__file__).resolve().parents[1] / "outputs" / "e2e"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-quic",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture
def browser(tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed: `make browser` (CI installs it)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        chrome = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            yield chrome
        finally:
            chrome.close()


def test_ui_lists_every_sweep_run_with_tags_and_accuracy(tmp_path, mlflow_server, browser):
    data = write_csv(tmp_path / "r.csv", reviews(120))
    done = textclf("train", "--multirun", "data=csv", f"data.path={data}",
                   "batching=per_batch,bucket", f"hydra.sweep.dir={tmp_path / 'sweep'}",
                   *quick(tmp_path), "train.epochs=1", f"tracking.uri={mlflow_server}",
                   cwd=tmp_path)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("textclf").experiment_id
    children = [r for r in client.search_runs([experiment]) if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 2
    SHOTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1600, "height": 1000})

    page.goto(f"{mlflow_server}/#/experiments/{experiment}/runs")
    for run in children:  # child runs sit under the parent: expand it if they are hidden
        name = run.info.run_name
        if not page.get_by_text(name, exact=True).count():
            page.get_by_role("button", name="Expand").first.click(timeout=5000)
        page.get_by_text(name, exact=True).first.wait_for(timeout=60_000)
    page.screenshot(path=str(SHOTS / "experiment_runs.png"), full_page=True)

    for run in children:
        page.goto(f"{mlflow_server}/#/experiments/{experiment}/runs/{run.info.run_id}")
        page.get_by_text("test_accuracy").first.wait_for(timeout=60_000)
        accuracy = f"{run.data.metrics['test_accuracy']:.3f}"[:4]
        body = page.locator("body")
        body.get_by_text(accuracy).first.wait_for(timeout=30_000)
        for tag in ("batching", "padding_side", "masking"):
            body.get_by_text(run.data.tags[tag], exact=True).first.wait_for(timeout=30_000)
        page.screenshot(path=str(SHOTS / f"run_{run.data.tags['batching']}.png"), full_page=True)

    ids = urllib.parse.quote(json.dumps([r.info.run_id for r in children]))
    page.goto(f"{mlflow_server}/#/compare-runs?runs={ids}&experiments="
              f"{urllib.parse.quote(json.dumps([experiment]))}")
    for run in children:
        page.get_by_text(run.info.run_name).first.wait_for(timeout=60_000)
    page.get_by_text("test_accuracy").first.wait_for(timeout=60_000)
    page.screenshot(path=str(SHOTS / "compare_runs.png"), full_page=True)
