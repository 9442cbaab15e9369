"""Shared fixtures: tiny data the tests write themselves, and the project's real config."""

from __future__ import annotations

import csv
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from textclf import models
from textclf.batching import padded
from textclf.cli import CONF_DIR, ROOT, register_schemas
from textclf.config import (
    Config,
    TrainConfig,
    flatten,
    to_object,
)
from textclf.models.lstm import LstmConfig
from textclf.studies.config import BaselineConfig

register_schemas(with_models=True)  # as `textclf train` does: conf/model/*.yaml start from them

ARCHIVE = ROOT.parent / "shared" / "data" / "aclImdb_labeled.tar.gz"

GOOD = [
    "a wonderful film",
    "great acting and a lovely story",
    "i loved every minute of it",
    "brilliant, moving and funny",
    "superb direction and a fine cast",
    "a joy to watch",
]
BAD = [
    "a terrible film",
    "awful acting and a dull story",
    "i hated every minute of it",
    "boring, slow and pointless",
    "weak direction and a bad cast",
    "a chore to sit through",
]


def review(positive: bool, rng: random.Random) -> str:
    """A few phrases of one polarity, of varied length, with an HTML break now and then."""
    parts = [rng.choice(GOOD if positive else BAD) for _ in range(rng.randint(1, 8))]
    return (" <br /> " if rng.random() < 0.2 else ". ").join(parts)


def reviews(n: int, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    return [
        (f"{review(i % 2 == 1, rng)} (review {i})", "pos" if i % 2 else "neg") for i in range(n)
    ]


def write_csv(path: Path, rows: list[tuple[str, object]], header=("text", "label")) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def small_model(**kw) -> LstmConfig:
    """A one-direction LSTM alone, without dropout unless asked: small, deterministic test
    models."""
    return LstmConfig(**{"bidirectional": False, "dropout": 0.0, "ngram_branch": False} | kw)


def build_lstm(vocab_size: int, num_classes: int, cfg: LstmConfig, padding_side: str = "post"):
    """The LSTM classifier `cfg` describes, for ids below `vocab_size` padded on `padding_side`."""
    return models.build(cfg, models.ModelInputs(vocab_size, num_classes, padded(padding_side)))


def quiet_training(**kw) -> TrainConfig:
    """Training settings for in-process tests: no progress output."""
    return TrainConfig(**{"verbose": 0} | kw)


@pytest.fixture
def tiny_csv(tmp_path: Path) -> Path:
    return write_csv(tmp_path / "reviews.csv", reviews(240))


def compose_config(overrides: list[str], tmp_path: Path) -> Config:
    """The real config, shrunk: outputs and the MLflow store inside `tmp_path`."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            "config",
            overrides=[
                f"output_dir={tmp_path / 'run'}",
                f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
                "train.verbose=0",
                *overrides,
            ],
        )
    return cfg


def run_pipeline(cfg: Config) -> dict[str, float]:
    """`pipeline.run` as the entry point calls it, with the config's own values as its params."""
    from textclf import pipeline

    return pipeline.run(cfg, flatten(asdict(cfg)), {})


def trained_once(tmp_path_factory, empty_store: Path, *overrides: str, rows: int = 240):
    """One run on `rows` tiny reviews, shared by a module's tests: its config, metrics, store,
    folder and MLflow run. System metrics are sampled every second (MLflow's default is 10 s),
    so that a run of seconds has some when tracking.system_metrics is on."""
    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.mktemp("run")
    shutil.copyfile(empty_store, root / "mlflow.db")
    data = write_csv(root / "r.csv", reviews(rows))
    cfg = to_object(compose_config(["data=csv", f"data.path={data}", *overrides], root))
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")
        metrics = run_pipeline(cfg)
    client = MlflowClient(cfg.tracking.uri)
    [run] = client.search_runs([client.get_experiment_by_name("textclf").experiment_id])
    return SimpleNamespace(
        cfg=cfg, metrics=metrics, client=client, run=run, out=Path(cfg.output_dir), root=root
    )


def compose_baseline(overrides: list[str], tmp_path: Path) -> BaselineConfig:
    """`textclf baseline`'s real config: outputs and the MLflow store inside `tmp_path`."""
    from textclf.studies import commands

    commands.register_schemas()  # as `textclf baseline` does
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            "baseline",
            overrides=[
                f"output_dir={tmp_path / 'baseline'}",
                f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
                *overrides,
            ],
        )
    return OmegaConf.to_object(cfg)


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory) -> Path:
    """An MLflow SQLite store with its schema made, once: creating one takes seconds."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("store") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def make_config(tmp_path: Path, empty_store: Path):
    """The real config, shrunk (compose_config), its MLflow store a copy of `empty_store`."""

    def make(*overrides: str) -> Config:
        if not (tmp_path / "mlflow.db").exists():
            shutil.copyfile(empty_store, tmp_path / "mlflow.db")
        return to_object(compose_config(list(overrides), tmp_path))

    return make


@pytest.fixture
def archive() -> Path:
    if not ARCHIVE.exists():
        pytest.skip(f"the real IMDB archive is not at {ARCHIVE} (shared/ beside the checkout)")
    return ARCHIVE


def textclf(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`textclf *args` in a fresh process: for what needs one (signals, determinism across
    processes, the environment a process starts with, and joblib's `parallel` launcher, whose
    workers inherit the starting process's sys.path: in a test process that has loaded an
    MLflow model, the model's copy of the package comes first, without textclf.sweep)."""
    return subprocess.run(
        [sys.executable, "-m", "textclf.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )


def textclf_here(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`textclf *args` through the same `cli.main()` in this process, as if started in `cwd`:
    its exit code and its Python-level stdout and stderr (logging included), without the
    15-20 s a fresh process spends importing TensorFlow and MLflow. Hydra's, the signal
    handlers', the working directory's and the logging state are put back afterwards."""
    import contextlib
    import io
    import logging

    from hydra.core.global_hydra import GlobalHydra

    from textclf import cli

    out, err = io.StringIO(), io.StringIO()
    on_signal = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    root_logger = logging.getLogger()
    logging_state = (root_logger.handlers[:], root_logger.level)
    # Handlers already writing to this process's stdout/stderr (absl's, TensorFlow's) write to
    # the captured streams meanwhile: Hydra's logging setup closes every handler, and absl's
    # handler then closes its stream unless it is the sys.stderr of that moment.
    streams = {id(sys.stdout): out, id(sys.stderr): err}
    loggers = [root_logger, *logging.root.manager.loggerDict.values()]
    handlers = [h for logger in loggers for h in getattr(logger, "handlers", ())]
    if "absl.logging" in sys.modules:  # its stream handler sits inside a handler of its own
        handlers.append(sys.modules["absl.logging"].get_absl_handler().python_handler)
    moved = {
        h: h.stream
        for h in handlers
        if isinstance(h, logging.StreamHandler) and id(h.stream) in streams
    }
    code = 0
    GlobalHydra.instance().clear()
    with pytest.MonkeyPatch.context() as patch:
        try:
            for handler, stream in moved.items():
                handler.setStream(streams[id(stream)])
            root_logger.handlers[:] = []  # as in a fresh process: what logs before Hydra's
            # setup reaches stderr through logging's last resort, not pytest's capture
            patch.chdir(cwd)
            patch.setenv("TEXTCLF_KEEP_STDERR", "1")  # no fd-2 filter thread in this process
            patch.setattr(sys, "path", sys.path[:])  # a loaded MLflow model prepends its code
            patch.setattr(sys, "argv", ["textclf", *args])
            patch.setattr(cli, "ROOT", cli.project_root())  # what a process in `cwd` finds
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                try:
                    cli.main()
                except SystemExit as stop:
                    if isinstance(stop.code, str):  # as the interpreter does: message, code 1
                        print(stop.code, file=sys.stderr)
                    code = stop.code if isinstance(stop.code, int) else int(stop.code is not None)
        finally:
            GlobalHydra.instance().clear()
            for sig, handler in on_signal.items():
                signal.signal(sig, handler)
            for handler in root_logger.handlers:
                if handler not in logging_state[0]:
                    handler.close()
            root_logger.handlers[:], root_logger.level = logging_state
            for handler, stream in moved.items():
                handler.setStream(stream)
    return subprocess.CompletedProcess(["textclf", *args], code, out.getvalue(), err.getvalue())


# `textclf` with a signal sent to itself as epoch `epoch` (counted from 0) begins, so that the
# checkpoint of the epochs before it is on disk: an interruption at a known point, not a race.
# With a job number, only that job of a sweep; SIGKILL goes to the whole process group.
SIGNAL_AT_EPOCH = """
import os, signal, sys
from hydra.core.hydra_config import HydraConfig
from textclf import cli, train
epoch_at, how, job = int(sys.argv[1]), getattr(signal, sys.argv[2]), sys.argv[3]
def on_epoch_begin(self, epoch, logs=None):
    if epoch == epoch_at and (job == "-" or str(HydraConfig.get().job.num) == job):
        os.killpg(0, how) if how == signal.SIGKILL else os.kill(os.getpid(), how)
train.StopRequest.on_epoch_begin = on_epoch_begin
sys.argv = ["textclf", *sys.argv[4:]]
cli.main()
"""


def signalled_at_epoch(
    epoch: int,
    how: signal.Signals,
    *args: str,
    cwd: Path,
    job: int | None = None,
    log: Path | None = None,
) -> subprocess.Popen:
    """`textclf *args` in its own process group, sent `how` as epoch `epoch` begins (see
    SIGNAL_AT_EPOCH); its output goes to `log`, else to a pipe."""
    sink = log.open("w") if log else subprocess.PIPE
    try:
        return subprocess.Popen(
            [
                sys.executable,
                "-c",
                SIGNAL_AT_EPOCH,
                str(epoch),
                how.name,
                "-" if job is None else str(job),
                *args,
            ],
            cwd=cwd,
            stdout=sink,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
    finally:
        if log:
            sink.close()


def quick(tmp_path: Path) -> list[str]:
    """`textclf train` overrides for the end-to-end tests: a small one-direction LSTM alone, no
    plots and no system metrics. What those parts add is tested in-process (test_pipeline.py,
    test_bow.py); a test that needs one of them turns it back on."""
    return [
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
        "train.epochs=3",
        "train.learning_rate=0.01",
        "model.units=8",
        "model.embedding_dim=16",
        "model.bidirectional=false",
        "model.ngram_branch=false",
        "tokenize.vocab_size=200",
        "batching.batch_size=16",
        "train.verbose=0",
        "evaluate.plots=false",
        "tracking.system_metrics=false",
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    """A real `mlflow server` on a free loopback port, SQLite backend, local artifacts."""
    server = tracking_server(tmp_path).start()
    try:
        yield server.url
    finally:
        server.stop()


# --- long-running services (tests/test_serving.py, tests/test_team_server.py) ---------------


def pytest_addoption(parser):
    parser.addoption(
        "--serve-model",
        default=None,
        metavar="URI",
        help="tests/test_serving.py's load test: serve this model (runs:/<id>/model or "
        "models:/<name>@<alias>, from $MLFLOW_TRACKING_URI or the project's store) "
        "instead of the tiny model it trains",
    )


def venv_env(**extra: str) -> dict[str, str]:
    """This environment with the venv's bin/ first on PATH (`mlflow` starts `uvicorn` by name)."""
    bin_dir = Path(sys.executable).parent
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", **extra}


class Service:
    """A server process in its own session (its workers go down with it), its output appended to
    `log`; `start` returns once `url + ready` answers 200, and a service can be stopped and
    started again with the same command, port and store."""

    def __init__(
        self,
        command: list[str],
        url: str,
        log: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        ready: str = "/health",
    ):
        self.command, self.url, self.log, self.ready = command, url, log, ready
        self.env, self.cwd = env or venv_env(), cwd
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 240) -> Service:
        with self.log.open("a") as sink:
            self.process = subprocess.Popen(
                self.command,
                cwd=self.cwd,
                env=self.env,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(self.url + self.ready, timeout=5) as reply:
                    if reply.status == 200:
                        return self
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"{self.command[:4]} did not come up on {self.url}:\n"
                    f"{self.log.read_text(errors='replace')[-3000:]}"
                )
            time.sleep(0.5)

    def stop(self) -> None:
        import signal

        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        except ProcessLookupError:  # the whole group has exited already
            self.process.wait()
        self.process = None


def tracking_server(folder: Path, port: int | None = None) -> Service:
    """`mlflow server` on a loopback port, its SQLite store and artifacts in `folder`."""
    port = port or free_port()
    command = [
        str(Path(sys.executable).parent / "mlflow"),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--backend-store-uri",
        f"sqlite:///{folder / 'server.db'}",
        "--artifacts-destination",
        str(folder / "server-artifacts"),
        "--workers",
        "1",
    ]
    return Service(command, f"http://127.0.0.1:{port}", folder / "server.log")
