"""The trained model as an MLflow pyfunc model: logged from code (`mlflow_model.py`) with the
inference side of the package, so it loads where textclf is not installed; registered with an
alias, found and loaded back for `textclf predict` and `textclf evaluate`. Also
`log_run_folder` (`textclf log-model`): a run folder logged after its tracking server was away.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.entities import Metric, RunStatus
from mlflow.models import Model
from mlflow.tracking import MlflowClient

from ..run_folder import RunFolder, data_params
from .outage import TrackingError, Unreachable, first_line, is_unreachable
from .runs import Run, connect, find_run, sqlite_path

MODEL_TAG = "model_uri"  # set on runs that logged a pyfunc model: where to load it from
MODEL = "model"  # the logged model's name in its run
log = logging.getLogger(__name__)

EXAMPLE = ["A wonderful film, I loved every minute of it.", "A dull, pointless film."]
PACKAGE = Path(__file__).parents[1]  # textclf's own folder
MODEL_CODE = PACKAGE / "mlflow_model.py"  # builds the pyfunc from artifacts
# The inference side of the package, which the model carries as its `code_paths`: what
# `mlflow_model.py` imports, the modules of model.keras's registered layers (models/, tokenize,
# batching) and what those import; nothing of training, Hydra or tracking. Loading the model
# imports only these (tests/test_model_export.py; tests/test_structure.py checks they import
# nothing else of the package).
INFERENCE_CODE = (
    "__init__.py",
    "batching.py",
    "config.py",
    "data",
    "inference.py",
    "models",
    "progress.py",
    "run_folder.py",
    "tokenize.py",
)


def _requirements() -> list[str]:
    """Pinned from this environment; spares MLflow a slow subprocess that infers them."""
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in ("mlflow", "tensorflow", "keras", "pandas")]


def _inference_package(folder: Path) -> Path:
    """`folder/textclf`: the package's `INFERENCE_CODE` alone, to log as the model's code."""
    package = folder / PACKAGE.name
    package.mkdir()
    for name in INFERENCE_CODE:
        if (PACKAGE / name).is_dir():
            shutil.copytree(
                PACKAGE / name, package / name, ignore=shutil.ignore_patterns("__pycache__")
            )
        else:
            shutil.copy2(PACKAGE / name, package / name)
    return package


def log_model(
    run: Run, keras_path: str | Path, classes_path: str | Path, registered_model: str | None
) -> str:
    """Log the `.keras` model as the run's pyfunc `model`, with a signature, the package's
    inference side as its code and pinned requirements: enough to load and serve it in an
    environment made from its `requirements.txt` alone; with `registered_model`, also as that
    registered model's next version.

    `Model.log(run_id=...)` attaches it to the client's run without opening a fluent "active
    run" (whose end would mark the run FINISHED early); it takes the store and the experiment
    from the fluent globals, hence the two `set_` calls.
    """
    mlflow.set_tracking_uri(run.client.tracking_uri)
    mlflow.set_experiment(experiment_id=run.client.get_run(run.run_id).info.experiment_id)
    with tempfile.TemporaryDirectory() as staging:
        info = Model.log(
            artifact_path=None,
            flavor=mlflow.pyfunc,
            run_id=run.run_id,
            name=MODEL,
            python_model=str(MODEL_CODE),
            artifacts={"keras": str(keras_path), "classes": str(classes_path)},
            code_paths=[str(_inference_package(Path(staging)))],
            input_example=pd.DataFrame({"text": EXAMPLE}),
            pip_requirements=_requirements(),
            registered_model_name=registered_model,
        )
    uri = f"runs:/{run.run_id}/{MODEL}"
    run.set_tags({MODEL_TAG: uri, "logged_model_id": info.model_id})
    return uri


def log_run_folder(folder: RunFolder, uri: str | None = None) -> str:
    """Log a trained run folder whose tracking server was unreachable when training ended:
    the epoch metrics kept in its pending file, its metrics, the model and the run's files go
    to the MLflow run the folder names (or, if the store at `uri` does not hold it, a new run
    with the folder's saved name, tags and config as params), which then ends FINISHED. `uri`
    defaults to the run's own `tracking.uri`. Returns the run id; a run already FINISHED with
    its model is left as it is."""
    from ..config import flatten

    config = folder.read_json(RunFolder.CONFIG)
    uri = uri or config["tracking"]["uri"]
    client, experiment_id = connect(uri, config["tracking"]["experiment"])
    run_id = folder.run_id()
    found = find_run(client, run_id) if run_id else None  # None: not in this store
    has_model = found is not None and MODEL_TAG in found.data.tags
    if found and found.info.status == "FINISHED" and has_model:
        log.info("run %s is already FINISHED with its model: nothing to log", run_id)
        return found.info.run_id
    if found is None:
        name, saved_tags = folder.identity()
        run_id = client.create_run(experiment_id, run_name=name, tags=saved_tags).info.run_id
        params = {k: v for k, v in flatten(config).items() if k != "train.resume"}
        counted = (
            {}
            if folder.missing(RunFolder.DATA_REPORT)
            else data_params(folder.read_json(RunFolder.DATA_REPORT))
        )
        Run(client, run_id).log_params(params | counted)
        folder.save_run_id(run_id)
    else:
        run_id = found.info.run_id  # the folder's
    run = Run(client, run_id)
    pending = folder / RunFolder.PENDING
    try:
        if pending.is_file():
            run.pending = [Metric(**m) for m in folder.read_json(RunFolder.PENDING)]
            run.flush()
        run.log_metrics(folder.read_json(RunFolder.METRICS))
        if not has_model:
            log_model(run, folder.model, folder.classes, config["tracking"]["registered_model"])
        for path in folder.logged():
            run.log_artifact(path)
        if folder.plots.is_dir():
            run.log_artifact(folder.plots, RunFolder.PLOTS)
        client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))
    except Exception as error:
        if not is_unreachable(error):
            raise
        raise Unreachable(
            f"the MLflow tracking server {uri} became unreachable again; "
            f"run textclf log-model {folder.path} once it is back."
        ) from None
    pending.unlink(missing_ok=True)
    return run_id


def register_model(uri: str, model: str, name: str, alias: str) -> str:
    """The run's model `model` (runs:/<run id>/model) as a version of the registered model
    `name` (the version it already is there, else a new one) with `alias` pointing at it, so
    that `models:/<name>@<alias>` loads it; returns the version."""
    client = _existing_store(uri)
    run_id = model.removeprefix("runs:/").split("/")[0]
    mlflow.set_tracking_uri(uri)
    try:
        known = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
        version = (
            max(known, key=lambda v: int(v.version))
            if known
            else mlflow.register_model(model, name)
        ).version
        client.set_registered_model_alias(name, alias, version)
    except mlflow.exceptions.MlflowException as error:
        raise TrackingError(
            f"cannot register {model} as {name}@{alias} in {uri}: {first_line(error)}"
        ) from None
    loads = f"models:/{name}@{alias}"
    log.info(
        "%s is version %s of %s; alias %s points to it: %s", model, version, name, alias, loads
    )
    return str(version)


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


@contextlib.contextmanager
def _reading(uri: str, model: str, doing: str) -> Iterator[None]:
    """Read `model` from the store at `uri` (which holds its registered name and alias), with
    MLflow's many error types for a missing run, model or version as one TrackingError."""
    _registered(_existing_store(uri), model)
    mlflow.set_tracking_uri(uri)
    try:
        yield
    except Exception as error:
        raise TrackingError(
            f"cannot {doing} the model {model} from {uri}: "
            f"{type(error).__name__}: {first_line(error)}"
        ) from error


def load_model(uri: str, model: str):
    """`mlflow.pyfunc.load_model` on the store at `uri`, failing with one clear message."""
    with _reading(uri, model, "load"):
        return mlflow.pyfunc.load_model(model)


def model_files(uri: str, model: str, folder: Path) -> tuple[Path, Path, str | None]:
    """The `model.keras` and `classes.json` a logged model was built from, downloaded into
    `folder`, and the id of the run that logged it."""
    with _reading(uri, model, "download"):
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model, dst_path=str(folder)))
    wanted = (RunFolder.MODEL, RunFolder.CLASSES)
    files = {p.name: p for p in local.rglob("*") if p.name in wanted}
    if len(files) != 2:
        raise TrackingError(
            f"{model} in {uri} is not a textclf model (no {' and '.join(wanted)} "
            "among its artifacts)."
        )
    return files[RunFolder.MODEL], files[RunFolder.CLASSES], Model.load(local).run_id


def _existing_store(uri: str) -> MlflowClient:
    """A client on a store that exists: opening a missing SQLite file would create an empty one."""
    store = sqlite_path(uri)
    if store is not None and not store.is_file():
        raise TrackingError(
            f"no MLflow store at {uri}: train a model first (make train), or pass model_path=."
        )
    return MlflowClient(tracking_uri=uri)


def _registered(client: MlflowClient, model: str) -> None:
    """For `models:/<name>@<alias>` and `models:/<name>/<version>`: the registered model and
    the alias exist, or an error saying what the store holds and how to register one."""
    reference = model.removeprefix("models:/")
    if reference == model or not ("@" in reference or "/" in reference):
        return  # runs:/..., or models:/<logged model id>
    name, _, alias = (
        reference.partition("@") if "@" in reference else (reference.split("/")[0], "", "")
    )
    fix = f"make register RUN=<run id> NAME={name} ALIAS={alias or '<alias>'}"
    try:
        found = client.get_registered_model(name)
    except mlflow.exceptions.MlflowException as error:
        if error.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        names = [m.name for m in client.search_registered_models(max_results=20)]
        raise TrackingError(
            f"{model}: {client.tracking_uri} has no registered model {name!r} (registered: "
            f"{', '.join(names) or 'none'}); register a run's model: {fix}"
        ) from None
    if alias and alias not in found.aliases:
        aliases = ", ".join(f"{a} (version {v})" for a, v in sorted(found.aliases.items()))
        raise TrackingError(
            f"{model}: registered model {name!r} has no alias {alias!r} (its aliases: "
            f"{aliases or 'none'}); point it at a version: {fix}"
        )
