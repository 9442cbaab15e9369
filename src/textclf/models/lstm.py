"""The LSTM classifier (`model=lstm`, the default): Embedding → (mask) → LSTM → pooling →
head, with the masking mode as data, and by default bow's tf-idf n-grams beside it.

Masking modes (`model.masking`):
- `mask_zero`: the Embedding marks id 0 as padding and Keras carries the mask to the LSTM;
- `masking_layer`: a Keras `Masking` layer finds padded steps (their vectors are zeroed first);
- `explicit`: a boolean mask built from each row's true length, passed to the LSTM call;
- `none`: the LSTM reads padding like any other token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import keras
from keras import layers, ops

from ..config import BatchingConfig, ModelConfig, check, one_of
from . import bow
from .base import ModelInputs
from .fused import LSTM, fused_copy

MASKING = ("mask_zero", "masking_layer", "explicit", "none")


@dataclass
class LstmConfig(bow.Ngrams, ModelConfig):
    name: ClassVar[str] = "lstm"
    embedding_dim: int = 128
    units: int = 64
    bidirectional: bool = True  # reads each review both ways: +1 point on IMDB for 2x time
    dropout: float = 0.3  # on the LSTM inputs, before the head and on the n-gram rows
    masking: str = "mask_zero"  # mask_zero | masking_layer | explicit | none
    # mean: masked average of the LSTM outputs | last: final state | max: masked maximum |
    # concat: mean, max and final state side by side
    pooling: str = "mean"
    # whole embedding channels dropped for a review (SpatialDropout1D) while training
    embedding_dropout: float = 0.0
    # the LSTM the exported model.keras runs: fused (FusedLSTM with the trained weights, same
    # answers; one kernel call per review instead of a loop of small ops per step: single-review
    # latency 3.3x lower in make bench, docs/bench.md) | trained (Keras' LSTM, as trained)
    serve_lstm: str = "fused"
    # also give the head bow's tf-idf n-gram features beside the LSTM's pooled vector (wide and
    # deep: the n-grams' vocabulary is adapted on the training texts, like bow's). On by
    # default: full IMDB 0.894 +- 0.013 over 3 seeds against 0.871 +- 0.017 without
    # (docs/results.md); the padding and masking comparisons turn it off to study the LSTM.
    ngram_branch: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        one_of(self.pooling, "model.pooling", ("mean", "last", "max", "concat"))
        check(
            0 <= self.embedding_dropout < 1,
            "model.embedding_dropout",
            f"must be in [0, 1), got {self.embedding_dropout}",
        )
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
        name = f"{batching.strategy}-{batching.padding_side}-{self.masking}"
        return name + "+ngrams" if self.ngram_branch else name


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


def build(cfg: LstmConfig, inputs: ModelInputs) -> keras.Model:
    """An uncompiled model from padded int ids [batch, time] to class probabilities.

    `pooling="last"` classifies from the LSTM's final (last unmasked) state; `"mean"` from the
    average of its outputs over the unmasked steps, which keeps early words of long reviews;
    `"max"` from their maximum; `"concat"` from all three side by side. The explicit mask is
    shaped for the side the batches are padded on. With `ngram_branch`, bow's n-gram features
    join the pooled vector in one linear head (zero-initialised, as bow's).
    """
    tokens = keras.Input(shape=(None,), dtype="int32", name="tokens")
    x = layers.Embedding(
        inputs.vocab_size, cfg.embedding_dim, mask_zero=cfg.masking == "mask_zero", name="embedding"
    )(tokens)
    mask = None
    if cfg.embedding_dropout:
        x = layers.SpatialDropout1D(cfg.embedding_dropout, name="embedding_dropout")(x)
    if cfg.masking == "masking_layer":
        x = layers.Masking(mask_value=0.0, name="masking")(
            ZeroPadding(name="zero_padding")([x, tokens])
        )
    elif cfg.masking == "explicit":
        mask = LengthMask(inputs.padding_side, name="length_mask")(tokens)
    # cuDNN accepts only right-padded masks: left padding with a mask takes the generic kernel.
    use_cudnn = False if inputs.padding_side == "pre" and cfg.masking != "none" else "auto"
    rnn = LSTM(
        cfg.units,
        dropout=cfg.dropout,
        return_sequences=cfg.pooling != "last",
        return_state=cfg.pooling == "concat",
        use_cudnn=use_cudnn,
        name="lstm",
    )
    if cfg.bidirectional:
        rnn = layers.Bidirectional(rnn, name="bilstm")
    x = rnn(x, mask=mask)
    x = _pool(x, cfg, mask)
    x = layers.Dropout(cfg.dropout, name="dropout")(x)
    if cfg.ngram_branch:  # wide and deep: one linear head over both
        ngrams = bow.ngram_features(inputs, cfg, cfg.dropout)
        return keras.Model(
            tokens,
            bow.head([x, ngrams(tokens)], inputs.num_classes),
            name=f"lstm_ngrams_{cfg.masking}",
        )
    if inputs.num_classes == 2:
        outputs = layers.Dense(1, activation="sigmoid", dtype="float32", name="probability")(x)
    else:
        outputs = layers.Dense(
            inputs.num_classes, activation="softmax", dtype="float32", name="probabilities"
        )(x)
    return keras.Model(tokens, outputs, name=f"lstm_{cfg.masking}")


def serving(net: keras.Model, cfg: LstmConfig) -> keras.Model:
    """The trained network as model.keras runs it: with `serve_lstm=fused`, TensorFlow's fused
    LSTM kernel holding the same weights."""
    return fused_copy(net) if cfg.serve_lstm == "fused" else net


def _pool(outputs, cfg: LstmConfig, mask):
    """One vector per review from the LSTM's outputs; padded steps never count."""
    if cfg.pooling == "last":
        return outputs
    if cfg.pooling == "concat":  # the sequence, then (h, c) per direction
        outputs, states = outputs[0], outputs[1:]
        final = (
            layers.Concatenate(name="final_state")(states[0::2]) if cfg.bidirectional else states[0]
        )
    pools = []
    if cfg.pooling in ("mean", "concat"):
        pools.append(layers.GlobalAveragePooling1D(name="mean_pool")(outputs, mask=mask))
    if cfg.pooling in ("max", "concat"):
        pools.append(MaskedMaxPooling(name="max_pool")(outputs, mask=mask))
    if cfg.pooling == "concat":
        return layers.Concatenate(name="pools")([*pools, final])
    return pools[0]
