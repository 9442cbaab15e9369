"""The only package that talks to MLflow, along its jobs: the run lifecycle (`runs`),
surviving a tracking server that goes away (`outage`), the trained model as an MLflow
model, logged and loaded (`models`), and what the UI shows of an experiment (`ui`). Callers
import from here."""

# ruff: noqa: F401  (a package's API: the names imported here)

from __future__ import annotations

from .models import (
    MODEL,
    MODEL_TAG,
    load_model,
    log_model,
    log_run_folder,
    model_files,
    model_uri,
    register_model,
)
from .outage import TrackingError, Unreachable
from .runs import (
    PARENT_TAG,
    Run,
    Stopped,
    children,
    connect,
    create_run,
    datasets,
    finish,
    log_artifacts,
    run_exists,
    search,
    source_tags,
    sqlite_path,
    sqlite_uri,
    start_run,
)
from .ui import note, ui_link
