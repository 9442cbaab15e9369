"""Compile and fit: early stopping on validation loss with the best weights restored.

Also measures what the padding comparison needs: seconds per epoch and the steady-state
training time (the first, compiling step excluded).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import keras
import tensorflow as tf


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Python, NumPy and TF seeds; `deterministic` also forces deterministic TF kernels."""
    keras.utils.set_random_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()


def distribution(name: str = "default", mixed_precision: bool = False) -> tf.distribute.Strategy:
    """Where the model lives: `default` (one device), `mirrored` (every local GPU, else the
    CPU), `multi_worker` (hosts listed in the TF_CONFIG environment variable)."""
    if mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


class StopOnNaN(keras.callbacks.Callback):
    """Stop with an error (not silently, as TerminateOnNaN does) when the loss diverges."""

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            raise TrainingDiverged(
                f"training loss became {float(loss)} at batch {batch}; lower train.learning_rate"
            )


class Timer(keras.callbacks.Callback):
    """Per epoch: wall seconds, and training-phase seconds without the epoch's first step."""

    def __init__(self):
        super().__init__()
        self.epoch_seconds: list[float] = []
        self.steady_seconds: list[float] = []
        self.steps: list[int] = []

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = time.perf_counter()
        self._first_end = None
        self._last_end = None
        self._count = 0

    def on_train_batch_end(self, batch, logs=None):
        now = time.perf_counter()
        self._first_end = self._first_end or now
        self._last_end = now
        self._count += 1

    def on_epoch_end(self, epoch, logs=None):
        self.epoch_seconds.append(time.perf_counter() - self._epoch_start)
        self.steady_seconds.append((self._last_end or 0.0) - (self._first_end or 0.0))
        self.steps.append(self._count)


@dataclass
class Fit:
    history: dict[str, list[float]]
    epoch_seconds: list[float]
    steady_seconds: list[float]
    steps: list[int]
    best_epoch: int

    def rate(self, per_step: float) -> float:
        """Units (reviews or tokens) per steady-state second, given their mean per step."""
        seconds = sum(self.steady_seconds)
        return per_step * sum(n - 1 for n in self.steps) / seconds if seconds > 0 else float("nan")


def compile_model(
    model: keras.Model, num_classes: int, optimizer: str = "adam", learning_rate: float = 1e-3
) -> keras.Model:
    loss = "binary_crossentropy" if num_classes == 2 else "sparse_categorical_crossentropy"
    opt = keras.optimizers.get(
        {"class_name": optimizer, "config": {"learning_rate": learning_rate}}
    )
    model.compile(optimizer=opt, loss=loss, metrics=["accuracy"])
    return model


def fit(
    model: keras.Model,
    train_ds: tf.data.Dataset,
    val_ds: tf.data.Dataset,
    epochs: int = 10,
    patience: int = 1,
    steps_per_epoch: int | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    verbose: int = 2,
) -> Fit:
    """Fit a compiled model; the returned weights are those of the best validation epoch."""
    timer = Timer()
    stopper = keras.callbacks.EarlyStopping(
        monitor="val_loss", patience=patience, restore_best_weights=True
    )
    if steps_per_epoch:
        train_ds = train_ds.repeat()
    history = model.fit(
        train_ds,
        validation_data=val_ds,
        epochs=epochs,
        verbose=verbose,
        shuffle=False,  # the dataset reshuffles itself
        steps_per_epoch=steps_per_epoch,
        callbacks=[StopOnNaN(), timer, stopper, *callbacks],
    )
    losses = history.history.get("val_loss", [])
    best = int(min(range(len(losses)), key=losses.__getitem__)) if losses else 0
    return Fit(history.history, timer.epoch_seconds, timer.steady_seconds, timer.steps, best)
