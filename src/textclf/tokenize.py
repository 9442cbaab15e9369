"""Texts → token ids with Keras `TextVectorization`, adapted on the training texts only.

Id 0 is padding and id 1 is out-of-vocabulary, so a real token is never 0: that is what lets
every masking mode recover the true lengths from a padded batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from . import progress
from .config import TokenizeConfig

BATCH = 1024  # texts vectorized at once
PUNCTUATION = r'[!"#$%&()\*\+,-\./:;<=>?@\[\\\]^_`{|}~\']'


@keras.saving.register_keras_serializable(package="textclf")
def html_standardize(text: tf.Tensor) -> tf.Tensor:
    """Lowercase, `<br />` → space, strip punctuation (registered so saved models load)."""
    text = tf.strings.lower(text)
    text = tf.strings.regex_replace(text, r"<br\s*/?>|[\p{Cc}\p{Zl}\p{Zp}]", " ")
    return tf.strings.regex_replace(text, PUNCTUATION, " ")


def _standardize(name: str):
    """`tokenize.standardize` as `TextVectorization` takes it: Keras' own by name, or ours."""
    return {"html": html_standardize, "none": None}.get(name, name)


@dataclass
class Encoded:
    """Token ids of one split, ragged (no padding yet), truncated to `max_length`."""

    tokens: tf.RaggedTensor
    labels: np.ndarray
    truncated: int

    @property
    def lengths(self) -> np.ndarray:
        return self.tokens.row_lengths().numpy()

    def __len__(self) -> int:
        return int(self.tokens.nrows())


def adapt(texts: list[str], cfg: TokenizeConfig) -> keras.layers.TextVectorization:
    """A vectorizer whose vocabulary comes from `texts` (pass training texts only)."""
    vectorizer = keras.layers.TextVectorization(
        max_tokens=cfg.vocab_size,
        standardize=_standardize(cfg.standardize),
        output_mode="int",
        ragged=True,
    )
    vectorizer.adapt(tf.data.Dataset.from_tensor_slices(texts).batch(BATCH))
    return vectorizer


def encode(
    vectorizer: keras.layers.TextVectorization,
    texts: list[str],
    labels: np.ndarray,
    max_length: int | None,
) -> Encoded:
    """Token ids per text, cut to `max_length`; rows left with no token are an error upstream.
    A bar ticks per batch of 1024 texts: a large split takes a while."""
    stream = tf.data.Dataset.from_tensor_slices(texts).batch(BATCH).map(vectorizer)
    batches = progress.bar(stream, total=-(-len(texts) // BATCH), desc="tokenize", unit="batch")
    tokens = (
        tf.concat(list(batches), axis=0)
        if texts
        else tf.ragged.constant([], dtype=tf.int64, ragged_rank=1)
    )
    tokens = tf.cast(tokens, tf.int32)
    truncated = 0
    if max_length is not None:
        truncated = int(tf.reduce_sum(tf.cast(tokens.row_lengths() > max_length, tf.int32)))
        tokens = tokens[:, :max_length]
    return Encoded(tokens, np.asarray(labels, dtype=np.int32), truncated)


def drop_empty(encoded: Encoded) -> tuple[Encoded, np.ndarray]:
    """Rows with no token (e.g. punctuation only) would be all padding: drop them. Returns the
    kept rows and the boolean mask of which input rows were kept."""
    keep = encoded.lengths > 0
    if keep.all():
        return encoded, keep
    tokens = tf.ragged.boolean_mask(encoded.tokens, tf.constant(keep))
    return Encoded(tokens, encoded.labels[keep], encoded.truncated), keep


def inference_vectorizer(
    vectorizer: keras.layers.TextVectorization, cfg: TokenizeConfig
) -> keras.layers.TextVectorization:
    """The same vocabulary as a dense layer for the exported model (ragged outputs don't save)."""
    config = vectorizer.get_config() | {
        "ragged": False,
        "output_sequence_length": cfg.max_length,
        "vocabulary": None,
        "standardize": _standardize(cfg.standardize),
    }
    dense = keras.layers.TextVectorization(**config)
    dense.set_vocabulary(vectorizer.get_vocabulary())
    return dense
