"""`make server DB=postgresql://...`: a team store on a real PostgreSQL server (Debian's
`postgresql` package, `make postgres`) takes a parallel sweep whole: every run, metric and model."""

from __future__ import annotations

import glob
import importlib.util
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy
from mlflow.tracking import MlflowClient

from textclf import tracking
from textclf.cli import ROOT

from .conftest import Service, free_port, quick, reviews, textclf, venv_env, write_csv

JOBS = ["per_batch", "exact"]


def pg_bin() -> Path | None:
    """The newest PostgreSQL server binaries: Debian keeps them off PATH, in a versioned folder."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    initdb = found[-1] if found else shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def missing(what: str) -> None:
    """Skip on a developer's machine without it; fail in CI, where .ci/run installs it."""
    message = f"{what} (`make postgres` and `.venv/bin/pip install -e '.[postgres]'`)"
    if os.environ.get("CI"):
        pytest.fail(f"CI must run this test: {message}")
    pytest.skip(message)


class Postgres:
    """A throwaway cluster: data, socket and log in one temporary folder, TCP on 127.0.0.1 only,
    password login. PostgreSQL refuses to run as root, so as root it runs as the `postgres`
    user the Debian package creates (the folder is made theirs); otherwise as the caller."""

    def __init__(self, bin_dir: Path):
        self.bin = bin_dir
        self.folder = Path(tempfile.mkdtemp(prefix="textclf-pg-"))  # pytest's tmp is root-only
        self.port, self.user = free_port(), "mlflow"
        self.password = secrets.token_urlsafe(18)
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        self.env = {**os.environ, "PGPASSWORD": self.password}

    def run(self, *command: str) -> None:
        done = subprocess.run(
            [*self.as_user, *command], capture_output=True, text=True, env=self.env, timeout=120
        )
        assert done.returncode == 0, f"{command[0]}: {done.stdout}{done.stderr}"

    def start(self) -> Postgres:
        password_file = self.folder / "password"
        password_file.write_text(self.password + "\n")
        if self.as_user:
            shutil.chown(self.folder, "postgres")
            shutil.chown(password_file, "postgres")
        self.run(
            str(self.bin / "initdb"),
            "-D",
            str(self.folder / "data"),
            "-U",
            self.user,
            f"--pwfile={password_file}",
            "--auth=scram-sha-256",
            "-E",
            "UTF8",
            "--no-sync",
        )
        password_file.unlink()
        self.run(
            str(self.bin / "pg_ctl"),
            "-D",
            str(self.folder / "data"),
            "-w",
            "-t",
            "120",
            "-l",
            str(self.folder / "postgres.log"),
            "start",
            "-o",
            f"-h 127.0.0.1 -p {self.port} -k {self.folder}",
        )
        self.run(
            str(self.bin / "createdb"),
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-U",
            self.user,
            "mlflow",
        )
        return self

    @property
    def uri(self) -> str:
        """What `make server DB=` takes: no password in it, PGPASSWORD gives that."""
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/mlflow"

    def query(self, sql: str) -> list[tuple]:
        import psycopg

        with psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            user=self.user,
            password=self.password,
            dbname="mlflow",
        ) as connection:
            return connection.execute(sql).fetchall()

    def stop(self) -> None:
        if (self.folder / "data" / "postmaster.pid").exists():
            self.run(
                str(self.bin / "pg_ctl"),
                "-D",
                str(self.folder / "data"),
                "-m",
                "fast",
                "-w",
                "stop",
            )
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture
def postgres() -> Iterator[Postgres]:
    bin_dir = pg_bin()
    if bin_dir is None:
        missing("no PostgreSQL server binaries (/usr/lib/postgresql/*/bin/initdb)")
    if importlib.util.find_spec("psycopg") is None:
        missing("no PostgreSQL driver for MLflow (psycopg)")
    server = Postgres(bin_dir)
    try:
        yield server.start()
    finally:
        server.stop()


def make_env(**settings: str) -> dict[str, str]:
    return {
        k: v
        for k, v in venv_env(**settings).items()
        if not k.startswith(("MAKE", "MFLAGS", "MLFLOW_TRACKING_"))
    } | settings


@pytest.mark.e2e
def test_make_server_takes_its_database_from_the_command_line_only():
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

    uri = "postgresql://team@db.example.org:5432/mlflow"
    assert f"--backend-store-uri '{uri}'" in planned(f"DB={uri}", "ARTIFACTS=/srv/artifacts")
    assert "--artifacts-destination '/srv/artifacts'" in planned("ARTIFACTS=/srv/artifacts")
    default = planned(DB=uri)  # an unrelated DB in the environment: ignored
    assert "--backend-store-uri 'sqlite:///" in default and "--host 127.0.0.1 " in default


@pytest.mark.slow
@pytest.mark.e2e
def test_a_parallel_sweep_lands_whole_in_a_postgresql_backed_server(tmp_path, postgres):
    port, artifacts = free_port(), tmp_path / "artifacts"
    server = Service(
        [
            "make",
            "-C",
            str(ROOT),
            "server",
            f"DB={postgres.uri}",
            f"PORT={port}",
            f"SERVER_DIR={tmp_path / 'server'}",
            f"ARTIFACTS={artifacts}",
            "ARGS=--workers 1",
        ],
        f"http://127.0.0.1:{port}",
        tmp_path / "server.log",
        env=make_env(PGPASSWORD=postgres.password),
        cwd=ROOT,
    )
    server.start()
    try:
        assert f"Uvicorn running on http://127.0.0.1:{port}" in server.log.read_text()
        data = write_csv(tmp_path / "reviews.csv", reviews(160))
        done = textclf(  # a fresh process: see conftest.textclf
            "train",
            "--multirun",
            "hydra/launcher=parallel",
            "hydra.launcher.n_jobs=2",
            "data=csv",
            f"data.path={data}",
            f"batching={','.join(JOBS)}",
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
            *quick(tmp_path),
            "train.epochs=2",
            "train.patience=2",
            f"tracking.uri={server.url}",
            cwd=tmp_path,
        )
        assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]

        client = MlflowClient(server.url)
        runs = client.search_runs([client.get_experiment_by_name("textclf").experiment_id])
        [parent] = [r for r in runs if tracking.PARENT_TAG not in r.data.tags]
        children = [r for r in runs if r.data.tags.get(tracking.PARENT_TAG) == parent.info.run_id]
        assert parent.info.status == "FINISHED" and parent.data.tags["jobs_failed"] == "0"
        assert sorted(r.data.tags["batching"] for r in children) == sorted(JOBS)
        for run in children:
            run_id = run.info.run_id
            assert run.info.status == "FINISHED"
            assert run.data.params["model.units"] == "8"
            metrics = run.data.metrics.keys()
            assert {"test_accuracy", "best_val_accuracy", "served_agreement"} <= metrics
            steps = sorted(m.step for m in client.get_metric_history(run_id, "val_loss"))
            assert steps == [1, 2]
            files = {a.path for a in client.list_artifacts(run_id)}
            assert {"model.keras", "classes.json"} <= files
            assert run.data.tags[tracking.MODEL_TAG] == f"runs:/{run_id}/model"
            # the artifacts are files in the given destination, served through the server
            assert list(artifacts.rglob(f"{run_id}/artifacts/model.keras"))

        # and the runs are rows in PostgreSQL, not somewhere else
        rows = dict(postgres.query("SELECT run_uuid, status FROM runs"))
        assert rows == {r.info.run_id: "FINISHED" for r in runs}
        [(metrics,)] = postgres.query("SELECT count(*) FROM metrics WHERE key = 'val_loss'")
        assert metrics == 2 * len(JOBS)
    finally:
        server.stop()


@pytest.mark.slow
def test_an_optuna_study_lives_in_its_own_postgresql_database_beside_mlflows(postgres, monkeypatch):
    """`make tune` on a team's PostgreSQL: the study in a database of its own, continued from
    there; MLflow's database on the same server is refused."""
    if importlib.util.find_spec("optuna") is None:
        missing("no Optuna (make install EXTRAS=dev,optuna)")
    from textclf.config import ConfigError, TuneConfig
    from textclf.studies.tune import distributions, open_study

    monkeypatch.setenv("PGPASSWORD", postgres.password)  # as a user passes it: not in the URI
    postgres.run(
        str(postgres.bin / "createdb"),
        "-h",
        "127.0.0.1",
        "-p",
        str(postgres.port),
        "-U",
        postgres.user,
        "optuna",
    )
    server = f"postgresql+psycopg://{postgres.user}@127.0.0.1:{postgres.port}"
    mlflow_uri = f"{server}/mlflow"
    MlflowClient(mlflow_uri).search_experiments()  # MLflow's tables, as a team server makes
    cfg = TuneConfig(storage=f"{server}/optuna", study="team", space={"model.units": "choice(4,8)"})
    study = open_study(cfg, "val_accuracy", mlflow_uri)
    trial = study.ask(distributions(cfg.space))
    study.tell(trial, 0.75)

    again = open_study(cfg, "val_accuracy", mlflow_uri)
    assert [(t.number, t.value) for t in again.trials] == [(0, 0.75)]
    [(trials,)] = postgres.query("SELECT count(*) FROM runs")  # MLflow's: no trial there
    assert trials == 0
    tables = {}
    for database in ("optuna", "mlflow"):
        engine = sqlalchemy.create_engine(f"{server}/{database}")
        tables[database] = set(sqlalchemy.inspect(engine).get_table_names())
        engine.dispose()
    assert {"studies", "trials", "alembic_version"} <= tables["optuna"]
    assert "studies" not in tables["mlflow"] and "experiments" not in tables["optuna"]
    with pytest.raises(ConfigError, match="holds MLflow's tracking store"):
        open_study(
            TuneConfig(storage=mlflow_uri, space=cfg.space),
            "val_accuracy",
            "http://mlflow.example.org:5000",
        )
