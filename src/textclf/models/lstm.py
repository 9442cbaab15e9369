"""The LSTM classifier (`model=lstm`, the default): Embedding → (mask) → LSTM → pooling →
head, with the masking mode as data, and by default bow's model beside it (late fusion,
models/fusion.py).

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

from ..config import NAME_SEP, BatchingConfig, check, one_of, positive
from .base import ModelInputs, head
from .fused import LSTM, fused_copy
from .fusion import LateFusion

MASKING = ("mask_zero", "masking_layer", "explicit", "none")


@dataclass
class LstmConfig(LateFusion):
    name: ClassVar[str] = "lstm"
    embedding_dim: int = 128
    units: int = 64
    # reads each review both ways, at about twice the time an epoch: in the default's mix,
    # Banking77 0.905 against 0.895 one-way (p = 0.018); elsewhere the same (docs/results.md)
    bidirectional: bool = True
    dropout: float = 0.3  # on the LSTM inputs, before the head and on the n-gram rows
    masking: str = "mask_zero"  # mask_zero | masking_layer | explicit | none
    # mean: masked average of the LSTM outputs | last: final state. Measured, then removed:
    # max (masked maximum) and concat (mean, max and final state), no gain (docs/results.md)
    pooling: str = "mean"
    # the LSTM model.keras runs: fused (FusedLSTM, the trained weights and answers, single-review
    # latency 3.3x lower: models/fused.py) | trained (Keras' LSTM, as trained)
    serve_lstm: str = "fused"
    # segments: the LSTM reads each review in windows of this many tokens, all windows of a
    # batch side by side (short loops, wide matmuls), and mean-pools each review over its own
    # windows' steps; null: one pass over the whole review
    segment: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        positive("model.segment", self.segment, null=True)
        check(
            self.segment is None or (self.pooling == "mean" and self.masking != "none"),
            "model.segment",
            "windows are pooled by their mask: use model.pooling=mean and a masking mode",
        )
        one_of(self.pooling, "model.pooling", ("mean", "last"))
        positive("model.embedding_dim", self.embedding_dim)
        positive("model.units", self.units)
        check(0 <= self.dropout < 1, "model.dropout", f"must be in [0, 1), got {self.dropout}")
        one_of(self.masking, "model.masking", MASKING)
        one_of(self.serve_lstm, "model.serve_lstm", ("fused", "trained"))

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
    after training (models/fusion.py).
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
    return keras.Model(tokens, head(x, inputs.num_classes, name="lstm_logits"), name="lstm")


def serving(net: keras.Model, cfg: LstmConfig) -> keras.Model:
    """The trained network as model.keras runs it: with `serve_lstm=fused`, TensorFlow's fused
    LSTM kernel holding the same weights."""
    return fused_copy(net) if cfg.serve_lstm == "fused" else net
