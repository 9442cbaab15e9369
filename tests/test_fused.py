"""FusedLSTM, the LSTM model.keras serves with, computes what keras.layers.LSTM computes from
the same weights (training keeps Keras' LSTM: the fused kernel trained at 0.90x its speed)."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from textclf.models.fused import FusedLSTM, fused_copy, lstm_layers

from .conftest import build_lstm, small_model

VOCAB = 40


def ragged_batch(side: str, seed: int = 0) -> np.ndarray:
    """Rows of 1 to 9 tokens padded to 12 on `side`, so every row has padding but one."""
    rng = np.random.default_rng(seed)
    rows = np.zeros((6, 12), dtype=np.int32)
    for row, length in zip(rows, [1, 3, 5, 9, 12, 7], strict=True):
        ids = rng.integers(1, VOCAB, length)
        if side == "pre":
            row[12 - length :] = ids
        else:
            row[:length] = ids
    return rows


def pair(masking: str, side: str, **kw) -> tuple[keras.Model, keras.Model]:
    """A model with Keras' LSTM and its fused copy, sharing every weight."""
    keras.utils.set_random_seed(1)
    trained = build_lstm(
        VOCAB, 2, small_model(embedding_dim=8, units=5, masking=masking, **kw), side
    )
    return trained, fused_copy(trained)


@pytest.mark.parametrize("side", ["post", "pre"])
@pytest.mark.parametrize(
    "masking, pooling",
    [("mask_zero", "mean"), ("explicit", "last"), ("masking_layer", "mean"), ("none", "last")],
)
def test_same_outputs_as_keras_lstm(masking, side, pooling):
    reference, other = pair(masking, side, pooling=pooling, bidirectional=True)
    assert all(isinstance(layer, FusedLSTM) for layer in lstm_layers(other))
    assert not any(isinstance(layer, FusedLSTM) for layer in lstm_layers(reference))
    x = ragged_batch(side)
    np.testing.assert_allclose(
        other.predict_on_batch(x), reference.predict_on_batch(x), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("return_sequences", [True, False])
@pytest.mark.parametrize("go_backwards", [False, True])
@pytest.mark.parametrize("side", ["post", "pre"])
def test_layer_outputs_and_states_match(return_sequences, go_backwards, side):
    """The layer alone, masked steps included: outputs, final states, an all-padding row, and
    inputs large enough that an unclipped cell state is needed."""
    rng = np.random.default_rng(4)
    x = rng.normal(0, 3, (5, 7, 6)).astype("float32")
    lengths = np.array([7, 4, 1, 0, 3])
    steps = np.arange(7)[None, :]
    mask = steps >= 7 - lengths[:, None] if side == "pre" else steps < lengths[:, None]
    kw = dict(return_sequences=return_sequences, return_state=True, go_backwards=go_backwards)
    reference = keras.layers.LSTM(4, **kw)
    other = FusedLSTM(4, **kw)
    expected = reference(x, mask=mask)
    other.build(x.shape)
    other.set_weights([w * 3 for w in reference.get_weights()])
    reference.set_weights(other.get_weights())
    expected = reference(x, mask=mask)
    for mine, theirs in zip(other(x, mask=mask), expected, strict=True):
        np.testing.assert_allclose(mine, theirs, rtol=1e-5, atol=1e-6)


def test_fused_rejects_a_mask_with_holes():
    layer = FusedLSTM(3)
    x = np.ones((1, 4, 2), "float32")
    with pytest.raises(Exception, match="unbroken run"):
        layer(x, mask=np.array([[True, False, True, False]]))


@pytest.mark.parametrize("side", ["post", "pre"])
@pytest.mark.parametrize(
    "masking, bidirectional, pooling",
    [
        ("mask_zero", True, "mean"),
        ("explicit", False, "last"),
        ("masking_layer", True, "last"),
        ("none", False, "mean"),
    ],
)
def test_fused_copy_answers_as_the_trained_model(tmp_path, side, masking, bidirectional, pooling):
    """What export serves (model.serve_lstm=fused): same outputs (pooled from every step's
    outputs or from the final state, one and both directions), every LSTM fused, every other
    layer shared, and it saves and loads as model.keras."""
    keras.utils.set_random_seed(2)
    cfg = small_model(
        embedding_dim=8, units=5, masking=masking, bidirectional=bidirectional, pooling=pooling
    )
    trained = build_lstm(VOCAB, 3, cfg, side)
    served = fused_copy(trained)
    assert lstm_layers(served) and all(type(layer) is FusedLSTM for layer in lstm_layers(served))
    assert not any(type(layer) is FusedLSTM for layer in lstm_layers(trained))
    assert served.get_layer("embedding") is trained.get_layer("embedding")
    x = ragged_batch(side)
    expected = trained.predict_on_batch(x)
    np.testing.assert_allclose(served.predict_on_batch(x), expected, atol=1e-6)
    served.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras", compile=False, safe_mode=True)
    np.testing.assert_allclose(loaded.predict_on_batch(x), expected, atol=1e-6)
