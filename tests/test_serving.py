"""`mlflow models serve` under load and under bad requests: every answer equals the in-process
prediction, a bad request gets a 4xx with a message, and the server keeps serving.

The load test prints its latency and throughput (never asserted). To measure another model, e.g.
one trained on the full IMDB data:

    MLFLOW_TRACKING_URI=sqlite:///$PWD/outputs/mlflow.db .venv/bin/pytest tests/test_serving.py \\
        -k load -s --serve-model models:/<name>@<alias>
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from textclf import inference, tracking
from textclf.cli import ROOT

from .conftest import (
    BAD,
    GOOD,
    Service,
    free_port,
    quick,
    reviews,
    textclf_here,
    venv_env,
    write_csv,
)

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

REQUESTS, CLIENTS, BATCH = 400, 8, 64  # every 4th request holds BATCH reviews, the others one
MAX_TEXTS = 10_000  # texts the served model answers in one request (mlflow_model.MAX_TEXTS)
WORDS = sorted({w.strip(",") for phrase in GOOD + BAD for w in phrase.split()})


def review(tokens: int, rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(tokens))


def load_requests(seed: int = 0) -> list[list[str]]:
    """REQUESTS lists of reviews of 1 to 2,000 tokens (log-uniform: mostly short, some long)."""
    rng = random.Random(seed)

    def one() -> str:
        return review(round(math.exp(rng.uniform(0, math.log(2000)))), rng)

    return [[one() for _ in range(BATCH if i % 4 == 3 else 1)] for i in range(REQUESTS)]


def post(url: str, body: bytes | dict, timeout: float = 300) -> tuple[int, object]:
    """POST to /invocations; the status and the decoded JSON answer (or its text)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(
        f"{url}/invocations", data=data, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            status, payload = answer.status, answer.read()
    except urllib.error.HTTPError as error:
        status, payload = error.code, error.read()
    try:
        return status, json.loads(payload)
    except ValueError:
        return status, payload.decode(errors="replace")


def frame(texts: list) -> dict:
    return {"dataframe_split": {"columns": ["text"], "data": [[t] for t in texts]}}


def missing_as_none(values) -> list:
    """JSON null or NaN (MLflow writes a missing value in a text column either way) → None."""
    return [None if v is None or (isinstance(v, float) and math.isnan(v)) else v for v in values]


def assert_same(answer: object, expected: pd.DataFrame) -> None:
    """The served rows equal the in-process ones: labels and errors exactly, probabilities
    within a JSON float round trip."""
    got = pd.DataFrame(answer["predictions"])
    assert list(got.columns) == list(expected.columns)
    assert got["label"].tolist() == expected["label"].tolist()
    assert missing_as_none(got["error"]) == missing_as_none(expected["error"])
    probs = [c for c in expected.columns if c.startswith("prob_")]
    np.testing.assert_allclose(
        got[probs].to_numpy(dtype=float), expected[probs].to_numpy(), atol=1e-5
    )


@pytest.fixture(scope="module")
def served(request, tmp_path_factory) -> SimpleNamespace:
    """A served model and the same model in process: with --serve-model, that model; else a
    tiny one trained here through the CLI."""
    root = tmp_path_factory.mktemp("serving")
    model = request.config.getoption("--serve-model")
    if model:
        uri = os.environ.get("MLFLOW_TRACKING_URI", f"sqlite:///{ROOT / 'outputs' / 'mlflow.db'}")
        keras_file, classes, _ = tracking.model_files(uri, model, root / "model")
    else:
        uri = f"sqlite:///{root / 'mlflow.db'}"
        data = write_csv(root / "reviews.csv", reviews(240))
        done = textclf_here(
            "train",
            "data=csv",
            f"data.path={data}",
            f"hydra.run.dir={root / 'run'}",
            *quick(root),
            cwd=root,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        model = f"runs:/{(root / 'run' / 'mlflow_run_id').read_text().strip()}/model"
        keras_file, classes = root / "run" / "model.keras", root / "run" / "classes.json"
    port = free_port()
    server = Service(
        [
            str(Path(sys.executable).parent / "mlflow"),
            "models",
            "serve",
            "-m",
            model,
            "--env-manager",
            "local",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        f"http://127.0.0.1:{port}",
        root / "serve.log",
        env=venv_env(MLFLOW_TRACKING_URI=uri),
        cwd=root,
        ready="/ping",
    )
    server.start()
    try:
        yield SimpleNamespace(
            url=server.url,
            server=server,
            model=model,
            classifier=inference.Classifier.from_files(keras_file, classes),
        )
    finally:
        server.stop()


def test_load_from_concurrent_clients_answers_every_request_like_the_model_in_process(served):
    batches = load_requests()

    def send(texts: list[str]) -> tuple[int, float, object]:
        start = time.perf_counter()
        status, answer = post(served.url, frame(texts))
        return status, time.perf_counter() - start, answer

    with ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(send, load_requests(seed=1)[-2 * CLIENTS :]))  # warm-up, not measured
        start = time.perf_counter()
        results = list(pool.map(send, batches))
    seconds = time.perf_counter() - start

    failed = [(i, status, answer) for i, (status, _, answer) in enumerate(results) if status != 200]
    assert not failed, f"{len(failed)} requests failed, the first: {failed[0]}"
    for texts, (_, _, answer) in zip(batches, results, strict=True):
        assert_same(answer, served.classifier.predict(texts))

    latency = {
        size: np.array([t for b, (_, t, _) in zip(batches, results, strict=True) if len(b) == size])
        * 1000
        for size in (1, BATCH)
    }
    texts = sum(len(b) for b in batches)
    print(
        f"\nload on {served.model}: {len(batches)} requests ({len(latency[1])} of 1 review, "
        f"{len(latency[BATCH])} of {BATCH}; reviews of 1-2,000 tokens) from {CLIENTS} clients "
        f"in {seconds:.1f} s: {len(batches) / seconds:.1f} requests/s, "
        f"{texts / seconds:.0f} reviews/s; latency p50/p99: "
        + ", ".join(
            f"{size} review(s) {np.percentile(ms, 50):.0f}/{np.percentile(ms, 99):.0f} ms"
            for size, ms in latency.items()
        )
    )


def test_bad_requests_get_a_4xx_with_a_message_and_the_server_keeps_serving(served):
    def refused(body: bytes | dict, *words: str) -> None:
        status, answer = post(served.url, body)
        assert 400 <= status < 500, (status, answer)
        message = answer["message"] if isinstance(answer, dict) else answer
        assert all(w in message for w in words), message

    refused(b'{"dataframe_split": ', "JSON")  # malformed JSON
    refused({"dataframe_split": {"columns": ["review"], "data": [["a fine film"]]}}, "text")
    refused(frame([42]), "`text` must hold strings", "row 0")
    for value in (42, 4.5, True, {"a": 1}, ["a", "film"]):
        refused(frame(["a fine film", value]), "`text` must hold strings", "row 1")
    refused(frame([]), "no text to classify")
    refused(frame(["a short review"] * (MAX_TEXTS + 1)), f"at most {MAX_TEXTS}", "split")

    # Empty and missing texts: answered, with a message in `error` (as `make predict` does).
    status, answer = post(served.url, frame(["", None, "a fine film"]))
    assert status == 200
    assert_same(answer, served.classifier.predict(["", None, "a fine film"]))
    errors = missing_as_none(row["error"] for row in answer["predictions"])
    assert errors == [inference.EMPTY] * 2 + [None]

    # A 5 MB review is answered, truncated as in training: like its first max_length tokens.
    rng = random.Random(1)
    huge = review(900_000, rng)
    assert len(huge.encode()) > 5_000_000
    kept = int(served.classifier.token_counts([huge])[0])
    head = " ".join(huge.split()[:kept])
    status, answer = post(served.url, frame([huge]))
    assert status == 200 and kept < 900_000
    assert_same(answer, served.classifier.predict([head]))

    many = [review(rng.randint(1, 60), rng) for _ in range(MAX_TEXTS)]
    status, answer = post(served.url, frame(many))
    assert status == 200
    assert_same(answer, served.classifier.predict(many))

    assert served.server.process.poll() is None
    status, answer = post(served.url, frame(["a wonderful film", "a dull film"]))
    assert status == 200
    assert_same(answer, served.classifier.predict(["a wonderful film", "a dull film"]))
