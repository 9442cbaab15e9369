"""Late fusion: any model mixed with bow's n-gram model (`model.ngram_branch=true`).

A model whose config subclasses `LateFusion` (instead of `ModelConfig`) and whose network ends
in `base.head` gets it with no code of its own (`Mixer`; docs/design.md). Trained apart,
neither half starves the other: trained jointly (the LSTM's former default), the n-gram
weights memorised the training set within two epochs and left the LSTM almost nothing to
learn (docs/results.md has both measured).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from ..config import ModelConfig
from . import bow
from .base import ModelInputs, logits, probabilities

if TYPE_CHECKING:
    from ..tokenize import Encoded

log = logging.getLogger(__name__)


@dataclass
class LateFusion(bow.Ngrams, ModelConfig):
    """A model config that offers the n-gram mix: bow's weighting and C grid, these n-grams."""

    # mix the model with bow's n-gram model, weights fit on validation; the padding and
    # masking comparisons turn it off to study the LSTM alone
    ngram_branch: bool = True

    def variant(self) -> str:
        return f"{self.name}+ngrams" if self.ngram_branch else self.name


@keras.saving.register_keras_serializable(package="textclf")
class Mix(layers.Layer):
    """Late fusion's logits: `a · model + b · ngrams + c`, (a, b) and c (one per logit) set by
    `mix` on the validation split."""

    def build(self, input_shape) -> None:
        self.scales = self.add_weight(
            shape=(2,), initializer="ones", trainable=False, name="scales"
        )
        self.bias = self.add_weight(
            shape=(input_shape[0][-1],), initializer="zeros", trainable=False, name="bias"
        )

    def call(self, inputs):
        model, ngrams = inputs
        return self.scales[0] * model + self.scales[1] * ngrams + self.bias


class Mixer:
    """Late fusion around Keras' loop, to its own early stop: built before training, it solves
    bow's n-gram model (models/bow.py) on the training rows; after training, `mix` mixes."""

    def __init__(
        self,
        net: keras.Model,
        inputs: ModelInputs,
        train: Encoded,
        val: Encoded,
        val_batches,
        cfg: LateFusion,
    ):
        linear_cfg = bow.BowConfig(ngrams=cfg.ngrams, ngram_vocab=cfg.ngram_vocab)
        self.linear = linear = bow.build(linear_cfg, inputs)  # model=bow's model, solved
        _, _, kept, _ = bow.fit(linear, train, val, linear_cfg)
        # the n-gram model's length and C, chosen on validation
        self.n, self.C = bow.grid(linear_cfg)[kept]
        self.fused = fuse(net, linear, inputs.num_classes)
        both = keras.Model(self.fused.input, self.fused.get_layer("mix").input)
        # one graph for batches of every length (predict_on_batch would trace one per length)
        self.halves = tf.function(lambda x: both(x, training=False), reduce_retracing=True)
        self.val_batches, self.name = val_batches, cfg.name

    def logits(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The model's and the n-grams' validation logits, and the labels, in one order."""
        parts = [([h.numpy() for h in self.halves(x)], y.numpy()) for x, y in self.val_batches]
        model, ngrams = (np.concatenate([p[0][i] for p in parts]) for i in (0, 1))
        return model, ngrams, np.concatenate([p[1] for p in parts])

    def mix(self) -> tuple[keras.Model, dict[str, float]]:
        """The fused model, its weights fit on the validation split's log loss (`Mix`), or the
        n-grams alone when the model's cross-fitted lift is below `MIN_GAIN_Z` standard
        errors; what the mixing found (`mix_<model>`, `mix_ngrams`, `mix_lift_z`, each
        half's validation accuracy)."""
        model, ngrams, labels = self.logits()
        z = lift_z(model, ngrams, labels)
        if z >= MIN_GAIN_Z:
            scales, bias = mix_weights(model, ngrams, labels)
        else:  # bow's answer, exactly: its logits, unscaled
            scales, bias = np.array([0, 1], "float32"), np.zeros(ngrams.shape[1], "float32")
            log.info(
                "the %s does not lift the n-grams' validation log loss beyond its noise "
                "(z = %.2f < %g): weight 0, the n-grams' answer kept",
                self.name,
                z,
                MIN_GAIN_Z,
            )
        self.fused.get_layer("mix").set_weights([scales, bias])
        return self.fused, {
            f"val_accuracy_{self.name}": _accuracy(model, labels),
            "val_accuracy_ngrams": _accuracy(ngrams, labels),
            "val_accuracy_mixed": _accuracy(scales[0] * model + scales[1] * ngrams + bias, labels),
            f"mix_{self.name}": float(scales[0]),
            "mix_ngrams": float(scales[1]),
            "mix_lift_z": z,
            "ngrams_n": float(self.n),
            "ngrams_C": float(self.C),
        }


FOLDS = 5  # cross-fitting the mix on validation: fit on 4/5 of the rows, score 1/5

# The model's lift of the mixed validation log loss, in standard errors of its per-row mean,
# below which the mix keeps the n-grams alone: one-sided, about 2% by chance
MIN_GAIN_Z = 2.0


def lift_z(model: np.ndarray, ngrams: np.ndarray, labels: np.ndarray) -> float:
    """How far the model lifts the n-grams: the mean per-row fall in cross-fitted log loss
    from the n-grams alone to the mix, in standard errors (a paired z statistic)."""
    lift = out_of_fold_losses(np.zeros_like(model), ngrams, labels) - out_of_fold_losses(
        model, ngrams, labels
    )
    return float(lift.mean() / max(lift.std(ddof=1) / np.sqrt(len(lift)), 1e-12))


def out_of_fold_losses(model: np.ndarray, ngrams: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Each row's log loss under the mix (`mix_weights`) fit on the other folds' rows: a mix
    scored on the rows it was fit on always looks at least as good as the n-grams alone."""
    fold = np.random.default_rng(0).permutation(len(labels)) % FOLDS
    losses = np.empty(len(labels))
    for k in range(FOLDS):
        fit_rows, held = fold != k, fold == k
        (a, b), c = mix_weights(model[fit_rows], ngrams[fit_rows], labels[fit_rows])
        losses[held] = row_losses(a * model[held] + b * ngrams[held] + c, labels[held])
    return losses


def row_losses(z: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-row log loss of logits `z` ([n, 1] of a sigmoid, or [n, classes] of a softmax)."""
    from scipy.special import log_softmax

    z = z.astype("float64")
    if z.shape[1] == 1:
        return np.logaddexp(0, z[:, 0]) - labels * z[:, 0]
    return -log_softmax(z, axis=1)[np.arange(len(labels)), labels]


def fuse(net: keras.Model, linear: keras.Model, num_classes: int) -> keras.Model:
    """One model of `net` and bow's `linear` on the same token ids, their logits mixed (`Mix`,
    layer "mix"): the layers are shared, not copied."""
    tokens = net.input
    ngrams = linear.get_layer("ngrams")(linear.get_layer("id_words")(tokens))
    halves = [logits(net), linear.get_layer(bow.LOGITS)(ngrams)]
    mixed = Mix(name="mix", dtype="float32")(halves)
    return keras.Model(tokens, probabilities(mixed, num_classes), name=f"{net.name}_ngrams")


def mix_weights(
    model: np.ndarray, ngrams: np.ndarray, labels: np.ndarray, l2: float = 1e-3
) -> tuple[np.ndarray, np.ndarray]:
    """(a, b) and c of the least mean log loss of `a · model + b · ngrams + c` on `labels`
    (logits [n, 1] of a sigmoid, or [n, classes] of a softmax), a small L2 on (a, b) keeping
    them finite on separable data; L-BFGS from (1, 1, 0)."""
    from scipy.optimize import minimize
    from scipy.special import expit, log_softmax

    n, width = model.shape
    model, ngrams = model.astype("float64"), ngrams.astype("float64")
    target = labels[:, None] if width == 1 else np.eye(width)[labels]

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        a, b, c = theta[0], theta[1], theta[2:]
        z = a * model + b * ngrams + c
        error = ((expit(z) if width == 1 else np.exp(log_softmax(z, axis=1))) - target) / n
        grad = [np.sum(error * model) + l2 * a, np.sum(error * ngrams) + l2 * b, *error.sum(0)]
        return row_losses(z, labels).mean() + l2 / 2 * (a * a + b * b), np.array(grad)

    found = minimize(loss, np.r_[1.0, 1.0, np.zeros(width)], jac=True, method="L-BFGS-B").x
    return found[:2].astype("float32"), found[2:].astype("float32")


def _accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    guess = (logits[:, 0] > 0).astype(int) if logits.shape[1] == 1 else logits.argmax(axis=1)
    return float((guess == labels).mean())
