"""MLflow runs: created, logged to and closed through `MlflowClient` (no global "active run"),
so a failing job ends its own run as FAILED (or KILLED on Ctrl-C/SIGTERM) and can never leave
the next one "already active". A run records the splits it saw as MLflow datasets and, for
training, MLflow's system metrics.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.entities import (
    Dataset,
    DatasetInput,
    InputTag,
    Metric,
    Param,
    RunStatus,
    RunTag,
)
from mlflow.tracking import MlflowClient
from mlflow.tracking.context.registry import resolve_tags
from mlflow.utils.mlflow_tags import (
    MLFLOW_DATASET_CONTEXT,
    MLFLOW_GIT_COMMIT,
    MLFLOW_PARENT_RUN_ID,
    MLFLOW_SOURCE_NAME,
    MLFLOW_SOURCE_TYPE,
)

from ..data import Lineage
from . import ui
from .outage import (
    KeepsMetrics,
    TrackingError,
    first_line,
    is_unreachable,
    now_ms,
    server_problem,
)

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # logs stay readable
# MLflow's INFO lines (signature inference, system metrics starting and stopping, store
# migrations) would be a run's last words; MLFLOW_LOGGING_LEVEL=INFO brings them back.
logging.getLogger("mlflow").setLevel(os.environ.get("MLFLOW_LOGGING_LEVEL") or "WARNING")
PARENT_TAG = MLFLOW_PARENT_RUN_ID
SQLITE = "sqlite:///"  # an SQLite store's URI: this, then the file's absolute path (sqlite_uri)
CONTEXTS = {"train": "training", "val": "validation", "test": "testing"}  # MLflow's words
_BATCH = 100
_LOST_INSERT_RACE = "/gkpj)"  # the end of the link SQLAlchemy puts in an IntegrityError's message
log = logging.getLogger(__name__)


def sqlite_uri(path: Path | str) -> str:
    """The URI of the SQLite store (MLflow's, or Optuna's) in the file at absolute `path`."""
    return f"{SQLITE}{path}"


def sqlite_path(uri: str) -> Path | None:
    """The file of an SQLite store's URI (`sqlite_uri`'s inverse); None for any other store."""
    return Path(uri.removeprefix(SQLITE)) if uri.startswith(SQLITE) else None


def connect(uri: str, experiment: str, training: bool = True) -> tuple[MlflowClient, str]:
    """A client and the experiment's id, created if needed; fails fast naming the URI. An
    experiment of `training` runs gets the description and kind the UI shows (`ui`)."""
    store = sqlite_path(uri)
    artifacts = None  # a tracking server's choice
    if store is not None:
        store.parent.mkdir(parents=True, exist_ok=True)
        artifacts = (store.parent / "mlartifacts").as_uri()  # beside the local store
    elif problem := server_problem(uri):  # at once: MLflow's own client retries for minutes
        raise TrackingError(
            f"the MLflow tracking server {uri!r} is not reachable ({problem}). "
            "Start it (make server) or fix tracking.uri."
        )
    client = MlflowClient(tracking_uri=uri)
    try:
        found = client.get_experiment_by_name(experiment)
        if found is None:
            created = client.create_experiment(experiment, artifact_location=artifacts)
            found = client.get_experiment(created)
    except Exception as error:  # MLflow raises many types for an unusable store
        if "already exists" in str(error):  # created meanwhile by a parallel job
            found = client.get_experiment_by_name(experiment)
            if found is not None:
                return client, found.experiment_id
        raise TrackingError(
            f"cannot use the MLflow tracking store {uri!r}: "
            f"{type(error).__name__}: {first_line(error)}. "
            "Check tracking.uri (or start the server it names)."
        ) from error
    # A new experiment, or one from before them, gets the UI's tags it lacks; best effort:
    # who may log runs to an experiment may not edit it (`make server AUTH=1`).
    if training:
        tags = ui.experiment_tags(found.experiment_id)
        for key in tags.keys() - found.tags.keys():
            with contextlib.suppress(mlflow.exceptions.MlflowException):
                client.set_experiment_tag(found.experiment_id, key, tags[key])
    return client, found.experiment_id


def source_tags(command: str, cwd: str | Path | None = None) -> dict[str, str]:
    """MLflow's standard tags of where a run came from (user, source `command`, the commit of
    the checkout at `cwd` if any), which fill the UI's Source column: runs created through a
    client do not get them."""
    tags = resolve_tags({MLFLOW_SOURCE_NAME: command, MLFLOW_SOURCE_TYPE: "LOCAL"})
    try:
        git = ["git", "rev-parse", "HEAD"]
        out = subprocess.run(git, cwd=cwd, capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return tags
    return tags | {MLFLOW_GIT_COMMIT: out.stdout.strip()}


def _dataset(split: Lineage) -> Dataset:
    """A split as an MLflow dataset entity: its source (as MLflow's local-file and code sources
    write theirs), name, digest and row count, not its rows."""
    kind, _, name = split.source.partition(":")
    source_type, source = (
        ("local", {"uri": split.source})
        if Path(split.source).is_absolute()
        else ("code", {"tags": {kind: name}})  # <kind>:<name>, as tfds:imdb_reviews
    )
    return Dataset(
        split.name,
        split.digest,
        source_type,
        json.dumps(source),
        profile=json.dumps({"num_rows": split.rows}),
    )


class Stopped(Exception):
    """Raised inside `start_run` to end a run early on purpose (a pruned Optuna trial): the run
    ends KILLED with the message as its `stopped` tag, not as a failure."""


class Run(KeepsMetrics):
    """One MLflow run: params, metrics, tags and artifacts, through one client; epoch metrics
    a lost tracking server missed are kept and sent later (`outage.KeepsMetrics`)."""

    def __init__(self, client: MlflowClient, run_id: str):
        self.client, self.run_id = client, run_id
        self.pending: list[Metric] = []

    def log_params(self, params: dict[str, Any]) -> None:
        self.client.log_batch(
            self.run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()]
        )

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        self._send([Metric(k, float(v), now_ms(), step) for k, v in metrics.items()])

    def set_tags(self, tags: dict[str, Any]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_datasets(self, splits: Iterable[Lineage], context: str | None = None) -> None:
        """Each split as a dataset input of the run, in its context: training, validation
        or testing by its name, or `context` for all (an evaluation's).

        A dataset is stored once per experiment; MLflow's SQL store looks it up, then inserts
        it, so two jobs of a parallel sweep logging the same split at once can both miss it
        and one insert fails (a unique-key error, answered as a 400 the client does not
        retry). The second attempt finds the row the other job wrote."""
        inputs = [
            DatasetInput(
                _dataset(split), [InputTag(MLFLOW_DATASET_CONTEXT, context or CONTEXTS[split.name])]
            )
            for split in splits
        ]
        try:
            self.client.log_inputs(self.run_id, datasets=inputs)
        except mlflow.exceptions.MlflowException as error:
            if _LOST_INSERT_RACE not in str(error):
                raise
            log.info("dataset logged by a concurrent run meanwhile; logging again")
            self.client.log_inputs(self.run_id, datasets=inputs)

    def log_artifact(self, path: str | Path, folder: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), folder)
        else:
            self.client.log_artifact(self.run_id, str(path), folder)


@contextlib.contextmanager
def start_run(
    uri: str,
    experiment: str,
    run_name: str | None = None,
    tags: dict[str, Any] | None = None,
    parent_run_id: str | None = None,
    run_id: str | None = None,
    system_metrics: bool = False,
    start_time: int | None = None,
    training: bool = True,
) -> Iterator[Run]:
    """Open (or, with `run_id`, reopen) a run; it ends FINISHED, FAILED or KILLED, never RUNNING
    (unless its tracking server is unreachable at the end: see `Run.or_later`). `start_time`
    (ms since the epoch) dates a run opened after its work began. `training=False`: the
    experiment holds other runs (evaluations, benchmarks) and gets no training description."""
    client, experiment_id = connect(uri, experiment, training)
    all_tags = {k: str(v) for k, v in (tags or {}).items()}
    if parent_run_id:
        all_tags[PARENT_TAG] = parent_run_id
    resumed = bool(run_id)
    if run_id:
        client.update_run(run_id, status="RUNNING")
    else:
        run_id = client.create_run(
            experiment_id, start_time=start_time, run_name=run_name, tags=all_tags
        ).info.run_id
    run = Run(client, run_id)
    try:
        with _system_metrics(uri, run_id, resumed) if system_metrics else contextlib.nullcontext():
            yield run
    except Stopped as stop:
        _close(run, RunStatus.KILLED, str(stop), tag="stopped")
        raise
    except (KeyboardInterrupt, SystemExit) as stop:
        _close(run, RunStatus.KILLED, f"interrupted ({type(stop).__name__})")
        raise
    except BaseException as error:
        _close(run, RunStatus.FAILED, f"{type(error).__name__}: {error}"[:5000])
        raise
    else:
        client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))


@contextlib.contextmanager
def _system_metrics(uri: str, run_id: str, resumed: bool) -> Iterator[None]:
    """MLflow's system metrics (`system/*`) of the run while the block runs; a resumed run's go
    on from its last step. When the tracking server is unreachable at the end, the sampling
    thread is told to stop rather than waited for (its requests retry)."""
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(run_id, resume_logging=resumed, tracking_uri=uri)
    monitor.start()
    try:
        yield
    finally:
        if server_problem(uri):
            monitor._shutdown_event.set()  # finish() would join a thread stuck in retries
        else:
            monitor.finish()


def _close(run: Run, status: int, error: str, tag: str = "error") -> None:
    """End a stopped run with an `error` tag; when its server is unreachable, leave it RUNNING
    rather than wait minutes for MLflow's retries and bury the error that stopped it."""
    if server_problem(run.client.tracking_uri):
        return
    try:
        run.set_tags({tag: error})
        run.client.set_terminated(run.run_id, RunStatus.to_string(status))
    except Exception as lost:
        if not is_unreachable(lost):
            raise


def finish(
    uri: str, run_id: str, status: str = "FINISHED", tags: dict[str, Any] | None = None
) -> None:
    client = MlflowClient(tracking_uri=uri)
    if tags:
        Run(client, run_id).set_tags(tags)
    client.set_terminated(run_id, status)


def create_run(uri: str, experiment: str, run_name: str, tags: dict[str, Any]) -> str:
    """A run left RUNNING for a caller that ends it later (a sweep's parent run)."""
    client, experiment_id = connect(uri, experiment)
    return client.create_run(
        experiment_id, run_name=run_name, tags={k: str(v) for k, v in tags.items()}
    ).info.run_id


def search(uri: str, experiment: str) -> pd.DataFrame:
    """Runs of an experiment as a pandas DataFrame (empty when there is none)."""
    store = sqlite_path(uri)
    if store is not None and not store.exists():
        return pd.DataFrame()  # reading must not create a store
    found = MlflowClient(tracking_uri=uri).get_experiment_by_name(experiment)
    if found is None:
        return pd.DataFrame()
    mlflow.set_tracking_uri(uri)
    return mlflow.search_runs([found.experiment_id], max_results=10000)


def datasets(uri: str, experiment: str, run_ids: list[str]) -> dict[str, dict[str, Lineage]]:
    """The splits each of `run_ids` logged for training, validation and testing, by split name
    (a run that logged none, as runs from before datasets were logged, is left out)."""
    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    logged: dict[str, dict[str, Lineage]] = {}
    if found is None:
        return logged
    for i in range(0, len(run_ids), _BATCH):
        ids = ", ".join(f"'{r}'" for r in run_ids[i : i + _BATCH])
        for run in client.search_runs(
            [found.experiment_id], f"attributes.run_id IN ({ids})", max_results=_BATCH
        ):
            splits = {}
            for item in run.inputs.dataset_inputs if run.inputs else []:
                context = {t.key: t.value for t in item.tags}.get(MLFLOW_DATASET_CONTEXT)
                if context in CONTEXTS.values():
                    data, source = item.dataset, json.loads(item.dataset.source)
                    where = (
                        "".join(f"{kind}:{name}" for kind, name in source["tags"].items())
                        if "tags" in source
                        else source.get("uri", "")
                    )
                    rows = json.loads(data.profile or "{}").get("num_rows", -1)
                    splits[data.name] = Lineage(data.name, where, rows, data.digest)
            if splits:
                logged[run.info.run_id] = splits
    return logged


def log_artifacts(uri: str, run_id: str, paths: list[Path], folder: str | None = None) -> None:
    run = Run(MlflowClient(tracking_uri=uri), run_id)
    for path in paths:
        run.log_artifact(path, folder)


def find_run(client: MlflowClient, run_id: str) -> mlflow.entities.Run | None:
    """The run, or None when the store does not hold it."""
    try:
        return client.get_run(run_id)
    except mlflow.exceptions.MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise


def run_exists(uri: str, run_id: str) -> bool:
    """Whether the store holds this run (an Optuna study may outlive the store it began in)."""
    return find_run(MlflowClient(tracking_uri=uri), run_id) is not None


def children(uri: str, parent_run_id: str) -> list:
    client = MlflowClient(tracking_uri=uri)
    parent = client.get_run(parent_run_id)
    return client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}'"
    )
