"""Compile and fit: early stopping on validation loss (a fall of at least `min_delta` counts)
with the best weights restored.

Also measures what the padding comparison needs: seconds per epoch and the steady-state
training time (the first, compiling step excluded), and keeps a checkpoint after every epoch
from which an interrupted run continues to the result an uninterrupted one reaches.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import time
import zipfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from .config import TrainConfig

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


def seed_everything(seed: int, deterministic: bool) -> None:
    """Python, NumPy and TF seeds; `deterministic` also forces deterministic TF kernels."""
    keras.utils.set_random_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()


class StopOnNaN(keras.callbacks.Callback):
    """Stop with an error (not silently, as TerminateOnNaN does) when the loss diverges."""

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            raise TrainingDiverged(
                f"training loss became {float(loss)} at batch {batch}; lower train.learning_rate"
            )


class StopRequest(keras.callbacks.Callback):
    """Ends training with KeyboardInterrupt at the next batch once `request` was called.

    A signal handler's own KeyboardInterrupt can be lost: Python drops an exception raised
    while a `__del__` runs, and TF's iterators run them every epoch. This flag is not lost.
    """

    reason: str | None = None  # one per process, like the signal that sets it

    @classmethod
    def request(cls, reason: str) -> None:
        cls.reason = reason

    def on_train_batch_end(self, batch, logs=None):
        if StopRequest.reason:
            raise KeyboardInterrupt(StopRequest.reason)

    on_test_batch_end = on_train_batch_end


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
    stop_reason: str  # why training ended: see `stop_reason`

    def rate(self, per_step: float) -> float:
        """Units (reviews or tokens) per steady-state second, given their mean per step."""
        seconds = sum(self.steady_seconds)
        return per_step * sum(n - 1 for n in self.steps) / seconds if seconds > 0 else float("nan")


def peak_rss_mb() -> float:
    """Peak resident memory of this process (Linux VmHWM, resettable; else ru_maxrss)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> None:
    """Linux: writing 5 to clear_refs resets this process's peak-RSS counter (VmHWM)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def compile_model(model: keras.Model, num_classes: int, cfg: TrainConfig) -> keras.Model:
    settings: dict[str, float] = {"learning_rate": cfg.learning_rate}
    if cfg.weight_decay or cfg.optimizer == "adamw":  # not AdamW's own hidden 0.004
        settings["weight_decay"] = cfg.weight_decay
    if cfg.clipnorm:
        settings["global_clipnorm"] = cfg.clipnorm
    opt = keras.optimizers.get({"class_name": cfg.optimizer, "config": settings})
    model.compile(optimizer=opt, loss=loss(num_classes), metrics=["accuracy"])
    return model


def loss(num_classes: int) -> keras.losses.Loss:
    """Cross-entropy for a sigmoid (two classes) or softmax head."""
    if num_classes == 2:
        return keras.losses.BinaryCrossentropy()
    return keras.losses.SparseCategoricalCrossentropy()


class CheckpointMismatch(RuntimeError):
    """The checkpoint does not fit the model (another configuration wrote it) or is unreadable."""


class EarlyStopping(keras.callbacks.Callback):
    """Keras' `EarlyStopping(monitor="val_loss", restore_best_weights=True)`, with its threshold
    relative: a new best must lie `min_delta` (a fraction) below the last one. Keras' absolute
    `min_delta` means one thing at a loss of 0.9 (many classes, noisy labels) and another at
    0.05; a val_loss that falls by 0.3% an epoch at flat accuracy is not learning."""

    def __init__(self, patience: int, min_delta: float):
        super().__init__()
        self.patience, self.min_delta = patience, min_delta
        self.wait, self.best_epoch = 0, 0
        self.best: float | None = None
        self.best_weights: list[np.ndarray] | None = None

    def on_epoch_end(self, epoch, logs=None):
        loss = float(logs["val_loss"])
        if self.best is None or loss < self.best * (1 - self.min_delta):
            self.wait, self.best, self.best_epoch = 0, loss, epoch
            self.best_weights = self.model.get_weights()
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.best_weights is not None:
            self.model.set_weights(self.best_weights)


class Checkpoint(keras.callbacks.Callback):
    """The whole training state after the last completed epoch, in one `.npz` file.

    Keras' `BackupAndRestore` keeps the weights and the optimizer; continuing exactly also
    needs the dropout RNG state, the early stopper's progress and the history, so this keeps
    all of them. The file is replaced atomically after every epoch: a kill at any moment
    leaves the previous epoch's file whole. Put it after the `EarlyStopping` whose progress it
    saves.
    """

    def __init__(self, path: Path | None, stopper: EarlyStopping, timer: Timer):
        super().__init__()
        self.path, self.stopper, self.timer = path, stopper, timer
        self.history: dict[str, list[float]] = {}
        self.epoch = 0  # epochs completed
        self.done = False  # training finished; the model holds its final (best) weights
        self._saved: dict[str, np.ndarray] | None = None
        if path and path.exists():
            self._saved, meta = read_checkpoint(path)
            if self._saved:
                self.epoch, self.done, self.history = meta["epoch"], meta["done"], meta["history"]
                for key in ("wait", "best", "best_epoch"):  # `fit` reads the kept epoch from it
                    setattr(stopper, key, meta["stopper"][key])
                stopper.best_weights = _group(self._saved, "best") or None
                for name in ("epoch_seconds", "steady_seconds", "steps"):
                    getattr(timer, name).extend(meta["timer"][name])

    def restore_variables(self, model: keras.Model) -> None:
        """Weights, RNG state and optimizer slots as saved (call before `fit`)."""
        if not self._saved:
            return
        if not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        _assign(model.variables, self._saved, "model", self.path)
        _assign(model.optimizer.variables, self._saved, "optimizer", self.path)

    def on_epoch_end(self, epoch, logs=None):
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(float(value))
        self.epoch = epoch + 1
        self._save()

    def on_train_end(self, logs=None):
        # Not reached when training is interrupted or diverges: then the last epoch's file stays.
        self.done = True
        self._save()

    def _save(self) -> None:
        if not self.path:
            return
        s, t = self.stopper, self.timer
        meta = {
            "epoch": self.epoch,
            "done": self.done,
            "history": self.history,
            "stopper": {
                "wait": s.wait,
                "best": None if s.best is None else float(s.best),
                "best_epoch": s.best_epoch,
            },
            "timer": {
                "epoch_seconds": t.epoch_seconds,
                "steady_seconds": t.steady_seconds,
                "steps": t.steps,
            },
        }
        arrays = {"meta": np.array(json.dumps(meta))}
        for prefix, variables in (
            ("model", self.model.variables),
            ("optimizer", self.model.optimizer.variables),
        ):
            arrays |= {f"{prefix}_{i}": v.numpy() for i, v in enumerate(variables)}
        arrays |= {f"best_{i}": w for i, w in enumerate(s.best_weights or [])}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(self.path.name + ".partial")
        with open(partial, "wb") as f:
            # numpy's stub matches **arrays against savez's allow_pickle: bool as well
            np.savez(f, **arrays)  # type: ignore[arg-type]
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, self.path)


def _group(saved: dict[str, np.ndarray], prefix: str) -> list[np.ndarray]:
    """The arrays saved as `<prefix>_0`, `<prefix>_1`, ... in that order."""
    keys = [k for k in saved if k.startswith(prefix + "_")]
    return [saved[k] for k in sorted(keys, key=lambda k: int(k.rsplit("_", 1)[1]))]


_META = ("epoch", "done", "history", "stopper", "timer")
# What reading a truncated (a full disk, a copy cut short) or corrupt .npz raises.
_DAMAGED = (OSError, ValueError, EOFError, KeyError, TypeError, zipfile.BadZipFile, zlib.error)


def read_checkpoint(path: Path) -> tuple[dict[str, np.ndarray], dict]:
    """A checkpoint's arrays and its `meta` record. A damaged file is a CheckpointMismatch
    naming it and the ways on (a zipfile traceback told neither)."""
    try:
        with np.load(path) as saved:
            arrays = {k: saved[k] for k in saved.files}
        meta = json.loads(arrays.pop("meta").item())
        missing = [key for key in _META if key not in meta]
        if missing:
            raise KeyError(f"no {', '.join(missing)} in its record")
    except _DAMAGED as error:
        raise CheckpointMismatch(
            f"the checkpoint {path} is damaged or no checkpoint ({type(error).__name__}: "
            f"{str(error)[:200]}). Start again: delete it (rm {path}), or run without "
            "train.resume (a fresh run in the folder replaces it)."
        ) from error
    return arrays, meta


def _assign(variables: list, saved: dict[str, np.ndarray], prefix: str, path: Path | None) -> None:
    arrays = _group(saved, prefix)
    shapes = [tuple(v.shape) for v in variables]
    if shapes != [a.shape for a in arrays]:
        raise CheckpointMismatch(
            f"the checkpoint {path} holds {prefix} variables of other shapes than this "
            "configuration builds; resume with the configuration that wrote it."
        )
    for variable, array in zip(variables, arrays, strict=True):
        variable.assign(array)


def epoch_limit(cfg: TrainConfig, steps_per_epoch: int) -> int:
    """`cfg.epochs`, or fewer when `cfg.max_steps` optimizer steps are reached first (rounded up
    to a whole epoch): a budget in updates that small and large datasets alike get."""
    if cfg.max_steps is None:
        return cfg.epochs
    return max(1, min(cfg.epochs, math.ceil(cfg.max_steps / max(1, steps_per_epoch))))


def fit(
    model: keras.Model,
    train_epoch: Callable[[int], tf.data.Dataset],
    val_ds: tf.data.Dataset,
    steps_per_epoch: int,
    cfg: TrainConfig,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    checkpoint: Path | None = None,
) -> Fit:
    """Fit a compiled model; the returned weights are those of the best validation epoch.

    `train_epoch(e)` gives epoch e's batches; each Keras epoch takes `steps_per_epoch` of
    them (`epoch_limit` epochs at most, `cfg.patience`, `cfg.verbose` as configured). With
    `checkpoint`, training continues from the epoch saved there, if any: as epoch e's order
    depends on e alone, the resumed run sees the batches an uninterrupted one would.
    """
    epochs = epoch_limit(cfg, steps_per_epoch)
    timer = Timer()
    stopper = EarlyStopping(cfg.patience, cfg.min_delta)
    state = Checkpoint(checkpoint, stopper, timer)
    state.restore_variables(model)
    if state.epoch:
        log.info(
            "resuming from %s after epoch %d%s",
            checkpoint,
            state.epoch,
            " (training had finished)" if state.done else "",
        )
    if not state.done:
        first = state.epoch  # == epochs if stopped before the end: fit restores the best
        parts = [
            train_epoch(e).repeat().take(steps_per_epoch)
            for e in range(first, max(epochs, first + 1))
        ]
        train_ds = functools.reduce(tf.data.Dataset.concatenate, parts).prefetch(tf.data.AUTOTUNE)
        model.fit(
            train_ds,
            validation_data=val_ds,
            epochs=epochs,
            initial_epoch=first,
            verbose=cfg.verbose,
            shuffle=False,  # the dataset orders each epoch itself
            steps_per_epoch=steps_per_epoch,
            callbacks=[StopRequest(), StopOnNaN(), timer, stopper, *callbacks, state],
        )
    best = stopper.best_epoch
    return Fit(
        state.history,
        timer.epoch_seconds,
        timer.steady_seconds,
        timer.steps,
        best,
        stop_reason(len(timer.epoch_seconds), best, cfg, steps_per_epoch),
    )


def stop_reason(
    epochs_run: int,
    best_epoch: int,
    cfg: TrainConfig,
    steps_per_epoch: int,
) -> str:
    """Why training ended after `epochs_run` epochs: early stopping (fewer epochs than the
    limit: interruptions and divergence raise instead), `max_steps` or `epochs`."""
    limit = epoch_limit(cfg, steps_per_epoch)
    if epochs_run < limit:
        return (
            f"early_stopping: val_loss fell by less than train.min_delta={cfg.min_delta:g} "
            f"of its best for train.patience={cfg.patience} epochs after epoch "
            f"{best_epoch + 1}"
        )
    if limit < cfg.epochs:
        return f"max_steps: train.max_steps={cfg.max_steps} optimizer steps ({limit} epochs)"
    return f"epochs: train.epochs={cfg.epochs}"
