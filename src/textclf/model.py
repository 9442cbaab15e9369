"""The classifier: Embedding → (mask) → LSTM → dense head, with the masking mode as data.

Masking modes (`model.masking`):
- `mask_zero`: the Embedding marks id 0 as padding and Keras carries the mask to the LSTM;
- `masking_layer`: a Keras `Masking` layer finds padded steps (their vectors are zeroed first);
- `explicit`: a boolean mask built from each row's true length, passed to the LSTM call;
- `none`: the LSTM reads padding like any other token.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np
from keras import layers, ops

from . import bow
from .config import ModelConfig
from .lstm import FusedLSTM, HoistedLSTM


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
class MaskedMaxPooling(layers.Layer):
    """The maximum over unmasked steps (`GlobalMaxPooling1D` takes no mask, so padded steps'
    outputs would count)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True

    def call(self, inputs, mask=None):
        if mask is not None:
            lowest = ops.cast(-1e9, inputs.dtype) if inputs.dtype != "float16" else -6e4
            inputs = ops.where(ops.expand_dims(mask, -1), inputs, lowest)
        return ops.max(inputs, axis=1)

    def compute_mask(self, inputs, mask=None):
        return None


def build(
    vocab_size: int, num_classes: int, cfg: ModelConfig, padding_side: str,
    ngram_features: Callable | None = None,
) -> keras.Model:
    """An uncompiled model from padded int ids [batch, time] to class probabilities.

    `pooling="last"` classifies from the LSTM's final (last unmasked) state; `"mean"` from the
    average of its outputs over the unmasked steps, which keeps early words of long reviews;
    `"max"` from their maximum; `"concat"` from all three side by side.
    `padding_side` must be the side the batches are padded on (it shapes the explicit mask).
    `ngram_features` (`model.ngram_branch`: `bow.ngram_features`) maps the ids to n-gram
    features that join the pooled vector before the head (zero-initialised, as bow's).
    """
    tokens = keras.Input(shape=(None,), dtype="int32", name="tokens")
    x = layers.Embedding(
        vocab_size, cfg.embedding_dim, mask_zero=cfg.masking == "mask_zero", name="embedding"
    )(tokens)
    mask = None
    if cfg.embedding_dropout:
        x = layers.SpatialDropout1D(cfg.embedding_dropout, name="embedding_dropout")(x)
    if cfg.masking == "masking_layer":
        x = layers.Masking(mask_value=0.0, name="masking")(
            ZeroPadding(name="zero_padding")([x, tokens])
        )
    elif cfg.masking == "explicit":
        mask = LengthMask(padding_side, name="length_mask")(tokens)
    # cuDNN accepts only right-padded masks: left padding with a mask takes the generic kernel.
    use_cudnn = False if padding_side == "pre" and cfg.masking != "none" else "auto"
    lstm_class = {"keras": layers.LSTM, "hoisted": HoistedLSTM, "fused": FusedLSTM}[cfg.lstm]
    rnn = lstm_class(cfg.units, dropout=cfg.dropout, return_sequences=cfg.pooling != "last",
                     return_state=cfg.pooling == "concat", use_cudnn=use_cudnn, name="lstm")
    if cfg.bidirectional:
        rnn = layers.Bidirectional(rnn, name="bilstm")
    x = rnn(x, mask=mask)
    x = _pool(x, cfg, mask)
    x = layers.Dropout(cfg.dropout, name="dropout")(x)
    if ngram_features is not None:  # wide and deep: one linear head over both
        return keras.Model(tokens, bow.head([x, ngram_features(tokens)], num_classes),
                           name=f"lstm_ngrams_{cfg.masking}")
    if num_classes == 2:
        outputs = layers.Dense(1, activation="sigmoid", dtype="float32", name="probability")(x)
    else:
        outputs = layers.Dense(num_classes, activation="softmax", dtype="float32",
                               name="probabilities")(x)
    return keras.Model(tokens, outputs, name=f"lstm_{cfg.masking}")


def _pool(outputs, cfg: ModelConfig, mask):
    """One vector per review from the LSTM's outputs; padded steps never count."""
    if cfg.pooling == "last":
        return outputs
    if cfg.pooling == "concat":  # the sequence, then (h, c) per direction
        outputs, states = outputs[0], outputs[1:]
        final = (layers.Concatenate(name="final_state")(states[0::2]) if cfg.bidirectional
                 else states[0])
    pools = []
    if cfg.pooling in ("mean", "concat"):
        pools.append(layers.GlobalAveragePooling1D(name="mean_pool")(outputs, mask=mask))
    if cfg.pooling in ("max", "concat"):
        pools.append(MaskedMaxPooling(name="max_pool")(outputs, mask=mask))
    if cfg.pooling == "concat":
        return layers.Concatenate(name="pools")([*pools, final])
    return pools[0]


def class_count(net: keras.Model) -> int:
    """A sigmoid head (one output) separates two classes."""
    width = int(net.output_shape[-1])
    return 2 if width == 1 else width


def class_probabilities(outputs: np.ndarray) -> np.ndarray:
    """A sigmoid head's [n, 1] output → [n, 2]; a softmax head's output is returned as is."""
    outputs = np.asarray(outputs, dtype=np.float64)
    if outputs.ndim == 1 or outputs.shape[1] == 1:
        positive = outputs.reshape(-1)
        return np.stack([1.0 - positive, positive], axis=1)
    return outputs
