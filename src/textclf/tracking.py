"""The only module that talks to MLflow.

Runs are created and closed through `MlflowClient` (no global "active run"), so a failing job
ends its own run as FAILED (or KILLED on Ctrl-C/SIGTERM) and can never leave the next one
"already active". The default store is a SQLite file at an absolute path under the project's
`outputs/`, the same one `make ui` serves, wherever Hydra puts the job's working folder.
The trained Keras model is logged as an MLflow pyfunc model from code (`log_model`, with
`mlflow_model.py`) and loaded back for `textclf predict` (`model_uri`, `load_model`);
`mlflow models serve` serves the same model. A tracking server that goes away during a run costs
no trained work: MLflow's retries bridge a restart, `Run` keeps epoch metrics while it is away,
and `log_run_folder` (`textclf log-model`) logs a finished run folder later (docs/serving.md).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.models import Model
from mlflow.tracking import MlflowClient

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # logs stay readable
PARENT_TAG = "mlflow.parentRunId"
MODEL_TAG = "model_uri"  # set on runs that logged a pyfunc model: where to load it from
MODEL = "model"  # the logged model's name in its run
PENDING_FILE = "pending_metrics.json"  # in a run folder: epoch metrics a server never got
_BATCH = 100
log = logging.getLogger(__name__)


class TrackingError(RuntimeError):
    """The tracking store cannot be used; the message holds its URI."""


def _local_artifacts(uri: str) -> str | None:
    """Artifact root beside a local SQLite store; None lets a tracking server decide."""
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").as_uri()
    return None


def _server_problem(uri: str, timeout: float = 5.0) -> str | None:
    """None when the tracking server at `uri` answers /health (never behind a login), else why
    not; always None for a local store."""
    import urllib.request

    if not uri.startswith(("http://", "https://")):
        return None
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout) as reply:
            return None if reply.status == 200 else f"HTTP {reply.status}"
    except OSError as error:
        return str(getattr(error, "reason", error))


def _check_server(uri: str, timeout: float = 5.0) -> None:
    """A tracking server answers /health at once; MLflow's own client retries for minutes."""
    problem = _server_problem(uri, timeout)
    if problem:
        raise TrackingError(f"the MLflow tracking server {uri!r} is not reachable ({problem}). "
                            "Start it (make server) or fix tracking.uri.")


class Unreachable(TrackingError):
    """The tracking server stayed away longer than MLflow's HTTP retries wait."""


def _is_unreachable(error: BaseException) -> bool:
    """MLflow wraps a connection that failed after all its retries (refused, timed out, or
    503s from a proxy) in an MlflowException whose context is the `requests` error."""
    import requests

    lost = (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
            requests.exceptions.RetryError)
    seen: BaseException | None = error
    for _ in range(5):
        if seen is None:
            return False
        if isinstance(seen, lost):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def connect(uri: str, experiment: str) -> tuple[MlflowClient, str]:
    """A client and the experiment's id, created if needed; fails fast naming the URI."""
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    elif uri.startswith(("http://", "https://")):
        _check_server(uri)
    client = MlflowClient(tracking_uri=uri)
    try:
        found = client.get_experiment_by_name(experiment)
        if found is not None:
            return client, found.experiment_id
        return client, client.create_experiment(experiment, artifact_location=_local_artifacts(uri))
    except Exception as error:  # MLflow raises many types for an unusable store
        if "already exists" in str(error):  # created meanwhile by a parallel job
            return client, client.get_experiment_by_name(experiment).experiment_id
        raise TrackingError(
            f"cannot use the MLflow tracking store {uri!r}: "
            f"{type(error).__name__}: {str(error).splitlines()[0][:300]}. "
            "Check tracking.uri (or start the server it names)."
        ) from error


def git_commit(cwd: str | Path | None = None) -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class Run:
    """One MLflow run: params, metrics, tags and artifacts, through one client.

    Against a tracking server, MLflow's client retries each request for about 4 minutes
    (`MLFLOW_HTTP_REQUEST_MAX_RETRIES`, `MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR`), which bridges a
    restart. An epoch's metrics that still cannot be sent are kept in `pending` and training
    goes on; they go out with a later epoch's once the server answers /health again, or
    through `flush` / `or_later` when training ends.
    """

    def __init__(self, client: MlflowClient, run_id: str):
        self.client, self.run_id = client, run_id
        self.pending: list[Metric] = []

    def log_params(self, params: dict[str, Any]) -> None:
        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), _BATCH):
            self.client.log_batch(self.run_id, params=items[i : i + _BATCH])

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        self._send([Metric(k, float(v), int(_now_ms()), step) for k, v in metrics.items()])

    def _send(self, items: list[Metric]) -> None:
        # Sending a metric twice is harmless: the store drops an exact duplicate (same key,
        # value, step and timestamp), so a batch cut short by a lost server can be resent whole.
        for i in range(0, len(items), _BATCH):
            self.client.log_batch(self.run_id, metrics=items[i : i + _BATCH])

    def flush(self) -> None:
        """Send the epoch metrics kept while the server was away (with MLflow's retries)."""
        if self.pending:
            self._send(self.pending)
            log.info("sent %d metrics kept while the tracking server was away", len(self.pending))
            self.pending = []

    @contextlib.contextmanager
    def or_later(self, folder: Path) -> Iterator[None]:
        """The final logging of a trained run whose results are saved in `folder`: should the
        server be unreachable, the kept epoch metrics go to `folder` and one `Unreachable`
        error says how to log the folder once the server is back."""
        try:
            self.flush()
            yield
        except Exception as error:
            if not _is_unreachable(error):
                raise
            (folder / PENDING_FILE).write_text(json.dumps([m.to_dictionary()
                                                           for m in self.pending]))
            reason = _server_problem(self.client.tracking_uri) or str(error).splitlines()[0][:200]
            raise Unreachable(
                f"the MLflow tracking server {self.client.tracking_uri} is unreachable "
                f"({reason}). Training finished; the model and metrics are saved in {folder}. "
                f"Once the server is back, log them to run {self.run_id}: "
                f"textclf log-model {folder}") from None

    def set_tags(self, tags: dict[str, Any]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifact(self, path: str | Path, folder: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), folder)
        else:
            self.client.log_artifact(self.run_id, str(path), folder)

    def log_epoch(self, epoch: int, logs: dict | None) -> None:
        """Keras epoch logs (loss, accuracy, val_*) at step = epoch number from 1; kept for
        later, and training goes on, while the tracking server is unreachable."""
        items = [Metric(k, float(v), _now_ms(), epoch + 1)
                 for k, v in (logs or {}).items() if _is_number(v)]
        if self.pending and _server_problem(self.client.tracking_uri):
            self.pending += items  # still away: no second wait for MLflow's retries
            return
        try:
            self._send(self.pending + items)
        except Exception as error:
            if not _is_unreachable(error):
                raise
            if not self.pending:
                log.warning("the MLflow tracking server %s is unreachable: training goes on, "
                            "epoch metrics are kept and sent once it is back",
                            self.client.tracking_uri)
            self.pending += items
            return
        if self.pending:
            log.info("the tracking server is back: sent %d kept metrics", len(self.pending))
        self.pending = []


def _is_number(value: Any) -> bool:
    try:
        float(value)
        return True
    except (TypeError, ValueError):
        return False


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)


@contextlib.contextmanager
def start_run(
    uri: str,
    experiment: str,
    run_name: str | None = None,
    tags: dict[str, Any] | None = None,
    parent_run_id: str | None = None,
    run_id: str | None = None,
) -> Iterator[Run]:
    """Open (or, with `run_id`, reopen) a run; it ends FINISHED, FAILED or KILLED, never RUNNING
    (unless its tracking server is unreachable at the end: see `Run.or_later`)."""
    client, experiment_id = connect(uri, experiment)
    all_tags = dict(tags or {})
    if parent_run_id:
        all_tags[PARENT_TAG] = parent_run_id
    if run_id:
        client.update_run(run_id, status="RUNNING")
    else:
        run_id = client.create_run(
            experiment_id, run_name=run_name, tags={k: str(v) for k, v in all_tags.items()}
        ).info.run_id
    run = Run(client, run_id)
    try:
        yield run
    except (KeyboardInterrupt, SystemExit) as stop:
        _close(run, RunStatus.KILLED, f"interrupted ({type(stop).__name__})")
        raise
    except BaseException as error:
        _close(run, RunStatus.FAILED, f"{type(error).__name__}: {error}"[:5000])
        raise
    else:
        client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))


def _close(run: Run, status: int, error: str) -> None:
    """End a stopped run with an `error` tag; when its server is unreachable, leave it RUNNING
    rather than wait minutes for MLflow's retries and bury the error that stopped it."""
    if _server_problem(run.client.tracking_uri):
        return
    try:
        run.set_tags({"error": error})
        run.client.set_terminated(run.run_id, RunStatus.to_string(status))
    except Exception as lost:
        if not _is_unreachable(lost):
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
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        return pd.DataFrame()  # reading must not create a store
    found = MlflowClient(tracking_uri=uri).get_experiment_by_name(experiment)
    if found is None:
        return pd.DataFrame()
    mlflow.set_tracking_uri(uri)
    return mlflow.search_runs([found.experiment_id], max_results=10000)


def log_artifacts(uri: str, run_id: str, paths: list[Path], folder: str | None = None) -> None:
    run = Run(MlflowClient(tracking_uri=uri), run_id)
    for path in paths:
        run.log_artifact(path, folder)


def log_results(uri: str, run_id: str, params: dict[str, Any], metrics: dict[str, float]) -> None:
    """Params and metrics on an existing run (a search's parent: its best trial)."""
    run = Run(MlflowClient(tracking_uri=uri), run_id)
    run.log_params(params)
    run.log_metrics(metrics)


def children(uri: str, parent_run_id: str) -> list:
    client = MlflowClient(tracking_uri=uri)
    parent = client.get_run(parent_run_id)
    return client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}'"
    )


# --- the trained model as an MLflow pyfunc model ---------------------------------------------

EXAMPLE = ["A wonderful film, I loved every minute of it.", "A dull, pointless film."]
MODEL_CODE = Path(__file__).with_name("mlflow_model.py")  # builds the pyfunc from artifacts


def _requirements() -> list[str]:
    """Pinned from this environment; spares MLflow a slow subprocess that infers them."""
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in ("mlflow", "tensorflow", "keras", "pandas")]


def log_model(
    run: Run, keras_path: str | Path, classes_path: str | Path, registered_model: str | None
) -> str:
    """Log the `.keras` model as the run's pyfunc `model` from code (`mlflow_model.py`), with a
    signature from an input example.

    `Model.log(run_id=...)` attaches it to the client's run without opening a fluent "active
    run" (whose end would mark the run FINISHED early); it takes the store and the experiment
    from the fluent globals, hence the two `set_` calls. With `registered_model` it also
    becomes that registered model's next version.
    """
    mlflow.set_tracking_uri(run.client.tracking_uri)
    mlflow.set_experiment(experiment_id=run.client.get_run(run.run_id).info.experiment_id)
    info = Model.log(
        artifact_path=None,
        flavor=mlflow.pyfunc,
        run_id=run.run_id,
        name=MODEL,
        python_model=str(MODEL_CODE),
        artifacts={"keras": str(keras_path), "classes": str(classes_path)},
        input_example=pd.DataFrame({"text": EXAMPLE}),
        pip_requirements=_requirements(),
        registered_model_name=registered_model,
    )
    uri = f"runs:/{run.run_id}/{MODEL}"
    run.set_tags({MODEL_TAG: uri, "logged_model_id": info.model_id})
    return uri


def log_run_folder(folder: Path, run_id_file: str, uri: str | None = None) -> str:
    """Log a trained run folder whose tracking server was unreachable when training ended:
    the epoch metrics kept in `PENDING_FILE`, `metrics.json`, the model and the run's files go
    to the MLflow run named in `run_id_file` (or, if the store at `uri` does not hold it, a new
    run with the folder's config as params), which then ends FINISHED. `uri` defaults to the
    run's own `tracking.uri`. Returns the run id; a run already FINISHED with its model is left
    as it is."""
    from .config import flatten

    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    uri = uri or config["tracking"]["uri"]
    client, experiment_id = connect(uri, config["tracking"]["experiment"])
    saved = folder / run_id_file
    run_id = saved.read_text().strip() if saved.is_file() else None
    try:
        found = client.get_run(run_id) if run_id else None
    except mlflow.exceptions.MlflowException as error:
        if error.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        found = None  # not in this store
    tags = found.data.tags if found else None
    if found and found.info.status == "FINISHED" and MODEL_TAG in tags:
        log.info("run %s is already FINISHED with its model: nothing to log", run_id)
        return run_id
    if tags is None:
        names = (config["batching"]["strategy"], config["batching"]["padding_side"],
                 config["model"]["masking"])
        run_id = client.create_run(
            experiment_id, run_name=config["tracking"]["run_name"] or "-".join(names),
            tags={"batching": names[0], "padding_side": names[1], "masking": names[2],
                  "data": config["data"]["source"], "output_dir": str(folder)}).info.run_id
        Run(client, run_id).log_params(
            {k: v for k, v in flatten(config).items() if k != "train.resume"})
        saved.write_text(run_id)
    run = Run(client, run_id)
    pending = folder / PENDING_FILE
    try:
        if pending.is_file():
            run.pending = [Metric(**m) for m in json.loads(pending.read_text())]
            run.flush()
        run.log_metrics(json.loads((folder / "metrics.json").read_text(encoding="utf-8")))
        if MODEL_TAG not in (tags or {}):
            log_model(run, folder / "model.keras", folder / "classes.json",
                      config["tracking"]["registered_model"])
        for name in ("config.json", "vocabulary.txt", "metrics.json", "model.keras",
                     "classes.json"):
            if (folder / name).is_file():
                run.log_artifact(folder / name)
        if (folder / "plots").is_dir():
            run.log_artifact(folder / "plots", "plots")
        client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))
    except Exception as error:
        if not _is_unreachable(error):
            raise
        raise Unreachable(f"the MLflow tracking server {uri} became unreachable again; "
                          f"run textclf log-model {folder} once it is back.") from None
    pending.unlink(missing_ok=True)
    return run_id


def model_uri(
    uri: str,
    experiment: str,
    run_id: str | None = None,
    model_name: str | None = None,
    model_version: str | None = None,
) -> str:
    """The model URI a run id or registered name/version means; default the newest run's."""
    if model_name:
        return f"models:/{model_name}/{model_version or 'latest'}"
    if run_id:
        return f"runs:/{run_id}/{MODEL}"
    client = _existing_store(uri)
    found = client.get_experiment_by_name(experiment)
    runs = (
        client.search_runs(
            [found.experiment_id],
            filter_string=f"attributes.status = 'FINISHED' and tags.{MODEL_TAG} != ''",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if found
        else []
    )
    if not runs:
        raise TrackingError(
            f"experiment {experiment!r} in {uri} has no finished run with a logged model: "
            "train one (make train), or pass run_id=, model_name= or model_path=."
        )
    return runs[0].data.tags[MODEL_TAG]


def load_model(uri: str, model: str):
    """`mlflow.pyfunc.load_model` on the store at `uri`, failing with one clear message."""
    _existing_store(uri)
    mlflow.set_tracking_uri(uri)
    try:
        return mlflow.pyfunc.load_model(model)
    except Exception as error:  # MLflow raises many types for a missing run, model or version
        raise TrackingError(
            f"cannot load the model {model} from {uri}: "
            f"{type(error).__name__}: {str(error).strip().splitlines()[0][:300]}"
        ) from error


def model_files(uri: str, model: str, folder: Path) -> tuple[Path, Path, str | None]:
    """The `model.keras` and `classes.json` a logged model was built from, downloaded into
    `folder`, and the id of the run that logged it."""
    _existing_store(uri)
    mlflow.set_tracking_uri(uri)
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model, dst_path=str(folder)))
    except Exception as error:  # MLflow raises many types for a missing run, model or version
        raise TrackingError(
            f"cannot find the model {model} in {uri}: "
            f"{type(error).__name__}: {str(error).strip().splitlines()[0][:300]}"
        ) from error
    files = {p.name: p for p in local.rglob("*") if p.name in ("model.keras", "classes.json")}
    if len(files) != 2:
        raise TrackingError(f"{model} in {uri} is not a textclf model (no model.keras and "
                            "classes.json among its artifacts).")
    return files["model.keras"], files["classes.json"], Model.load(local).run_id


def _existing_store(uri: str) -> MlflowClient:
    """A client on a store that exists: opening a missing SQLite file would create an empty one."""
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise TrackingError(
            f"no MLflow store at {uri}: train a model first (make train), or pass model_path=."
        )
    return MlflowClient(tracking_uri=uri)
