"""Shared fixtures: tiny data the tests write themselves, and the project's real config."""

from __future__ import annotations

import csv
import os
import random
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from textclf.cli import CONF_DIR, ROOT
from textclf.config import Config, ModelConfig, TrainConfig, to_object

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


def small_model(**kw) -> ModelConfig:
    """A one-direction LSTM without dropout unless asked: small, deterministic test models."""
    return ModelConfig(**{"bidirectional": False, "dropout": 0.0} | kw)


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


@pytest.fixture
def make_config(tmp_path: Path):
    def make(*overrides: str) -> Config:
        return to_object(compose_config(list(overrides), tmp_path))

    return make


@pytest.fixture
def archive() -> Path:
    if not ARCHIVE.exists():
        pytest.skip(f"the real IMDB archive is not at {ARCHIVE} (shared/ beside the checkout)")
    return ARCHIVE


def textclf(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "textclf.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )


def quick(tmp_path: Path) -> list[str]:
    return [
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
        "train.epochs=3",
        "train.learning_rate=0.01",
        "model.units=8",
        "model.embedding_dim=16",
        "tokenize.vocab_size=200",
        "batching.batch_size=16",
        "train.verbose=0",
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    """A real `mlflow server` on a free loopback port, SQLite backend, local artifacts."""
    port = free_port()
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    server = subprocess.Popen(
        [str(bin_dir / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "server-artifacts"), "--workers", "1"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("mlflow server did not come up") from None
                time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)
