"""Progress bars: off when stderr is not a terminal (CI logs stay clean), forced on by
TEXTCLF_PROGRESS=1, and ticking where a user waits (served evaluation, the C grid, reading
and tokenizing)."""

from __future__ import annotations

import numpy as np
import pytest

from textclf import data, evaluate, progress, tokenize
from textclf.config import TokenizeConfig
from textclf.models import bow

from .conftest import reviews, write_csv


@pytest.fixture
def forced(monkeypatch):
    monkeypatch.setenv(progress.ENV, "1")


def separable(n: int = 40) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    y = np.arange(n) % 2
    return rng.normal(size=(n, 3)) + y[:, None], y


def test_the_c_grid_ticks_once_per_c_when_forced_on(forced, capfd):
    x, y = separable()
    bow.solve(x, y, x, y, [0.1, 1.0, 10.0], max_iter=100)
    err = capfd.readouterr().err
    assert "C grid" in err and "3/3" in err


def test_no_bar_when_stderr_is_not_a_terminal_unless_forced(monkeypatch, capfd):
    monkeypatch.delenv(progress.ENV, raising=False)
    x, y = separable()
    bow.solve(x, y, x, y, [0.1, 1.0], max_iter=100)
    assert "C grid" not in capfd.readouterr().err
    monkeypatch.setenv(progress.ENV, "0")
    assert progress.disabled() is True


def test_served_evaluation_ticks_per_text(forced, capfd):
    labels = np.array([0, 1] * 5)
    batched = evaluate.Predictions(labels, np.eye(2)[labels].astype(float), np.ones(10))
    scores = evaluate.served_scores(lambda t: np.array([[0.5, 0.5]]), ["t"] * 10, batched, 6, 0)
    assert scores["served_reviews"] == 6
    err = capfd.readouterr().err
    assert "served" in err and "6/6" in err


def test_reading_and_tokenizing_a_file_tick_when_forced_on(forced, tmp_path, capfd):
    path = write_csv(tmp_path / "big.csv", reviews(1500))
    texts = data.read_table(path, ["text", "label"], "")["text"]
    cfg = TokenizeConfig(vocab_size=100)
    tokenize.encode(tokenize.adapt(texts, cfg), texts, np.zeros(len(texts)), None)
    err = capfd.readouterr().err
    assert "read big.csv" in err and "1501/1501" in err  # lines, the header's included
    assert "tokenize" in err and "2/2" in err  # batches of 1024 texts
