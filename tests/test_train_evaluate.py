"""Metrics under their stable names, length buckets, early stopping, divergence, resuming."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from textclf import evaluate, inference, train
from textclf.config import TrainConfig

from .conftest import build_lstm, quiet_training, small_model


def predictions(labels, positive, lengths) -> evaluate.Predictions:
    return evaluate.Predictions(
        np.array(labels),
        inference.class_probabilities(np.array(positive)[:, None]),
        np.array(lengths),
    )


def test_binary_scores_match_hand_counts():
    pred = predictions([1, 1, 0, 0, 1], [0.9, 0.4, 0.2, 0.6, 0.8], [10, 200, 300, 600, 50])
    scores = evaluate.score(pred, ["neg", "pos"], [128, 256, 512])
    # predicted 1,0,0,1,1: tp=2 fp=1 fn=1 tn=1
    assert scores["test_accuracy"] == pytest.approx(3 / 5)
    assert scores["test_precision"] == pytest.approx(2 / 3)
    assert scores["test_recall"] == pytest.approx(2 / 3)
    assert scores["test_f1"] == pytest.approx(2 / 3)
    assert scores["test_auc"] == pytest.approx(5 / 6)
    assert scores["test_loss"] == pytest.approx(
        -np.mean(np.log([0.9, 0.4, 0.8, 0.6, 0.8][:1] + [0.4, 0.8, 0.4, 0.8])), rel=1e-6
    )
    assert scores["test_accuracy_len_1-128"] == 1.0  # lengths 10 and 50, both right
    assert scores["test_accuracy_len_129-256"] == 0.0
    assert scores["test_accuracy_len_257-512"] == 1.0
    assert scores["test_accuracy_len_513-inf"] == 0.0


def test_multiclass_scores_are_macro_averaged_without_auc():
    probs = np.eye(3)[[0, 1, 2, 1]]
    pred = evaluate.Predictions(np.array([0, 1, 2, 2]), probs, np.array([5, 5, 5, 5]))
    scores = evaluate.score(pred, ["a", "b", "c"], [128])
    assert scores["test_accuracy"] == 0.75 and "test_auc" not in scores
    assert evaluate.confusion(pred, 3).tolist() == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]


def dataset(n=64, seed=0, noise=0.0) -> tf.data.Dataset:
    """Token 2 means positive, 3 negative; `noise` flips that share of the labels."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n).astype(np.int32)
    x = np.where(y[:, None] == 1, 2, 3) * np.ones((n, 5), np.int32)
    y = np.where(rng.random(n) < noise, 1 - y, y).astype(np.int32)
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(16)


def shuffled(epoch) -> tf.data.Dataset:
    """Epoch `epoch` of 64 noisy examples: its order depends on the epoch alone."""
    return dataset(noise=0.2).unbatch().shuffle(64, seed=epoch).batch(16)


def test_more_classes_get_a_top_label_calibration_curve_and_no_roc_or_pr(tmp_path):
    rng = np.random.default_rng(0)
    probabilities = rng.dirichlet(np.ones(3), 60)
    pred = evaluate.Predictions(np.arange(60) % 3, probabilities, np.ones(60))
    paths = evaluate.plot_test(pred, ["a", "b", "c"], tmp_path)
    assert [p.name for p in paths] == ["confusion_matrix.png", "calibration_curve.png"]
    one_class = evaluate.Predictions(np.zeros(5, int), np.tile([0.6, 0.4], (5, 1)), np.ones(5))
    assert evaluate.plot_curves(one_class, ["neg", "pos"], tmp_path) == []  # no curve to draw


def test_fit_stops_early_restores_the_best_weights_and_times_each_epoch():
    keras.utils.set_random_seed(0)
    net = train.compile_model(
        build_lstm(5, 2, small_model(embedding_dim=4, units=4), "post"),
        2,
        TrainConfig(optimizer="adam", learning_rate=0.05),
    )
    val = dataset(seed=1, noise=0.25)  # confident predictions get punished: val loss turns up
    fitted = train.fit(net, lambda e: dataset(), val, 4, quiet_training(epochs=40, patience=2))
    epochs = len(fitted.history["loss"])
    assert len(fitted.epoch_seconds) == epochs < 40 and fitted.best_epoch < epochs - 1
    best = min(fitted.history["val_loss"])
    assert net.evaluate(val, verbose=0)[0] == pytest.approx(best, rel=1e-4)
    assert fitted.steps[0] == 4 and fitted.rate(16.0) > 0
    x, y = next(iter(dataset(seed=1).unbatch().batch(64)))
    numbered = tf.data.Dataset.from_tensor_slices((x, tf.range(64))).shuffle(64, seed=0).batch(16)
    pred = evaluate.predict(net, numbered, y.numpy())
    assert (pred.predicted == pred.labels).all() and (pred.lengths == 5).all()
    assert (pred.labels == y.numpy()).all()  # back in row order, though batches were shuffled


def test_a_diverging_loss_stops_training_with_an_error():
    keras.utils.set_random_seed(0)
    net = train.compile_model(
        build_lstm(5, 2, small_model(embedding_dim=4, units=4), "post"),
        2,
        TrainConfig(optimizer="sgd", learning_rate=float("inf")),
    )
    with pytest.raises(train.TrainingDiverged, match="learning_rate"):
        train.fit(net, lambda e: dataset(), dataset(seed=1), 4, quiet_training(epochs=5))


class StopAt(keras.callbacks.Callback):
    """Ctrl-C at the start of an epoch, or after the last one (before training ends)."""

    def __init__(self, epoch: int):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise KeyboardInterrupt

    def on_train_end(self, logs=None):
        raise KeyboardInterrupt


def fresh_model() -> keras.Model:
    keras.utils.set_random_seed(0)
    # dropout: the RNG state matters
    net = build_lstm(20, 2, small_model(embedding_dim=8, units=8, dropout=0.5), "post")
    return train.compile_model(net, 2, TrainConfig(optimizer="adam", learning_rate=0.01))


@pytest.fixture(scope="module")
def uninterrupted() -> tuple[keras.Model, train.Fit]:
    """Five epochs in one go: what every resumed fit must end as."""
    whole = fresh_model()
    return whole, train.fit(
        whole, shuffled, dataset(seed=1, noise=0.2), 4, quiet_training(epochs=5, patience=5)
    )


# 5: all epochs done, the best not restored
@pytest.mark.parametrize("stop_at", [1, 3, 5])
def test_an_interrupted_fit_resumed_from_its_checkpoint_ends_as_an_uninterrupted_one(
    tmp_path, stop_at, uninterrupted
):
    build = fresh_model
    val = dataset(seed=1, noise=0.2)
    whole, expected = uninterrupted

    path = tmp_path / "checkpoint.npz"
    with pytest.raises(KeyboardInterrupt):
        train.fit(
            build(),
            shuffled,
            val,
            4,
            quiet_training(epochs=5, patience=5),
            callbacks=[StopAt(stop_at)],
            checkpoint=path,
        )
    assert train.Checkpoint(path, train.EarlyStopping(2, 0.0), train.Timer()).epoch == stop_at

    resumed = build()  # a new process would rebuild the model just so
    got = train.fit(
        resumed, shuffled, val, 4, quiet_training(epochs=5, patience=5), checkpoint=path
    )
    assert got.history.keys() == expected.history.keys()
    for key, values in expected.history.items():
        np.testing.assert_allclose(got.history[key], values, rtol=1e-5, err_msg=key)
    assert got.best_epoch == expected.best_epoch and len(got.epoch_seconds) == 5
    for a, b in zip(resumed.get_weights(), whole.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)

    finished = build()  # resuming a finished fit trains no more: it restores the result
    again = train.fit(
        finished, shuffled, val, 4, quiet_training(epochs=5, patience=5), checkpoint=path
    )
    assert again.history == got.history
    for a, b in zip(finished.get_weights(), whole.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_a_checkpoint_from_another_model_is_refused_with_the_fix(tmp_path):
    path = tmp_path / "checkpoint.npz"
    train.fit(
        fresh_model(), shuffled, dataset(seed=1), 4, quiet_training(epochs=1), checkpoint=path
    )
    other = train.compile_model(
        build_lstm(20, 2, small_model(embedding_dim=8, units=16), "post"), 2, TrainConfig()
    )
    with pytest.raises(train.CheckpointMismatch, match="configuration that wrote it"):
        train.fit(other, shuffled, dataset(seed=1), 4, quiet_training(epochs=2), checkpoint=path)


def test_a_stop_request_ends_training_even_when_the_signal_exception_was_lost():
    train.StopRequest.request("signal SIGTERM")
    try:
        with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
            train.fit(fresh_model(), shuffled, dataset(seed=1), 4, quiet_training(epochs=3))
    finally:
        train.StopRequest.reason = None


def test_weight_decay_and_clipnorm_reach_the_optimizer():
    net = build_lstm(20, 2, small_model(embedding_dim=4, units=2), "post")
    plain = train.compile_model(net, 2, quiet_training()).optimizer
    assert plain.weight_decay is None and plain.global_clipnorm is None
    tuned = train.compile_model(
        net, 2, quiet_training(optimizer="adamw", weight_decay=0.01, clipnorm=1.0)
    ).optimizer
    assert isinstance(tuned, keras.optimizers.AdamW)
    assert tuned.weight_decay == pytest.approx(0.01) and tuned.global_clipnorm == 1.0


@pytest.mark.parametrize("classes", [2, 3])
def test_the_loss_is_the_cross_entropy_of_the_true_class(classes):
    """A sigmoid head (two classes) or a softmax head: -log p of the true class."""
    labels = np.array([0, 1, 1, 0])
    probs = np.eye(classes, dtype=np.float32)[labels] * 0.98 + 0.02 / classes
    head = probs[:, 1:] if classes == 2 else probs
    plain = float(train.loss(classes)(labels, head))
    p = 0.98 + 0.02 / classes
    assert plain == pytest.approx(-np.log(p), rel=1e-4)
