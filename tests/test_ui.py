"""The MLflow UI in a real browser shows a sweep's runs by variant and seed, with their tags,
source and accuracy, the experiment's description, and the grouped chart view it describes.

Needs Debian's chromium (`.ci/run` installs it; `make browser` does too). The screenshots
docs/usage.md shows go to docs/images/, the others to outputs/e2e/.
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
DOC_SHOTS = Path(__file__).resolve().parents[1] / "docs" / "images"
VIEWPORT = {"width": 1600, "height": 1000}  # a laptop's screen: what "the first screen" means
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


def test_ui_shows_a_sweep_by_variant_and_seed_and_how_to_compare_it(
    tmp_path, mlflow_server, browser
):
    data = write_csv(tmp_path / "r.csv", reviews(120))
    done = textclf_here(
        "train",
        "--multirun",
        "data=csv",
        f"data.path={data}",
        "batching=per_batch,bucket",
        "train.seed=0,1",
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
    assert sorted(r.info.run_name for r in children) == [
        "bucket·mask_zero·s0",
        "bucket·mask_zero·s1",
        "per_batch·mask_zero·s0",
        "per_batch·mask_zero·s1",
    ]
    SHOTS.mkdir(parents=True, exist_ok=True)
    DOC_SHOTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport=VIEWPORT)
    runs_page = f"{mlflow_server}/#/experiments/{experiment}/runs?workflowType=machine_learning"

    # The training-runs view: the experiment's description on top, the runs named by variant
    # and seed, each with its source (the textclf command), variant tags and accuracy.
    parent = client.get_run(children[0].data.tags["mlflow.parentRunId"]).info.run_name
    page.goto(runs_page)
    page.get_by_text(parent, exact=True).first.wait_for(timeout=60_000)
    close_assistant(page)
    page.get_by_text("Compare variants over seeds").first.wait_for(timeout=30_000)
    page.locator("[role=row]", has_text=parent).locator(
        'button[data-component-id*="runnamecellrenderer"]'
    ).first.click()
    for column in ("test_accuracy", "batching", "masking"):
        page.get_by_role("button", name="Columns", exact=True).click()
        page.keyboard.type(column)
        page.get_by_text(column, exact=True).last.click()
        page.keyboard.press("Escape")
    for run in children:
        link = page.get_by_role("link", name=run.info.run_name, exact=True).first
        link.wait_for(timeout=60_000)
        index = link.locator("xpath=ancestor::*[@role='row']").first.get_attribute("row-index")
        row = " ".join(page.locator(f"[role=row][row-index='{index}']").all_inner_texts())
        assert "textclf train" in row, row  # the Source column
        accuracy = run.data.metrics["test_accuracy"]
        assert any(t in row for t in (f"{accuracy:.3g}", f"{accuracy:.4f}"[:4])), row
        for tag in ("batching", "masking"):
            assert run.data.tags[tag] in row, row
    page.screenshot(path=str(DOC_SHOTS / "ui_runs.png"))

    # The saved view the description links to: grouped by `batching`, test_accuracy the first
    # chart, on the first screen, one bar per group, the seeds named.
    with page.context.expect_page() as opened:  # the description's links open a new tab
        page.get_by_role("link", name="compare by batching").first.click()
    page = opened.value
    first_chart = page.get_by_text("test_accuracy", exact=True).first
    first_chart.wait_for(timeout=60_000)
    close_assistant(page)
    page.get_by_text("Compared over seeds").first.wait_for(timeout=30_000)
    box = first_chart.bounding_box()
    assert box is not None and box["y"] + box["height"] <= VIEWPORT["height"], box
    for group in ("Group: bucket", "Group: per_batch"):
        page.get_by_text(group).first.wait_for(timeout=30_000)
    for run in children:
        assert page.get_by_text(run.info.run_name, exact=True).first.is_visible()
    page.screenshot(path=str(DOC_SHOTS / "ui_saved_view.png"))

    # The same by hand, as the description's steps say: chart view, grouped by `batching`,
    # charts searched for test_accuracy (a fresh browser: the UI keeps a view's grouping).
    page = browser.new_context(viewport=VIEWPORT).new_page()
    page.goto(runs_page + "&compareRunsMode=CHART")
    page.get_by_text(parent, exact=True).first.wait_for(timeout=60_000)
    close_assistant(page)
    page.get_by_role("button", name="Group by").click()
    page.keyboard.type("batching")
    page.get_by_role("menuitemcheckbox", name="batching", exact=True).first.click()
    page.keyboard.press("Escape")
    page.get_by_placeholder("Search metric charts").fill("test_accuracy")
    page.get_by_text("best_epoch", exact=True).first.wait_for(state="hidden", timeout=30_000)
    chart = page.get_by_text("test_accuracy", exact=True).first
    chart.wait_for(timeout=30_000)
    box = chart.bounding_box()
    assert box is not None and box["y"] + box["height"] <= VIEWPORT["height"], box
    for group in ("Group: bucket", "Group: per_batch"):
        page.get_by_text(group).first.wait_for(timeout=30_000)
    for run in children:  # the grouped list is wide enough for the whole name
        assert page.get_by_text(run.info.run_name, exact=True).first.is_visible()
    page.screenshot(path=str(DOC_SHOTS / "ui_grouped_chart.png"))

    # Each run's page: its description (what it is, how it scored), metrics and tags.
    for run in children:
        page.goto(f"{mlflow_server}/#/experiments/{experiment}/runs/{run.info.run_id}")
        page.get_by_text("test_accuracy").first.wait_for(timeout=60_000)
        page.get_by_text("masking", exact=True).first.wait_for(timeout=30_000)
        text = page.locator("body").inner_text()
        accuracy = run.data.metrics["test_accuracy"]
        assert f"Test accuracy {accuracy:.4f}" in text, text[:2000]
        assert all(run.data.tags[tag] in text for tag in ("batching", "padding_side", "masking"))
        page.screenshot(path=str(SHOTS / f"run_{run.info.run_name}.png"), full_page=True)

    ids = urllib.parse.quote(json.dumps([r.info.run_id for r in children]))
    page.goto(
        f"{mlflow_server}/#/compare-runs?runs={ids}&experiments="
        f"{urllib.parse.quote(json.dumps([experiment]))}"
    )
    for run in children:
        page.get_by_text(run.info.run_name).first.wait_for(timeout=60_000)
    page.get_by_text(f"Comparing {len(children)} Runs").first.wait_for(timeout=60_000)
    page.screenshot(path=str(SHOTS / "compare_runs.png"), full_page=True)


def close_assistant(page) -> None:
    """Close MLflow's assistant panel, when it is open: it takes a third of the screen."""
    close = page.locator('button[data-component-id="mlflow.assistant.chat_panel.close"]')
    if close.count():
        close.first.click()
