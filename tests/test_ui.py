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

from .conftest import quick, reviews, textclf_here, write_csv

pytestmark = [pytest.mark.slow, pytest.mark.e2e]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = Path(__file__).resolve().parents[1] / "outputs" / "e2e"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-quic",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


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
    done = textclf_here(
        "train",
        "--multirun",
        "data=csv",
        f"data.path={data}",
        "batching=per_batch,bucket",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        *quick(tmp_path),
        "train.epochs=1",
        f"tracking.uri={mlflow_server}",
        cwd=tmp_path,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("textclf").experiment_id
    children = [r for r in client.search_runs([experiment]) if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 2
    SHOTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 2600, "height": 1000})  # no virtualised columns

    parent = client.get_run(children[0].data.tags["mlflow.parentRunId"]).info.run_name
    page.goto(f"{mlflow_server}/#/experiments/{experiment}/runs")
    page.get_by_text(parent, exact=True).first.wait_for(timeout=60_000)
    # Child runs sit under their parent run: expand it, then show accuracy and variant tags.
    page.locator("[role=row]", has_text=parent).locator(
        'button[data-component-id*="runnamecellrenderer"]'
    ).first.click()
    for column in ("test_accuracy", "batching", "padding_side", "masking"):
        page.get_by_role("button", name="Columns").click()
        page.keyboard.type(column)
        page.get_by_text(column, exact=True).last.click()
        page.keyboard.press("Escape")
    page.screenshot(path=str(SHOTS / "experiment_runs.png"), full_page=True)
    for run in children:
        link = page.get_by_role("link", name=run.info.run_name, exact=True).first
        link.wait_for(timeout=60_000)
        index = link.locator("xpath=ancestor::*[@role='row']").first.get_attribute("row-index")
        row = " ".join(page.locator(f"[role=row][row-index='{index}']").all_inner_texts())
        accuracy = run.data.metrics["test_accuracy"]
        assert any(t in row for t in (f"{accuracy:.3g}", f"{accuracy:.4f}"[:4])), row
        for tag in ("batching", "padding_side", "masking"):
            assert run.data.tags[tag] in row, row
    page.screenshot(path=str(SHOTS / "experiment_runs.png"), full_page=True)

    for run in children:
        page.goto(f"{mlflow_server}/#/experiments/{experiment}/runs/{run.info.run_id}")
        page.get_by_text("test_accuracy").first.wait_for(timeout=60_000)
        page.get_by_text("masking", exact=True).first.wait_for(timeout=30_000)
        text = page.locator("body").inner_text()
        accuracy = run.data.metrics["test_accuracy"]
        assert any(t in text for t in (f"{accuracy:.3g}", f"{accuracy:.4f}"[:4])), text[-2000:]
        assert all(run.data.tags[tag] in text for tag in ("batching", "padding_side", "masking"))
        page.screenshot(path=str(SHOTS / f"run_{run.data.tags['batching']}.png"), full_page=True)

    ids = urllib.parse.quote(json.dumps([r.info.run_id for r in children]))
    page.goto(
        f"{mlflow_server}/#/compare-runs?runs={ids}&experiments="
        f"{urllib.parse.quote(json.dumps([experiment]))}"
    )
    for run in children:
        page.get_by_text(run.info.run_name).first.wait_for(timeout=60_000)
    page.get_by_text(f"Comparing {len(children)} Runs").first.wait_for(timeout=60_000)
    page.screenshot(path=str(SHOTS / "compare_runs.png"), full_page=True)
