"""Late fusion: any model mixed with bow's n-gram model (`model.ngram_branch=true`).

A model whose config subclasses `LateFusion` (instead of `ModelConfig`) and whose network ends
in `base.head` gets it with no code of its own: Keras' loop trains the model alone; then `mix`
solves bow's n-gram model (models/bow.py) on the same training rows and mixes the two models'
logits, `a · model + b · ngrams + c`, with a, b and c fit on the validation split's log loss.
Trained apart, neither half starves the other: trained jointly (the LSTM's former default),
the n-gram weights memorised the training set within two epochs and left the LSTM almost
nothing to learn (docs/results.md has both measured).
"""

from __future__ import annotations

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


def mix(
    net: keras.Model,
    inputs: ModelInputs,
    train: Encoded,
    val: Encoded,
    val_batches,
    cfg: LateFusion,
) -> tuple[keras.Model, dict[str, float]]:
    """bow's model solved on the training rows and mixed with the trained `net` (`Mix`,
    weights of the least validation log loss): the model to evaluate and export, and what
    the mixing found (`mix_<model>`, `mix_ngrams`, each half's validation accuracy)."""
    linear_cfg = bow.BowConfig(ngrams=cfg.ngrams, ngram_vocab=cfg.ngram_vocab)
    linear = bow.build(linear_cfg, inputs)
    _, _, kept, _ = bow.fit(linear, train, val, linear_cfg)
    fused = fuse(net, linear, inputs.num_classes)
    both = keras.Model(fused.input, fused.get_layer("mix").input)
    # one graph for batches of every length (predict_on_batch would trace one per length)
    halves = tf.function(lambda x: both(x, training=False), reduce_retracing=True)
    parts = [([h.numpy() for h in halves(x)], y.numpy()) for x, y in val_batches]
    model, ngrams = (np.concatenate([p[0][i] for p in parts]) for i in (0, 1))
    labels = np.concatenate([p[1] for p in parts])
    scales, bias = mix_weights(model, ngrams, labels)
    fused.get_layer("mix").set_weights([scales, bias])
    return fused, {
        f"val_accuracy_{cfg.name}": _accuracy(model, labels),
        "val_accuracy_ngrams": _accuracy(ngrams, labels),
        "val_accuracy_mixed": _accuracy(scales[0] * model + scales[1] * ngrams + bias, labels),
        f"mix_{cfg.name}": float(scales[0]),
        "mix_ngrams": float(scales[1]),
        "ngrams_C": float(sorted(linear_cfg.C_grid)[kept]),
    }


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
        if width == 1:
            value = np.mean(np.logaddexp(0, z) - target * z)
            error = (expit(z) - target) / n
        else:
            logp = log_softmax(z, axis=1)
            value = -np.mean(np.sum(target * logp, axis=1))
            error = (np.exp(logp) - target) / n
        grad = [np.sum(error * model) + l2 * a, np.sum(error * ngrams) + l2 * b, *error.sum(0)]
        return value + l2 / 2 * (a * a + b * b), np.array(grad)

    found = minimize(loss, np.r_[1.0, 1.0, np.zeros(width)], jac=True, method="L-BFGS-B").x
    return found[:2].astype("float32"), found[2:].astype("float32")


def _accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    guess = (logits[:, 0] > 0).astype(int) if logits.shape[1] == 1 else logits.argmax(axis=1)
    return float((guess == labels).mean())
