"""A shared tracking server: runs survive its restarts, a longer outage loses no trained model
(`textclf log-model` logs it later), and `make server AUTH=1` lets in only its users."""

from __future__ import annotations

import base64
import json
import re
import secrets
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException
from mlflow.server import get_app_client
from mlflow.tracking import MlflowClient

from textclf import tracking
from textclf.cli import ROOT
from textclf.run_folder import RunFolder

from .conftest import (
    Service,
    free_port,
    quick,
    reviews,
    textclf_here,
    tracking_server,
    venv_env,
    write_csv,
)

EPOCHS = 6
RETRY_SETTINGS = (
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER",
    "MLFLOW_HTTP_REQUEST_TIMEOUT",
)


class Training:
    """`textclf train` in the background; its output lines as they come."""

    def __init__(self, tmp: Path, uri: str, *extra: str, env: dict[str, str]):
        data = write_csv(tmp / "reviews.csv", reviews(800))
        self.folder = tmp / "run"
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "textclf.cli",
                "train",
                "data=csv",
                f"data.path={data}",
                f"hydra.run.dir={self.folder}",
                *quick(tmp),
                f"tracking.uri={uri}",
                f"train.epochs={EPOCHS}",
                f"train.patience={EPOCHS}",
                "train.verbose=2",
                *extra,
            ],
            cwd=tmp,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = 400, count: int = 1) -> None:
        """Until `count` lines match `pattern`; fails if training ends first or after
        `timeout`."""
        found = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._changed:
            while sum(bool(found.search(line)) for line in self.lines) < count:
                if not self._reader.is_alive() or time.monotonic() > deadline:
                    pytest.fail(
                        f"no line matching {pattern!r} in the training output:\n"
                        f"{self.output[-4000:]}"
                    )
                self._changed.wait(timeout=1)

    def wait(self, timeout: float = 600) -> int:
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            pytest.fail(f"training did not end in {timeout} s:\n{self.output[-4000:]}")
        self._reader.join(timeout=30)
        return code


def env_with(**settings: str) -> dict[str, str]:
    """The venv's environment with MLflow's HTTP retry settings at their defaults unless given."""
    return {
        k: v for k, v in venv_env(**settings).items() if k not in RETRY_SETTINGS or k in settings
    }


def the_run(uri: str):
    client = MlflowClient(uri)
    [run] = client.search_runs([client.get_experiment_by_name("textclf").experiment_id])
    return client, run


def assert_complete(uri: str, run_id: str) -> None:
    """FINISHED, val_loss at every epoch, final metrics and a model that loads and predicts."""
    client = MlflowClient(uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    steps = sorted(m.step for m in client.get_metric_history(run_id, "val_loss"))
    assert steps == list(range(1, EPOCHS + 1))
    assert {"test_accuracy", "served_agreement"} <= run.data.metrics.keys()
    assert {"model.keras", "classes.json", "metrics.json"} <= {
        a.path for a in client.list_artifacts(run_id)
    }
    assert run.data.tags[tracking.MODEL_TAG] == f"runs:/{run_id}/model"
    mlflow.set_tracking_uri(uri)
    got = mlflow.pyfunc.load_model(f"runs:/{run_id}/model").predict(
        pd.DataFrame({"text": ["a wonderful film, i loved every minute of it"]})
    )
    assert got["label"].tolist() == ["pos"]


@pytest.mark.slow
@pytest.mark.e2e
def test_a_run_survives_a_restart_of_its_tracking_server(tmp_path):
    server = tracking_server(tmp_path).start()
    try:
        training = Training(tmp_path, server.url, env=env_with())
        training.wait_for(r"val_loss: ")  # epoch 1 is over and logged
        server.stop()
        training.wait_for(r"Retrying \(Retry\(")  # a later epoch met the stopped server
        training.wait_for(r"Retrying \(Retry\(", count=2)  # and is still waiting it out
        server.start()  # same port, same store
        code = training.wait()
        assert code == 0, training.output[-4000:]
        client, run = the_run(server.url)
        assert_complete(server.url, run.info.run_id)
    finally:
        server.stop()


@pytest.mark.slow
@pytest.mark.e2e
def test_a_server_away_past_the_retries_costs_no_trained_model(tmp_path):
    # MLflow's retries cut to about a second, so that "past the limit" is short.
    env = env_with(
        MLFLOW_HTTP_REQUEST_MAX_RETRIES="1",
        MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR="1",
        MLFLOW_HTTP_REQUEST_BACKOFF_JITTER="0",
        MLFLOW_HTTP_REQUEST_TIMEOUT="10",
    )
    server = tracking_server(tmp_path).start()
    try:
        training = Training(tmp_path, server.url, env=env)
        training.wait_for(r"val_loss: ")
        server.stop()
        code = training.wait()
        output, folder = training.output, training.folder
        assert code == 2, output[-4000:]
        assert f"Epoch {EPOCHS}/{EPOCHS}" in output  # training went on to its end
        [error] = [line for line in output.splitlines() if "Unreachable:" in line]
        assert server.url in error and f"textclf log-model {folder}" in error
        assert "Traceback" not in output
        for name in ("model.keras", "classes.json", "metrics.json", RunFolder.PENDING):
            assert (folder / name).is_file(), name
        assert not (folder / "checkpoint.npz").exists()

        server.start()
        logged = textclf_here("log-model", str(folder), cwd=tmp_path)
        assert logged.returncode == 0, (logged.stdout + logged.stderr)[-4000:]
        client, run = the_run(server.url)  # the same run, not a second one
        assert run.info.run_id == (folder / "mlflow_run_id").read_text().strip()
        assert_complete(server.url, run.info.run_id)
        assert not (folder / RunFolder.PENDING).exists()
        again = textclf_here("log-model", str(folder), cwd=tmp_path)
        assert again.returncode == 0 and "nothing to log" in again.stdout + again.stderr
    finally:
        server.stop()


class _Health(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


class _FlakyClient:
    """An MlflowClient stand-in whose log_batch fails as MLflow's does once its retries are
    spent, while `down`; the tracking URI answers /health only while up."""

    def __init__(self):
        self.down, self.sent, self.health = False, [], None
        self.tracking_uri = f"http://127.0.0.1:{free_port()}"

    def up(self, up: bool) -> None:
        self.down = not up
        if up and self.health is None:
            port = int(self.tracking_uri.rsplit(":", 1)[1])
            self.health = ThreadingHTTPServer(("127.0.0.1", port), _Health)
            threading.Thread(target=self.health.serve_forever, daemon=True).start()
        elif not up and self.health is not None:
            self.health.shutdown()
            self.health.server_close()
            self.health = None

    def log_batch(self, run_id, metrics=(), params=(), tags=()):
        if self.down:
            import requests

            try:
                raise requests.exceptions.ConnectionError("Max retries exceeded")
            except requests.exceptions.ConnectionError as error:
                raise MlflowException(f"API request failed with exception {error}") from None
        self.sent += [(m.key, m.step) for m in metrics]


def test_epoch_metrics_wait_out_a_lost_server_and_go_out_once_it_is_back(tmp_path):
    client = _FlakyClient()
    run = tracking.Run(client, "run")
    try:
        client.up(True)
        run.log_epoch(0, {"val_loss": 0.5})
        client.up(False)
        run.log_epoch(1, {"val_loss": 0.4})  # fails after "retries": kept, no exception
        run.log_epoch(2, {"val_loss": 0.3})  # /health is down: kept without trying
        assert client.sent == [("val_loss", 1)]
        assert [m.step for m in run.pending] == [2, 3]
        client.up(True)
        run.log_epoch(3, {"val_loss": 0.2})
        assert client.sent == [("val_loss", s) for s in (1, 2, 3, 4)] and not run.pending

        client.up(False)
        run.log_epoch(4, {"val_loss": 0.1})
        with pytest.raises(tracking.Unreachable, match=r"textclf log-model .*"):
            with run.or_later(tmp_path):
                run.log_metrics({"test_accuracy": 1.0})
        kept = json.loads((tmp_path / RunFolder.PENDING).read_text())
        assert [(m["key"], m["step"]) for m in kept] == [("val_loss", 5)]

        client.up(True)
        with pytest.raises(ValueError):  # any other error is not the server's absence
            with run.or_later(tmp_path):
                assert client.sent[-1] == ("val_loss", 5) and not run.pending  # flushed first
                raise ValueError("a bug")
    finally:
        client.up(False)


# --- make server AUTH=1 ---------------------------------------------------------------------


def make_env(**settings: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in venv_env(**settings).items()
        if not k.startswith(("MAKE", "MFLAGS", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_TRACKING_"))
    }
    return env | settings


def get(url: str, user: str | None = None, password: str | None = None) -> int:
    request = urllib.request.Request(url)
    if user:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status
    except urllib.error.HTTPError as error:
        return error.code


@pytest.mark.e2e
def test_make_server_auth_needs_a_password_and_binds_to_loopback(tmp_path):
    base = ["make", "-s", "-C", str(ROOT), "server", f"SERVER_DIR={tmp_path / 'server'}"]
    refused = subprocess.run(
        [*base, "AUTH=1"], env=make_env(), capture_output=True, text=True, timeout=60
    )
    assert refused.returncode != 0
    assert "MLFLOW_AUTH_ADMIN_PASSWORD" in refused.stderr
    assert not (tmp_path / "server" / "mlflow.db").exists()  # no server was started

    def planned(*args: str, **env: str) -> str:
        done = subprocess.run(
            ["make", "-n", "-C", str(ROOT), "server", *args],
            env=make_env(**env),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert "--host 127.0.0.1 " in planned(HOST="0.0.0.0")  # a HOST in the environment: ignored
    assert "--host 0.0.0.0 " in planned("HOST=0.0.0.0")  # on the command line: used
    assert "basic-auth" not in planned()


@pytest.mark.slow
@pytest.mark.e2e
def test_the_auth_server_lets_in_only_its_users(tmp_path, monkeypatch):
    password, reader_password = secrets.token_urlsafe(18), secrets.token_urlsafe(18)
    secret = tmp_path / "admin-password"
    secret.write_text(password + "\n")
    secret.chmod(0o600)
    port, folder = free_port(), tmp_path / "server"
    server = Service(
        [
            "make",
            "-C",
            str(ROOT),
            "server",
            "AUTH=1",
            f"PORT={port}",
            f"SERVER_DIR={folder}",
            "ARGS=--workers 1",
        ],
        f"http://127.0.0.1:{port}",
        tmp_path / "server.log",
        env=make_env(MLFLOW_AUTH_ADMIN_PASSWORD_FILE=str(secret)),
        cwd=ROOT,
    )
    server.start()
    url = server.url
    try:
        log = server.log.read_text()
        assert f"Uvicorn running on http://127.0.0.1:{port}" in log
        assert password not in log
        assert "admin_password" not in (folder / "basic_auth.ini").read_text()
        api = f"{url}/api/2.0/mlflow/experiments/search?max_results=1"
        assert get(api) == 401 and get(f"{url}/") == 401
        assert get(api, "admin", "not-the-password") == 401
        assert get(api, "admin", password) == 200

        data = write_csv(tmp_path / "reviews.csv", reviews(240))
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
        trained = textclf_here(
            "train",
            "data=csv",
            f"data.path={data}",
            f"hydra.run.dir={tmp_path / 'run'}",
            *quick(tmp_path),
            f"tracking.uri={url}",
            cwd=tmp_path,
        )
        assert trained.returncode == 0, (trained.stdout + trained.stderr)[-4000:]

        client, run = the_run(url)
        assert run.info.status == "FINISHED" and "test_accuracy" in run.data.metrics
        assert "model.keras" in {a.path for a in client.list_artifacts(run.info.run_id)}
        experiment_id = run.info.experiment_id
        users = get_app_client("basic-auth", tracking_uri=url)
        users.create_user("reader", reader_password)
        users.grant_user_permission("reader", "experiment", experiment_id, "READ")

        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "reader")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", reader_password)
        reader = MlflowClient(url)
        assert reader.get_run(run.info.run_id).data.metrics == pytest.approx(
            run.data.metrics, nan_ok=True
        )  # throughput is NaN when each epoch is one batch
        for write in (
            lambda: reader.log_metric(run.info.run_id, "sneaky", 1.0),
            lambda: reader.create_run(experiment_id),
        ):
            with pytest.raises(MlflowException) as refused:
                write()
            assert refused.value.get_http_status_code() == 403
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "wrong")
        with pytest.raises(MlflowException) as refused:
            reader.get_run(run.info.run_id)
        assert refused.value.get_http_status_code() == 401
    finally:
        server.stop()
