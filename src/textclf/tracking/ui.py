"""What the MLflow UI shows of the project's experiments beyond their runs: a description that
says how to compare runs over seeds, the experiment kind that makes the UI treat it as training
runs, saved views that open a sweep grouped by `batching` or `masking` with the compared metrics
first, and links into it. All of it is tags, MLflow's own keys, set when an experiment is made.
"""

from __future__ import annotations

import json
import time

from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE

from ..config import BatchingConfig, ModelConfig

KIND_TAG, TRAINING = "mlflow.experimentKind", "custom_model_development"
VIEW_TAG = "mlflow.sharedViewState."  # + the view's id: a saved view (the UI's Views menu)
UI = "http://127.0.0.1:5000"  # `make ui`, over the project's SQLite store
TRAINING_VIEW = "workflowType=machine_learning"  # the UI's training pages, not GenAI's
GROUPS = ("batching", "masking")  # one saved view per tag a sweep's variants differ in
# every tag runs can be grouped by: the saved views' first, then the configs' other tags
GROUP_TAGS = tuple(dict.fromkeys((*GROUPS, *BatchingConfig.TAGS, *ModelConfig().tags())))
# The charts of a saved view, first screen first: what `make compare` compares (test and
# served accuracy, F1, padding efficiency, speed), then validation accuracy per epoch (a
# group's mean line within its min-max band).
CHARTS = (
    "test_accuracy",
    "served_accuracy",
    "test_f1",
    "padding_efficiency",
    "train_reviews_per_s",
    "val_accuracy",
)
HOW_TO_COMPARE = """\
**Compare variants over seeds:** open the saved view [compare by batching]({batching}) or \
[compare by masking]({masking}) (**Views**, top right), or group the runs yourself as below.

1. Switch to the chart view (the chart icon left of the search box).
2. **Group by** the tag `{first}` (or {others}): one group per \
variant, its seeds pooled; the gear beside the list's search shows each group's average, \
minimum or maximum.
3. Type `test_accuracy` in *Search metric charts*: one bar per group (`served_accuracy`, \
`test_f1`, `train_reviews_per_s`, `padding_efficiency` likewise).

Runs are named `<batching>·<masking>·s<seed>` (`bow·s<seed>` for bow); a sweep's runs sit \
under its `sweep ...` parent run (expand it). Each run's description says what it is and how \
it scored. For intervals and tests over seeds, `make compare`: its table and figures are \
logged to the sweep's parent run, under `comparison/`. The data each run saw: its `data_*` \
params and `data_report.json`.
"""


def experiment_tags(experiment_id: str) -> dict[str, str]:
    """The tags of an experiment of training runs: description, kind, saved views."""
    links = {key: f"#/experiments/{experiment_id}/runs?{view_query(key)}" for key in GROUPS}
    return {
        MLFLOW_RUN_NOTE: HOW_TO_COMPARE.format(
            first=GROUP_TAGS[0], others=", ".join(f"`{t}`" for t in GROUP_TAGS[1:]), **links
        ),
        KIND_TAG: TRAINING,
        **{VIEW_TAG + view_id(key): saved_view(key) for key in GROUPS},
    }


def view_id(key: str) -> str:
    return f"textclf-by-{key}"


def view_query(key: str) -> str:
    """The URL query that opens the saved view grouping by `key`, in the chart view."""
    return f"{TRAINING_VIEW}&compareRunsMode=CHART&viewStateShareKey={view_id(key)}"


def saved_view(key: str) -> str:
    """A saved view as the UI's Views menu stores one: the runs grouped by the tag `key`
    (each group's average), the `CHARTS` in one section, the run list with its test accuracy
    and variant tags."""
    charts = [
        {
            "uuid": f"textclf-{metric}",
            "type": "LINE" if metric == "val_accuracy" else "BAR",
            "runsCountToCompare": 10,
            "metricSectionId": "textclf-compared",
            "deleted": False,
            "isGenerated": False,
            "displayName": metric,
            "metricKey": metric,
        }
        for metric in CHARTS
    ]
    section = {
        "uuid": "textclf-compared",
        "name": "Compared over seeds",
        "display": True,
        "isReordered": True,
        "deleted": False,
        "isGenerated": False,
    }
    state = {
        "searchFilter": "",
        "orderByKey": "attributes.start_time",
        "orderByAsc": False,
        "startTime": "ALL",
        "lifecycleFilter": "Active",
        "datasetsFilter": [],
        "modelVersionFilter": "All Runs",
        "selectedColumns": [
            "attributes.`Source`",
            "metrics.`test_accuracy`",
            *(f"tags.`{tag}`" for tag in GROUPS),
        ],
        "columnOrder": [],
        "columnWidths": {},
        "runsHiddenMode": "SHOW_ALL",
        "compareRunSections": [section],
        "compareRunCharts": charts,
        "viewMaximized": False,
        "runListHidden": False,
        "isAccordionReordered": False,
        "useGroupedValuesInCharts": True,
        "hideEmptyCharts": True,
        "groupBy": {
            "aggregateFunction": "average",
            "groupByKeys": [{"mode": "tag", "groupByData": key}],
        },
        "groupsExpanded": {},
        "globalLineChartConfig": {"xAxisKey": "step", "lineSmoothness": 0},
    }
    now = int(time.time() * 1000)
    return json.dumps(
        {
            "name": f"compare by {key}",
            "createdAt": now,
            "updatedAt": now,
            "state": json.dumps(state),
        }
    )


def note(text: str) -> dict[str, str]:
    """A run's description (the UI's Description box) as the tag MLflow keeps it in."""
    return {MLFLOW_RUN_NOTE: text}


def ui_link(uri: str, experiment_id: str, run_id: str | None = None, view: str = "") -> str:
    """Where the UI shows an experiment (or one of its runs, or one of its saved views, by the
    tag it groups by) on its training pages: a server's own address, or `make ui`'s for the
    project's SQLite store."""
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else UI
    run = f"/{run_id}" if run_id else ""
    query = view_query(view) if view else TRAINING_VIEW
    return f"{base}/#/experiments/{experiment_id}/runs{run}?{query}"
