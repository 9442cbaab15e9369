"""The LSTM classifier (`model=lstm`, the default): Embedding → (mask) → LSTM → pooling →
head, with the masking mode as data, and by default bow's model beside it (late fusion).

Late fusion (`model.ngram_branch=true`): Keras' loop trains the LSTM alone; then `finish`
solves bow's n-gram model (models/bow.py) on the same training rows and mixes the two
models' logits, `a · lstm + b · ngrams + c`, with a, b and c fit on the validation split's
log loss. Trained apart, neither half starves the other: trained jointly (the former
default), the n-gram weights memorised the training set within two epochs and left the
LSTM almost nothing to learn (docs/results.md has both measured).

Masking modes (`model.masking`):
- `mask_zero`: the Embedding marks id 0 as padding and Keras carries the mask to the LSTM;
- `masking_layer`: a Keras `Masking` layer finds padded steps (their vectors are zeroed first);
- `explicit`: a boolean mask built from each row's true length, passed to the LSTM call;
- `none`: the LSTM reads padding like any other token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import keras
import numpy as np
import tensorflow as tf
from keras import layers, ops

from ..config import NAME_SEP, BatchingConfig, ModelConfig, check, one_of
from . import bow
from .base import ModelInputs
from .fused import LSTM, fused_copy

if TYPE_CHECKING:
    from ..tokenize import Encoded

MASKING = ("mask_zero", "masking_layer", "explicit", "none")


@dataclass
class LstmConfig(bow.Ngrams, ModelConfig):
    name: ClassVar[str] = "lstm"
    embedding_dim: int = 128
    units: int = 64
    bidirectional: bool = True  # reads each review both ways: +1 point on IMDB for 2x time
    dropout: float = 0.3  # on the LSTM inputs, before the head and on the n-gram rows
    masking: str = "mask_zero"  # mask_zero | masking_layer | explicit | none
    # mean: masked average of the LSTM outputs | last: final state. Measured, then removed:
    # max (masked maximum) and concat (mean, max and final state), no gain (docs/results.md)
    pooling: str = "mean"
    # the LSTM the exported model.keras runs: fused (FusedLSTM with the trained weights, same
    # answers; one kernel call per review instead of a loop of small ops per step: single-review
    # latency 3.3x lower in make bench, docs/bench.md) | trained (Keras' LSTM, as trained)
    serve_lstm: str = "fused"
    # mix the LSTM with bow's n-gram model (BowConfig's weighting and C_grid, this config's
    # ngrams and ngram_vocab), weights fit on validation (late fusion, docs/results.md); the
    # padding and masking comparisons turn it off to study the LSTM alone
    ngram_branch: bool = True
    # segments: the LSTM reads each review in windows of this many tokens, all windows of a
    # batch side by side (short loops, wide matmuls), and mean-pools each review over its own
    # windows' steps; null: one pass over the whole review
    segment: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.segment is not None:
            check(self.segment > 0, "model.segment", f"must be null or > 0, got {self.segment}")
            check(
                self.pooling == "mean" and self.masking != "none",
                "model.segment",
                "windows are pooled by their mask: use model.pooling=mean and a masking mode",
            )
        one_of(self.pooling, "model.pooling", ("mean", "last"))
        check(
            self.embedding_dim > 0, "model.embedding_dim", f"must be > 0, got {self.embedding_dim}"
        )
        check(self.units > 0, "model.units", f"must be > 0, got {self.units}")
        check(0 <= self.dropout < 1, "model.dropout", f"must be in [0, 1), got {self.dropout}")
        one_of(self.masking, "model.masking", MASKING)
        one_of(self.serve_lstm, "model.serve_lstm", ("fused", "trained"))

    def variant(self) -> str:
        return "lstm+ngrams" if self.ngram_branch else "lstm"

    def tags(self) -> dict[str, str]:
        return super().tags() | {"masking": self.masking}

    def run_name(self, batching: BatchingConfig) -> str:
        """`bucket·mask_zero+ngrams`: the padding side only when it is not the default."""
        masking = self.masking + ("+ngrams" if self.ngram_branch else "")
        side = [] if batching.padding_side == BatchingConfig.padding_side else ["pre"]
        segment = [f"seg{self.segment}"] if self.segment else []
        return NAME_SEP.join([batching.strategy, masking, *side, *segment])


@keras.saving.register_keras_serializable(package="textclf")
class ZeroPadding(layers.Layer):
    """Zero the embedding vectors of pad ids, so `Masking(mask_value=0.0)` can find them."""

    def call(self, inputs):
        vectors, tokens = inputs
        keep = ops.cast(ops.not_equal(tokens, 0), vectors.dtype)
        return vectors * ops.expand_dims(keep, -1)


@keras.saving.register_keras_serializable(package="textclf")
class LengthMask(layers.Layer):
    """A [batch, time] boolean mask from each row's true length, for `pre` or `post` padding."""

    def __init__(self, padding_side: str = "post", **kwargs):
        super().__init__(**kwargs)
        self.padding_side = padding_side

    def call(self, tokens):
        lengths = ops.sum(ops.cast(ops.not_equal(tokens, 0), "int32"), axis=1, keepdims=True)
        steps = ops.expand_dims(ops.arange(ops.shape(tokens)[1], dtype="int32"), 0)
        if self.padding_side == "pre":
            return steps >= ops.shape(tokens)[1] - lengths
        return steps < lengths

    def get_config(self) -> dict:
        return super().get_config() | {"padding_side": self.padding_side}


@keras.saving.register_keras_serializable(package="textclf")
class Segments(layers.Layer):
    """[batch, time, dim] vectors → [batch · windows, window, dim] and their token mask.

    Time is padded to whole windows on the padding side, so windows start at a review's first
    token (`post`) or end at its last (`pre`) whatever its batch: served alone, a review is cut
    where it was cut in training."""

    def __init__(self, window: int, padding_side: str = "post", **kwargs):
        super().__init__(**kwargs)
        self.window, self.padding_side = window, padding_side

    def call(self, inputs):
        vectors, tokens = inputs
        extra = -ops.shape(tokens)[1] % self.window
        pad = [extra, 0] if self.padding_side == "pre" else [0, extra]
        tokens = ops.pad(tokens, [[0, 0], pad])
        vectors = ops.pad(vectors, [[0, 0], pad, [0, 0]])
        dim = ops.shape(vectors)[-1]
        windows = ops.reshape(vectors, (-1, self.window, dim))
        return windows, ops.reshape(ops.not_equal(tokens, 0), (-1, self.window))

    def compute_mask(self, inputs, mask=None):
        return None

    def get_config(self) -> dict:
        return super().get_config() | {"window": self.window, "padding_side": self.padding_side}


@keras.saving.register_keras_serializable(package="textclf")
class WindowMean(layers.Layer):
    """The mean of the LSTM's outputs over a review's real tokens, across all its windows."""

    def call(self, inputs):
        outputs, mask, tokens = inputs
        rows = ops.shape(tokens)[0]
        outputs = ops.reshape(outputs, (rows, -1, ops.shape(outputs)[-1]))
        keep = ops.cast(ops.reshape(mask, (rows, -1, 1)), outputs.dtype)
        return ops.sum(outputs * keep, axis=1) / ops.maximum(ops.sum(keep, axis=1), 1.0)

    def compute_mask(self, inputs, mask=None):
        return None


def build(cfg: LstmConfig, inputs: ModelInputs) -> keras.Model:
    """An uncompiled model from padded int ids [batch, time] to class probabilities.

    `pooling="last"` classifies from the LSTM's final (last unmasked) state; `"mean"` from the
    average of its outputs over the unmasked steps, which keeps early words of long reviews.
    The explicit mask is shaped for the side the batches are padded on. The n-gram half joins
    in `finish`.
    """
    side = inputs.batching.padding_side
    tokens = keras.Input(shape=(None,), dtype="int32", name="tokens")
    x = layers.Embedding(
        inputs.vocab_size, cfg.embedding_dim, mask_zero=cfg.masking == "mask_zero", name="embedding"
    )(tokens)
    mask = None
    if cfg.masking == "masking_layer":
        x = layers.Masking(mask_value=0.0, name="masking")(
            ZeroPadding(name="zero_padding")([x, tokens])
        )
    elif cfg.masking == "explicit":
        mask = LengthMask(side, name="length_mask")(tokens)
    # cuDNN accepts only right-padded masks: left padding with a mask takes the generic kernel.
    use_cudnn = False if side == "pre" and cfg.masking != "none" else "auto"
    rnn = LSTM(
        cfg.units,
        dropout=cfg.dropout,
        return_sequences=cfg.pooling != "last",
        use_cudnn=use_cudnn,
        name="lstm",
    )
    if cfg.bidirectional:
        rnn = layers.Bidirectional(rnn, name="bilstm")
    if cfg.segment:
        windows, window_mask = Segments(cfg.segment, side, name="segments")([x, tokens])
        x = WindowMean(name="mean_pool")([rnn(windows, mask=window_mask), window_mask, tokens])
    else:
        x = rnn(x, mask=mask)
        if cfg.pooling == "mean":  # over the unmasked steps: padded ones never count
            x = layers.GlobalAveragePooling1D(name="mean_pool")(x, mask=mask)
    x = layers.Dropout(cfg.dropout, name="dropout")(x)
    logits = bow.head_logits(x, inputs.num_classes, name="lstm_logits")
    return keras.Model(tokens, bow.probabilities(logits, inputs.num_classes), name="lstm")


@keras.saving.register_keras_serializable(package="textclf")
class Mix(layers.Layer):
    """Late fusion's logits: `a · lstm + b · ngrams + c`, (a, b) and c (one per logit) set by
    `finish` on the validation split."""

    def build(self, input_shape) -> None:
        self.scales = self.add_weight(
            shape=(2,), initializer="ones", trainable=False, name="scales"
        )
        self.bias = self.add_weight(
            shape=(input_shape[0][-1],), initializer="zeros", trainable=False, name="bias"
        )

    def call(self, inputs):
        lstm, ngrams = inputs
        return self.scales[0] * lstm + self.scales[1] * ngrams + self.bias


def finish(
    net: keras.Model,
    inputs: ModelInputs,
    train: Encoded,
    val: Encoded,
    val_batches,
    cfg: LstmConfig,
) -> tuple[keras.Model, dict[str, float]]:
    """After Keras' loop: with `ngram_branch`, bow's model solved on the training rows and
    mixed with the trained LSTM (`Mix`, weights of the least validation log loss); the model
    to evaluate and export, and what the mixing found."""
    if not cfg.ngram_branch:
        return net, {}
    linear_cfg = bow.BowConfig(ngrams=cfg.ngrams, ngram_vocab=cfg.ngram_vocab)
    linear = bow.build(linear_cfg, inputs)
    _, _, kept, _ = bow.fit(linear, train, val, linear_cfg)
    fused = fuse(net, linear, inputs.num_classes)
    mix = fused.get_layer("mix")
    both = keras.Model(fused.input, mix.input)
    # one graph for batches of every length (predict_on_batch would trace one per length)
    halves = tf.function(lambda x: both(x, training=False), reduce_retracing=True)
    parts = [([h.numpy() for h in halves(x)], y.numpy()) for x, y in val_batches]
    lstm, ngrams = (np.concatenate([p[0][i] for p in parts]) for i in (0, 1))
    labels = np.concatenate([p[1] for p in parts])
    scales, bias = mix_weights(lstm, ngrams, labels)
    mix.set_weights([scales, bias])
    return fused, {
        "val_accuracy_lstm": _accuracy(lstm, labels),
        "val_accuracy_ngrams": _accuracy(ngrams, labels),
        "val_accuracy_mixed": _accuracy(scales[0] * lstm + scales[1] * ngrams + bias, labels),
        "mix_lstm": float(scales[0]),
        "mix_ngrams": float(scales[1]),
        "ngrams_C": float(sorted(linear_cfg.C_grid)[kept]),
    }


def fuse(net: keras.Model, linear: keras.Model, num_classes: int) -> keras.Model:
    """One model of the LSTM `net` and bow's `linear` on the same token ids, their logits
    mixed (`Mix`, layer "mix"): the layers are shared, not copied."""
    tokens = net.input
    ngrams = linear.get_layer("ngrams")(linear.get_layer("id_words")(tokens))
    halves = [net.get_layer("lstm_logits").output, linear.get_layer("logits")(ngrams)]
    mixed = Mix(name="mix", dtype="float32")(halves)
    return keras.Model(tokens, bow.probabilities(mixed, num_classes), name="lstm_ngrams")


def mix_weights(
    lstm: np.ndarray, ngrams: np.ndarray, labels: np.ndarray, l2: float = 1e-3
) -> tuple[np.ndarray, np.ndarray]:
    """(a, b) and c of the least mean log loss of `a · lstm + b · ngrams + c` on `labels`
    (logits [n, 1] of a sigmoid, or [n, classes] of a softmax), a small L2 on (a, b) keeping
    them finite on separable data; L-BFGS from (1, 1, 0)."""
    from scipy.optimize import minimize
    from scipy.special import expit, log_softmax

    n, width = lstm.shape
    lstm, ngrams = lstm.astype("float64"), ngrams.astype("float64")
    target = labels[:, None] if width == 1 else np.eye(width)[labels]

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        a, b, c = theta[0], theta[1], theta[2:]
        z = a * lstm + b * ngrams + c
        if width == 1:
            value = np.mean(np.logaddexp(0, z) - target * z)
            error = (expit(z) - target) / n
        else:
            logp = log_softmax(z, axis=1)
            value = -np.mean(np.sum(target * logp, axis=1))
            error = (np.exp(logp) - target) / n
        grad = [np.sum(error * lstm) + l2 * a, np.sum(error * ngrams) + l2 * b, *error.sum(0)]
        return value + l2 / 2 * (a * a + b * b), np.array(grad)

    found = minimize(loss, np.r_[1.0, 1.0, np.zeros(width)], jac=True, method="L-BFGS-B").x
    return found[:2].astype("float32"), found[2:].astype("float32")


def _accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    guess = (logits[:, 0] > 0).astype(int) if logits.shape[1] == 1 else logits.argmax(axis=1)
    return float((guess == labels).mean())


def serving(net: keras.Model, cfg: LstmConfig) -> keras.Model:
    """The trained network as model.keras runs it: with `serve_lstm=fused`, TensorFlow's fused
    LSTM kernel holding the same weights."""
    return fused_copy(net) if cfg.serve_lstm == "fused" else net
