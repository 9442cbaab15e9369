"""The defaults adapt to data of other shapes than IMDB: short texts get narrow enough batches
and enough optimizer steps, long multi-topic texts too, and early stopping ends training.

Each dataset is generated here: several classes, each with its own cue words hidden among
shared filler words (some cues point to another class), so validation loss falls for a number
of epochs before it flattens. Only the model is shrunk, for speed; the batching and the
training budget are the real defaults.
"""

from __future__ import annotations

import random
from pathlib import Path

import keras
import pytest
from mlflow.tracking import MlflowClient

from textclf import batching, train
from textclf.config import BatchingConfig, TrainConfig

from .conftest import run_pipeline, write_csv

FILLER = [f"word{i}" for i in range(400)]
SMALL = [
    "model.units=16",
    "model.embedding_dim=32",
    "model.bidirectional=false",
    "evaluate.served_limit=50",
    "evaluate.plots=false",
]


def texts(
    n: int, classes: int, length: tuple[int, int], cues: int, seed: int
) -> list[tuple[str, str]]:
    """`n` texts of `length` tokens, `cues` of them cue words (70% of the text's class)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % classes
        words = [rng.choice(FILLER) for _ in range(rng.randint(*length) - cues)]
        for _ in range(cues):
            cue_class = label if rng.random() < 0.7 else rng.randrange(classes)
            words.insert(rng.randrange(len(words) + 1), f"cue{cue_class}x{rng.randrange(12)}")
        rows.append((" ".join(words), f"class{label}"))
    return rows


def train_defaults(make_config, tmp_path: Path, rows: list[tuple[str, str]]) -> dict:
    """One run with the default config on `rows`: its metrics and per-epoch val_loss."""
    cfg = make_config("data=csv", f"data.path={write_csv(tmp_path / 'data.csv', rows)}", *SMALL)
    metrics = run_pipeline(cfg)
    client = MlflowClient(cfg.tracking.uri)
    [run] = client.search_runs([client.get_experiment_by_name("textclf").experiment_id])
    history = sorted(client.get_metric_history(run.info.run_id, "val_loss"), key=lambda m: m.step)
    return metrics | {"val_loss": [m.value for m in history]}


def assert_not_cut_short(result: dict, last: int = 2) -> None:
    """Failing: the epoch limit ended training while val_loss still fell in each of the `last`
    epochs. (The old defaults, 10 epochs and rows per batch uncapped, fail on both datasets.)"""
    losses = result["val_loss"]
    assert len(losses) == result["epochs_run"]
    by_limit = result["epochs_run"] >= result["epoch_limit"]
    falling = len(losses) > last and all(
        b < a for a, b in zip(losses[-last - 1 : -1], losses[-last:], strict=True)
    )
    assert not (by_limit and falling), (
        f"stopped by the epoch limit ({result['epoch_limit']}) with val_loss still falling: "
        f"{[round(v, 4) for v in losses]}"
    )


@pytest.mark.slow  # the real defaults on 3,000 rows: half a minute
def test_short_texts_train_until_validation_loss_stops_falling(make_config, tmp_path):
    """~10 tokens, 3,000 rows, 6 classes: the case that stopped after 10 epochs of few steps."""
    result = train_defaults(make_config, tmp_path, texts(3000, 6, (8, 12), 2, seed=0))
    assert_not_cut_short(result)
    assert result["test_accuracy"] > 0.5  # six classes: chance is 1/6


@pytest.mark.slow  # about two minutes on 2 busy cores
def test_long_texts_train_until_validation_loss_stops_falling(make_config, tmp_path):
    """~150 tokens, 1,200 rows, 4 topics."""
    result = train_defaults(make_config, tmp_path, texts(1200, 4, (100, 200), 6, seed=1))
    assert_not_cut_short(result)
    assert result["test_accuracy"] > 0.5  # four classes: chance is 1/4


def memorisable(n: int, seed: int) -> list[tuple[str, str]]:
    """3 topics, each row with four of its topic's eight cue words among filler: the LSTM
    learns every training row within three epochs at a learning rate of 0.005."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % 3
        words = [rng.choice(FILLER) for _ in range(rng.randint(20, 40))]
        for _ in range(4):
            words.insert(rng.randrange(len(words) + 1), f"cue{label}x{rng.randrange(8)}")
        rows.append((" ".join(words), f"class{label}"))
    return rows


def test_training_stops_soon_after_the_training_set_is_memorised(make_config, tmp_path):
    data = write_csv(tmp_path / "data.csv", memorisable(900, seed=0))
    # bucket's smaller, partial batches: more steps an epoch, so validation loss settles within
    # a few epochs of memorising (with pooled's full 256-row batches it kept falling to epoch 11)
    cfg = make_config(
        "data=csv",
        f"data.path={data}",
        *SMALL,
        "train.learning_rate=0.005",
        "batching=bucket",
        "model.ngram_branch=false",  # the LSTM's own val_loss stops it
    )
    metrics = run_pipeline(cfg)
    client = MlflowClient(cfg.tracking.uri)
    [run] = client.search_runs([client.get_experiment_by_name("textclf").experiment_id])
    history = {
        name: [
            m.value
            for m in sorted(client.get_metric_history(run.info.run_id, name), key=lambda m: m.step)
        ]
        for name in ("accuracy", "val_loss")
    }
    memorised = next(e for e, accuracy in enumerate(history["accuracy"]) if accuracy >= 0.99)
    assert memorised <= 2, history["accuracy"]  # epoch 3 here: what the test is about
    assert metrics["epochs_run"] <= memorised + 1 + 4, history
    assert metrics["epochs_run"] < metrics["epoch_limit"]
    reason = run.data.tags["stop_reason"]
    assert reason.startswith("early_stopping: val_loss fell by less than train.min_delta=0.01 ")
    assert reason.endswith(f"after epoch {int(metrics['best_epoch'])}")
    kept = history["val_loss"][int(metrics["best_epoch"]) - 1]
    assert metrics["best_val_loss"] == pytest.approx(kept)
    later = history["val_loss"][int(metrics["best_epoch"]) :]
    assert later and all(loss > kept * 0.99 for loss in later)  # none counted as progress


def kept_epoch(val_losses: list[float], min_delta: float) -> int:
    """The epoch whose weights `train.EarlyStopping` keeps after these epochs."""
    stopper = train.EarlyStopping(patience=len(val_losses), min_delta=min_delta)
    stopper.set_model(keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)]))
    for epoch, loss in enumerate(val_losses):
        stopper.on_epoch_end(epoch, {"val_loss": loss})
    return stopper.best_epoch


def test_the_best_epoch_and_the_stop_reason_follow_early_stoppings_rule():
    assert kept_epoch([0.9, 0.8, 0.796, 0.790], 0.01) == 3  # 0.5% doesn't count, 1.25% does
    assert kept_epoch([0.9, 0.8, 0.796, 0.795], 0.01) == 1
    assert kept_epoch([0.9, 0.8, 0.796, 0.795], 0.0) == 3
    cfg = TrainConfig(epochs=100, max_steps=4000)
    assert train.stop_reason(20, 3, cfg, 200) == (
        "max_steps: train.max_steps=4000 optimizer steps (20 epochs)"
    )
    assert train.stop_reason(7, 4, cfg, 200).endswith("for train.patience=2 epochs after epoch 5")
    assert train.stop_reason(100, 99, cfg, 10) == "epochs: train.epochs=100"


def test_short_texts_get_batches_of_at_most_max_batch_rows():
    """The token budget alone would put 32,000 / 10 = 3,200 ten-token texts in a batch."""
    spec = BatchingConfig(strategy="bucket")
    sizes = batching.bucket_batch_sizes(
        [9, 11, 13, 300], spec.batch_size, spec.token_budget, spec.max_batch_rows
    )
    assert sizes == [256, 256, 256, 107, 64]
    assert batching.bucket_batch_sizes([11], 64, 32000, None) == [3200, 64]
    assert batching.bucket_batch_sizes([11], 512, 32000, 256) == [512, 512]  # batch_size wins


@pytest.mark.parametrize("steps_per_epoch,expected", [(200, 20), (16, 100), (4000, 1), (3, 100)])
def test_the_step_budget_sets_the_epoch_limit(steps_per_epoch, expected):
    assert train.epoch_limit(TrainConfig(), steps_per_epoch) == expected
    assert train.epoch_limit(TrainConfig(epochs=3), steps_per_epoch) == min(3, expected)
    assert train.epoch_limit(TrainConfig(max_steps=None, epochs=7), steps_per_epoch) == 7
