"""The bag-of-n-grams baseline (`model=bow`): tf-idf weighted word n-grams → one Dense layer,
and the same features for the LSTM's n-gram branch.

It reads the same padded token ids as the LSTM, so batching, evaluation, export (raw strings
in), `make predict` and serving are shared unchanged: each row's ids are written as a string
of id "words", and `SparseTfIdf` (adapted on the training rows) turns them into sparse tf-idf
n-gram rows. Each row is rescaled as scikit-learn's `TfidfVectorizer` rescales to unit
length, but to a scale at which the LSTM's learning rate trains it in a few epochs (`SCALE`).
Words outside `tokenize.vocab_size` share the OOV id, and `tokenize.max_length` truncates, as
for the LSTM.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import keras
import numpy as np
import tensorflow as tf
from keras import layers, ops

from ..config import ModelConfig, check
from .base import ModelInputs

# The root mean square of a row's present n-gram weights. The row's direction is kept (what
# unit length gives), at a size that suits Adam at the template's learning rate: with unit
# length a 300-n-gram review's values are ~0.06 and training takes tens of epochs on IMDB; with
# an RMS of 8, 20 epochs (test accuracy 0.900); with 32, about 7 (docs/other_data.md). A logit
# moves about SCALE times faster per step, as with a learning rate SCALE times larger, so
# `train.learning_rate` stays one setting for every model.
SCALE = 32.0


@dataclass
class Ngrams:
    """The n-gram features' settings, shared by bow and the LSTM's n-gram branch."""

    ngrams: int = 2  # word n-grams up to this length
    # the most frequent n-grams of the training texts kept (a sparse tf-idf row each)
    ngram_vocab: int = 100000

    def __post_init__(self) -> None:
        check(self.ngrams > 0, "model.ngrams", f"must be > 0, got {self.ngrams}")
        check(self.ngram_vocab > 1, "model.ngram_vocab", f"must be > 1, got {self.ngram_vocab}")


@dataclass
class BowConfig(Ngrams, ModelConfig):
    """`model=bow`: a linear classifier on tf-idf weighted word n-grams of the token ids."""

    name: ClassVar[str] = "bow"
    dropout: float = 0.3  # of each row's present n-grams, while training

    def __post_init__(self) -> None:
        super().__post_init__()
        check(0 <= self.dropout < 1, "model.dropout", f"must be in [0, 1), got {self.dropout}")


@keras.saving.register_keras_serializable(package="textclf")
class IdWords(layers.Layer):
    """Padded ids [batch, time] → one string per row, its non-padding ids joined by spaces."""

    def call(self, ids):
        return words(tf.ragged.boolean_mask(ids, tf.not_equal(ids, 0)))

    def compute_output_shape(self, input_shape):
        return (input_shape[0],)


def words(ids: tf.RaggedTensor) -> tf.Tensor:
    """Ragged ids → "12 7 431 ..." per row."""
    return tf.strings.reduce_join(
        tf.strings.as_string(tf.cast(ids, tf.int64)), axis=1, separator=" "
    )


@keras.saving.register_keras_serializable(package="textclf")
class SparseTfIdf(layers.Layer):
    """Id-word strings → sparse [batch, n-grams] tf-idf rows, each scaled so its present
    values have a root mean square of `scale`, with `rate` of them dropped while training.

    The values are those of `TextVectorization(output_mode="tf_idf")` (counts × Keras' idf,
    `log(1 + documents / (1 + document count))`, the mean idf for out-of-vocabulary n-grams),
    but sparse: a dense row is `ngram_vocab` floats, and building, scaling, dropping out and
    multiplying 256 of them took ~8× the time of the sparse rows (docs/design.md). Keras'
    own sparse tf_idf fails when called (a GatherNd on its idf weights), so this counts n-grams
    with `output_mode="count", sparse=True` and weighs them itself. `adapt` sets the
    vocabulary and idf from training rows; model.keras saves both.
    """

    def __init__(
        self,
        ngrams: int,
        max_tokens: int,
        size: int = 1,
        scale: float = SCALE,
        rate: float = 0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.ngrams, self.max_tokens, self.size = ngrams, max_tokens, size
        self.scale, self.rate = scale, rate
        self.counts = layers.TextVectorization(
            max_tokens=max_tokens,
            standardize=None,
            split="whitespace",
            ngrams=ngrams,
            output_mode="count",
            sparse=True,
            name="ngram_counts",
        )
        self.seed = keras.random.SeedGenerator()
        self._adapted_idf: np.ndarray | None = None

    def build(self, input_shape) -> None:
        self.idf = self.add_weight(
            shape=(self.size,), initializer="ones", trainable=False, name="idf"
        )
        if self._adapted_idf is not None:
            self.idf.assign(self._adapted_idf)

    def adapt(self, texts: tf.data.Dataset) -> None:
        """Vocabulary (the `max_tokens` most frequent n-grams) and idf from batches of texts;
        a layer is adapted once, before it is called."""
        self.counts.adapt(texts)
        size = self.counts.vocabulary_size()
        documents, frequency = 0, np.zeros(size, np.int64)
        for batch in texts:
            columns = self.counts(batch).indices[:, 1].numpy()  # one entry per (row, n-gram)
            frequency += np.bincount(columns, minlength=size)
            documents += int(batch.shape[0])
        idf = np.log1p(documents / (1.0 + frequency[1:]))
        self.size = size
        self._adapted_idf = np.concatenate([[idf.mean() if len(idf) else 1.0], idf])

    def call(self, texts, training=False):
        counts = self.counts(texts)
        values = ops.cast(counts.values, self.compute_dtype) * ops.take(
            self.idf, counts.indices[:, 1]
        )
        rows, present = counts.indices[:, 0], ops.ones_like(values)
        batch = ops.shape(texts)[0]
        squares = tf.math.unsorted_segment_sum(ops.square(values), rows, batch)
        count = tf.math.unsorted_segment_sum(present, rows, batch)
        values = values * ops.take(self.scale * ops.sqrt(count / ops.maximum(squares, 1e-12)), rows)
        if training and self.rate:
            keep = keras.random.uniform(ops.shape(values), seed=self.seed) >= self.rate
            values = ops.where(keep, values / (1.0 - self.rate), ops.zeros_like(values))
        return tf.SparseTensor(counts.indices, values, counts.dense_shape)

    def compute_output_spec(self, texts, training=False):
        return keras.KerasTensor((texts.shape[0], self.size), dtype=self.compute_dtype, sparse=True)

    def get_config(self) -> dict:
        return super().get_config() | {
            "ngrams": self.ngrams,
            "max_tokens": self.max_tokens,
            "size": self.size,
            "scale": self.scale,
            "rate": self.rate,
        }


def ngram_features(train_tokens: tf.RaggedTensor, cfg: Ngrams, dropout: float) -> Callable:
    """Padded ids → sparse scaled tf-idf n-gram rows (`dropout` of them in training), the
    vocabulary and document frequencies adapted on `train_tokens` (the training rows' ids,
    unpadded); for bow and the LSTM's n-gram branch."""
    if train_tokens is None:
        raise ValueError("n-gram features adapt on the training rows: pass train_tokens")
    tfidf = SparseTfIdf(cfg.ngrams, cfg.ngram_vocab, rate=dropout, dtype="float32", name="ngrams")
    tfidf.adapt(tf.data.Dataset.from_tensor_slices(words(train_tokens)).batch(1024))
    id_words = IdWords(name="id_words")
    return lambda tokens: tfidf(id_words(tokens))


def build(cfg: BowConfig, inputs: ModelInputs) -> keras.Model:
    """An uncompiled model from padded int ids to class probabilities (see `ngram_features`)."""
    tokens = keras.Input(shape=(None,), dtype="int32", name="tokens")
    features = ngram_features(inputs.train_tokens, cfg, cfg.dropout)(tokens)
    return keras.Model(tokens, head([features], inputs.num_classes), name="bow")


def head(features: list, num_classes: int):
    """Class probabilities from one or more feature tensors (dense or sparse): one linear
    layer over all of them, as a Dense over their concatenation would be, without densifying
    sparse n-gram rows. Zero weights to start, as logistic regression does: random ones over
    scaled tf-idf rows give confident random answers (a starting loss of ~7 on tiny data)."""
    width, activation = (1, "sigmoid") if num_classes == 2 else (num_classes, "softmax")
    logits = [
        layers.Dense(
            width,
            kernel_initializer="zeros",
            use_bias=i == 0,
            dtype="float32",
            name="logits" if len(features) == 1 else f"logits_{i}",
        )(x)
        for i, x in enumerate(features)
    ]
    if len(logits) > 1:
        logits = [layers.Add(name="logits", dtype="float32")(logits)]
    name = "probability" if num_classes == 2 else "probabilities"
    return layers.Activation(activation, dtype="float32", name=name)(logits[0])
