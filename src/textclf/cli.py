"""Entry points: `textclf <command> [hydra overrides]`, one Hydra app per command, listed with
its primary config in `COMMANDS`, and `textclf log-model <run folder>`. The study commands'
apps live in `studies/commands.py`, imported only when one runs.

Only the entry points (this module, `studies/commands.py` and the sweep callback) read Hydra's
DictConfig: they validate it into typed objects and hand plain values down.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import hydra
from hydra.conf import HydraConf
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from . import resume
from .config import (
    SCHEMAS,
    Config,
    ConfigError,
    EvaluateModelConfig,
    PredictConfig,
    RegisterConfig,
    flatten,
    structured,
    to_object,
)
from .run_folder import RunFolder, ensure_writable

log = logging.getLogger("textclf")
CONF_DIR = Path(__file__).with_name("conf")  # shipped with the package (pip install . finds it)


def project_root() -> Path:
    """Where `outputs/` (runs, sweeps, the MLflow store) lives: $TEXTCLF_ROOT, else the nearest
    folder from the working directory up that holds a pyproject.toml (a checkout or a fork),
    else the working directory."""
    if os.environ.get("TEXTCLF_ROOT"):
        return Path(os.environ["TEXTCLF_ROOT"]).resolve()
    here = Path.cwd().resolve()
    return next((p for p in (here, *here.parents) if (p / "pyproject.toml").is_file()), here)


ROOT = project_root()
OmegaConf.register_new_resolver("root", lambda: str(ROOT), replace=True)
SHORT_NAME = 120  # characters of a sweep job's folder name; file systems allow 255 bytes


def short_name(name: str) -> str:
    """A folder name of at most SHORT_NAME characters: a sweep job's overrides as they are
    (a `/` in a value, as in a path, becomes `_`), or when many make them too long, their
    beginning and a hash of the whole."""
    name = name.replace("/", "_")
    if len(name.encode()) <= SHORT_NAME:
        return name
    digest = hashlib.sha1(name.encode()).hexdigest()[:10]
    return name.encode()[: SHORT_NAME - 11].decode(errors="ignore") + "~" + digest


OmegaConf.register_new_resolver("short", short_name, replace=True)


def register_schemas(with_models: bool = False) -> None:
    """Hydra's ConfigStore gets the typed schemas `conf/*.yaml` start from: config.py's
    `SCHEMAS`, each data source's config as `data/<source>_schema` and, `with_models`, each
    model's as `model/<name>_schema`. Only the entry point registers them, so the rest stays
    free of Hydra (the logged MLflow model carries it); the models import TensorFlow, which
    only training and bench need."""
    from . import data

    store = ConfigStore.instance()
    for name, source in data.REGISTRY.items():
        store.store(group="data", name=f"{name}_schema", node=source.config)
    for name, schema in SCHEMAS.items():
        store.store(name=name, node=schema)
    if with_models:
        from . import batching, models  # noqa: F401  (batching: registers its strategies)

        for name, model in models.REGISTRY.items():
            store.store(group="model", name=f"{name}_schema", node=model.config)


register_schemas()


# What TensorFlow's C++ runtime prints on every CPU-only start, before its log level applies
# (TF_CPP_MIN_LOG_LEVEL cannot reach it): not a problem, and it buries real messages.
_PROBE_NOISE = re.compile(
    r"absl::InitializeLog|cudart_stub\.cc.*Could not find cuda drivers|failed call to cuInit"
    r"|oneDNN custom operations are on|cpu_feature_guard|^To enable the following instructions"
    r"|oneDNN supports DT_BOOL only on platforms with AVX-512"
)


def _quiet_cuda_probe() -> None:
    """Route this process's stderr (fd 2) through a filter that drops `_PROBE_NOISE` lines
    and passes everything else; it is flushed at exit."""
    import atexit
    import threading

    original = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def forward() -> None:
        with os.fdopen(read_end, "rb") as pipe:
            for line in pipe:
                if not _PROBE_NOISE.search(line.decode(errors="replace")):
                    os.write(original, line)

    thread = threading.Thread(target=forward, name="stderr-filter", daemon=True)
    thread.start()

    def flush() -> None:
        sys.stderr.flush()
        os.dup2(original, 2)  # closes the pipe's last write end: the thread drains and ends
        thread.join(timeout=5)

    atexit.register(flush)


def _user_errors() -> tuple[type[BaseException], ...]:
    from .data import DataError
    from .inference import PredictError
    from .tracking import TrackingError
    from .train import CheckpointMismatch

    return ConfigError, DataError, TrackingError, PredictError, CheckpointMismatch


def _fail_clearly(error: BaseException) -> NoReturn:
    """A mistake of the user's: one clear message, no traceback (unless HYDRA_FULL_ERROR=1)."""
    log.error("%s: %s", type(error).__name__, error)
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise error
    raise SystemExit(2) from None


def task_wrapper(command: Callable[[DictConfig], object]) -> Callable[[DictConfig], object]:
    """Every command's error handling (as lightning-hydra-template's `task_wrapper`): a mistake
    of the user's ends it with one clear message and exit code 2, anything else as raised. In a
    sweep the error goes on to the sweeper."""

    @functools.wraps(command)
    def wrapped(cfg: DictConfig) -> object:
        try:
            return command(cfg)
        except _user_errors() as error:
            if HydraConfig.get().mode == RunMode.MULTIRUN:
                raise
            _fail_clearly(error)

    return wrapped


def _interrupt(signum: int, frame: object) -> None:
    from .train import StopRequest

    reason = f"signal {signal.Signals(signum).name}"
    StopRequest.request(reason)  # in case this exception is lost (see StopRequest)
    raise KeyboardInterrupt(reason)


def stop_on_signals() -> None:
    """Ctrl-C and SIGTERM (a scheduler, `kill`) end the MLflow run as KILLED."""
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)


@task_wrapper
def train(cfg: DictConfig) -> float:
    """One training run (or one job of a sweep); returns `optimized_metric` (a validation
    metric) for sweepers. A failed sweep job is already its FAILED run: the sweep goes on."""
    stop_on_signals()
    hydra_cfg = HydraConfig.get()
    if cfg.get("tune") is not None:
        raise ConfigError(
            "hparams_search: a search runs with `textclf tune` (make tune), not `textclf train`"
        )
    try:
        return _train(cfg, hydra_cfg)
    except Exception as error:
        if hydra_cfg.mode != RunMode.MULTIRUN:
            raise
        log.exception("job failed: %s: %s", type(error).__name__, error)
        return float("nan")


def choice_tags(hydra_cfg: HydraConf, command: str) -> dict[str, str]:
    """A run's config-group choices as `choice.<group>` tags (what `make compare` groups by),
    and MLflow's source tags: the `textclf` command and the commit it ran."""
    from . import tracking

    tags = {
        f"choice.{k}": v
        for k, v in hydra_cfg.runtime.choices.items()
        if not k.startswith("hydra") and v is not None
    }
    return tags | tracking.source_tags(f"textclf {command}", ROOT)


def run_params(cfg: DictConfig) -> dict[str, str]:
    """A training run's MLflow params: what is trained, not how (bench, tune, resume)."""
    return {
        k: v
        for k, v in flatten(cfg).items()
        if k.split(".")[0] not in ("bench", "tune") and k != "train.resume"
    }


def _train(cfg: DictConfig, hydra_cfg: HydraConf) -> float:
    from . import pipeline, sweep

    config = to_object(cfg)
    tags = choice_tags(hydra_cfg, "train")
    params = run_params(cfg)
    if config.train.resume and sweep.parent_run_id():  # a resumed sweep (resume.py)
        if (done := sweep.finished_before(config)) is not None:
            log.info("job already FINISHED in %s; skipped", config.output_dir)
            return done[f"best_{config.optimized_metric}"]
        config = sweep.resumable(config)
    metrics = pipeline.run(config, params, tags, sweep.parent_run_id())
    if hydra_cfg.mode != RunMode.MULTIRUN:  # a sweep's jobs end with the sweep's summary
        log.info("%s", summary(config, metrics))
    return metrics[f"best_{config.optimized_metric}"]


def project_store() -> str:
    """The MLflow store `make ui` serves (conf/tracking/sqlite.yaml's)."""
    from . import tracking

    return tracking.sqlite_uri(ROOT / "outputs" / "mlflow.db")


def where_to_look(uri: str, link: str) -> str:
    """How to open `link`: `make ui` serves the project's store, `mlflow ui` another file."""
    from . import tracking

    if uri == project_store():
        return f"make ui, then {link}"
    if tracking.sqlite_path(uri) is not None:
        return f"mlflow ui --backend-store-uri {uri}, then {link}"
    return link


def summary(config: Config, metrics: dict[str, float]) -> str:
    """A training run's last lines: how it scored, where it went, and what to run next."""
    from . import tracking

    uri, experiment = config.tracking.uri, config.tracking.experiment
    run_id = RunFolder(Path(config.output_dir)).run_id()
    try:
        _, experiment_id = tracking.connect(uri, experiment)
        see = where_to_look(uri, tracking.ui_link(uri, experiment_id, run_id))
    except tracking.TrackingError as error:  # the server went away since the run ended
        see = str(error)
    served = metrics.get("served_accuracy", float("nan"))
    store = "" if uri == project_store() else f" tracking.uri={uri}"
    return "\n".join(
        [
            f"done: test accuracy {metrics['test_accuracy']:.4f}, served one review at a time "
            f"{served:.4f}",
            f"  run folder  {config.output_dir}",
            f"  MLflow run  {run_id} in experiment {experiment!r} ({uri})",
            f"  see it      {see}",
            f"  use it      make predict ARGS='run_id={run_id}{store} text=\"a fine film\"'",
        ]
    )


@task_wrapper
def predict(cfg: DictConfig) -> None:
    from . import predict as classify

    classify.run(structured(cfg, PredictConfig))


@task_wrapper
def register(cfg: DictConfig) -> None:
    """A run's model (default: the newest run's) as a registered version with an alias."""
    from . import tracking

    config = structured(cfg, RegisterConfig)
    assert config.name and config.alias  # RegisterConfig refuses a config without them
    model = tracking.model_uri(config.tracking.uri, config.tracking.experiment, config.run_id)
    tracking.register_model(config.tracking.uri, model, config.name, config.alias)


@task_wrapper
def evaluate(cfg: DictConfig) -> None:
    from . import evaluate_model

    evaluate_model.run(structured(cfg, EvaluateModelConfig))


def _quote_text(arg: str) -> str:
    """`text=a review, with commas` (the shell ate the quotes) → one Hydra-quoted string.

    A value already quoted or a list (`text=[a,b]`) is left to Hydra.
    """
    if not arg.startswith("text=") or arg[5:6] in ("'", '"', "["):
        return arg
    value = re.sub(r"(\\+)(?='|$)", lambda m: m.group(1) * 2, arg[5:])
    return "text='" + value.replace("'", "\\'").replace("${", "\\${") + "'"


def log_model(args: list[str]) -> None:
    """`textclf log-model <run folder> [tracking.uri=<uri>]`: log a trained run folder to MLflow
    after its tracking server was unreachable when training ended (see `Run.or_later`)."""
    from . import tracking

    logging.basicConfig(
        level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"
    )
    uris = [a.removeprefix("tracking.uri=") for a in args[1:] if a.startswith("tracking.uri=")]
    if not args or "=" in args[0] or len(uris) != len(args) - 1:
        raise SystemExit("usage: textclf log-model <run folder> [tracking.uri=<uri>]")
    folder = RunFolder(Path(args[0]).resolve())
    missing = folder.missing(
        RunFolder.CONFIG, RunFolder.IDENTITY, RunFolder.METRICS, RunFolder.MODEL, RunFolder.CLASSES
    )
    if missing:
        raise SystemExit(
            f"textclf log-model: {folder.path} holds no trained run (no "
            f"{', '.join(missing)}); only a run that finished training can be logged."
        )
    try:
        run_id = tracking.log_run_folder(folder, uris[-1] if uris else None)
    except tracking.TrackingError as error:
        _fail_clearly(error)
    log.info("logged %s to MLflow run %s (FINISHED)", folder.path, run_id)


USAGE = """usage: textclf {commands} [hydra overrides]
  e.g. textclf train data=aclimdb data.path=aclImdb.tar.gz model.units=128
  textclf resume [run folder]   continues an interrupted run (default: the newest)
  textclf resume <sweep folder>   reruns the jobs of a sweep that did not finish
  textclf tune [hparams_search=<file>]   an Optuna search; again, it continues the study
  textclf baseline data=...   the reference (TF-IDF + logistic regression) on a run's split
  textclf register run_id=<id> name=<model> alias=champion   loads as models:/<model>@champion
  textclf log-model <run folder>   logs a trained run whose tracking server was away
  textclf train --help   lists the config groups and their options"""


def _check_output_folders(overrides: list[str]) -> None:
    """Hydra creates the run or sweep folder before any of our code runs, and a folder it
    cannot create ends in its own traceback: check the folders named on the command line (or
    the default outputs/) first, and say which one and what to do."""
    named = [
        a.split("=", 1)[1]
        for a in overrides
        if a.startswith(("hydra.run.dir=", "hydra.sweep.dir="))
    ]
    for folder in map(Path, named or [str(ROOT / "outputs")]):
        try:
            ensure_writable(folder)
        except OSError as error:
            log.error(
                "textclf: cannot create or write the output folder %s (%s); give one "
                "you can write: hydra.run.dir=<folder> (hydra.sweep.dir=<folder> for a "
                "sweep), or TEXTCLF_ROOT=<project folder>",
                folder,
                error.strerror or error,
            )
            raise SystemExit(2) from None


def usage_error(message: str) -> NoReturn:
    print(f"textclf: {message}", file=sys.stderr)
    raise SystemExit(2)


App = Callable[[DictConfig], object]  # a Hydra app: the task `hydra.main` runs
KILLED = (
    " Its MLflow run is KILLED; `make resume` (textclf resume) continues it from the last"
    " completed epoch."
)


@dataclass(frozen=True)
class Command:
    """A `textclf <name>`: the Hydra app that runs it, the primary config it composes, and what
    `main` does before and after."""

    config: str  # conf/<config>.yaml
    app: App | None = None  # None: `prepare` gives it
    # the command line as Hydra is to read it, and the app to run
    prepare: Callable[[list[str]], tuple[list[str], App]] | None = None
    models: bool = False  # registers the models' schemas (`model=<name>`; imports TensorFlow)
    outputs: bool = False  # writes under outputs/: its folder is checked before Hydra starts
    interrupted: str = ""  # what the message after Ctrl-C or SIGTERM adds

    def arguments(self, args: list[str]) -> tuple[list[str], App]:
        if self.prepare is not None:
            return self.prepare(args)
        assert self.app is not None
        return args, self.app


def _no_search(command: str, args: list[str]) -> None:
    if any(a.startswith("hparams_search=") for a in args):
        usage_error(
            f"hparams_search: a search runs with `textclf tune` (make tune), not "
            f"`textclf {command}`"
        )


def _train_args(args: list[str]) -> tuple[list[str], App]:
    _no_search("train", args)
    return args, train


def _resume_args(args: list[str]) -> tuple[list[str], App]:
    args = resume.arguments(args, ROOT / "outputs")
    _no_search("resume", args)
    return args, train


def _study(name: str, args: list[str]) -> tuple[list[str], App]:
    """A study's command: its Hydra app and schema come from `studies/`, imported only now."""
    from .studies import commands

    return commands.arguments(name, args)


def _predict_args(args: list[str]) -> tuple[list[str], App]:
    return [_quote_text(a) for a in args], predict


COMMANDS: dict[str, Command] = {
    "train": Command("config", None, _train_args, models=True, outputs=True, interrupted=KILLED),
    "resume": Command("config", None, _resume_args, models=True, outputs=True, interrupted=KILLED),
    "tune": Command(
        "config",
        None,
        functools.partial(_study, "tune"),
        models=True,
        outputs=True,
        interrupted=(
            " The trial it trained is FAIL in the study and its run KILLED; `make tune`"
            " (textclf tune) again continues the study."
        ),
    ),
    "baseline": Command("baseline", None, functools.partial(_study, "baseline")),
    "compare": Command("compare", None, functools.partial(_study, "compare")),
    "predict": Command("predict", None, _predict_args),
    "evaluate": Command("evaluate_model", evaluate, outputs=True),
    "register": Command("register", register),
    "bench": Command("bench", None, functools.partial(_study, "bench"), models=True, outputs=True),
}


def main() -> None:
    args = sys.argv[1:]
    if not args or args[0] not in [*COMMANDS, "log-model"]:
        print(USAGE.format(commands="{" + ",".join([*COMMANDS, "log-model"]) + "}"))
        raise SystemExit(0 if args and args[0] in ("-h", "--help") else 2)
    if os.environ.get("TEXTCLF_KEEP_STDERR") != "1":
        _quiet_cuda_probe()
    if args[0] == "log-model":
        return log_model(args[1:])
    name, command = args[0], COMMANDS[args[0]]
    rest, app = command.arguments(["bench.quick=true" if a == "--quick" else a for a in args[1:]])
    if command.models:
        register_schemas(with_models=True)
    if command.outputs:
        _check_output_folders(rest)
    sys.argv = [f"textclf-{name}", *rest]
    try:
        hydra.main(config_path=str(CONF_DIR), config_name=command.config, version_base="1.3")(app)()
    except KeyboardInterrupt as stop:  # Ctrl-C or SIGTERM: a message, not a traceback
        print(
            f"textclf {name}: interrupted ({stop or 'Ctrl-C'}).{command.interrupted}",
            file=sys.stderr,
        )
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
