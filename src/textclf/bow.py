"""The bag-of-n-grams baseline (`model=bow`): tf-idf weighted word n-grams → one Dense layer.

It reads the same padded token ids as the LSTM, so batching, evaluation, export (raw strings
in), `make predict` and serving are shared unchanged: each row's ids are written as a string
of id "words", and a `TextVectorization(output_mode="tf_idf", ngrams=...)` adapted on the
training rows counts their n-grams. Each row is rescaled (`ActiveRMS`) as scikit-learn's
`TfidfVectorizer` rescales to unit length, but to a scale at which the LSTM's learning rate
trains it in a few epochs. Words outside `tokenize.vocab_size` share the OOV id, and
`tokenize.max_length` truncates, as for the LSTM.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import tensorflow as tf
from keras import layers, ops

from .config import ModelConfig

SCALE = 32.0  # ActiveRMS: the root mean square of a row's present n-gram weights


@keras.saving.register_keras_serializable(package="textclf")
class IdWords(layers.Layer):
    """Padded ids [batch, time] → one string per row, its non-padding ids joined by spaces."""

    def call(self, ids):
        return words(tf.ragged.boolean_mask(ids, tf.not_equal(ids, 0)))

    def compute_output_shape(self, input_shape):
        return (input_shape[0],)


@keras.saving.register_keras_serializable(package="textclf")
class ActiveRMS(layers.Layer):
    """Scale each row so its nonzero values have a root mean square of `scale`.

    The row's direction is kept (what unit length gives), at a size that suits Adam at the
    template's learning rate: with unit length a 300-n-gram review's values are ~0.06 and
    training takes tens of epochs on IMDB; with an RMS of 8, 20 epochs (test accuracy 0.900);
    with 32, about 7 (docs/other_data.md). A logit moves about `scale` times faster per step,
    as with a learning rate `scale` times larger, so `train.learning_rate` stays one setting
    for every model (bow with train.learning_rate=1.25e-4 trains as with an RMS of 8).
    """

    def __init__(self, scale: float = SCALE, **kwargs):
        super().__init__(**kwargs)
        self.scale = scale

    def call(self, x):
        present = ops.sum(ops.cast(ops.not_equal(x, 0), x.dtype), axis=-1, keepdims=True)
        squares = ops.sum(ops.square(x), axis=-1, keepdims=True)
        return x * (self.scale * ops.sqrt(present / ops.maximum(squares, 1e-12)))

    def get_config(self) -> dict:
        return super().get_config() | {"scale": self.scale}


def words(ids: tf.RaggedTensor) -> tf.Tensor:
    """Ragged ids → "12 7 431 ..." per row."""
    return tf.strings.reduce_join(tf.strings.as_string(tf.cast(ids, tf.int64)), axis=1,
                                  separator=" ")


def ngram_features(train_tokens: tf.RaggedTensor, cfg: ModelConfig) -> Callable:
    """Padded ids → scaled tf-idf n-gram rows, the vocabulary and document frequencies adapted
    on `train_tokens` (the training rows' ids, unpadded); for bow and the LSTM's n-gram branch."""
    ngrams = layers.TextVectorization(
        max_tokens=cfg.ngram_vocab, standardize=None, split="whitespace", ngrams=cfg.ngrams,
        output_mode="tf_idf", name="ngrams")
    ngrams.adapt(tf.data.Dataset.from_tensor_slices(words(train_tokens)).batch(1024))
    id_words, scale = IdWords(name="id_words"), ActiveRMS(name="active_rms")
    return lambda tokens: scale(ngrams(id_words(tokens)))


def build(train_tokens: tf.RaggedTensor, num_classes: int, cfg: ModelConfig) -> keras.Model:
    """An uncompiled model from padded int ids to class probabilities (see `ngram_features`)."""
    tokens = keras.Input(shape=(None,), dtype="int32", name="tokens")
    x = ngram_features(train_tokens, cfg)(tokens)
    x = layers.Dropout(cfg.dropout, name="dropout")(x)
    return keras.Model(tokens, head(x, num_classes), name="bow")


def head(x, num_classes: int):
    """Class probabilities from features, with zero weights to start, as logistic regression
    does: random ones over scaled tf-idf rows give confident random answers (a starting loss
    of ~7 on tiny data)."""
    if num_classes == 2:
        return layers.Dense(1, activation="sigmoid", kernel_initializer="zeros",
                            dtype="float32", name="probability")(x)
    return layers.Dense(num_classes, activation="softmax", kernel_initializer="zeros",
                        dtype="float32", name="probabilities")(x)
