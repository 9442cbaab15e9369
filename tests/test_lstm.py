"""Masking makes a review's prediction independent of its padding; no mask does not."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from textclf.models.fused import fused_copy, lstm_layers

from .conftest import build_lstm, small_model

VOCAB = 50
MASKED = ["mask_zero", "masking_layer", "explicit"]


def pad(ids: list[int], pads: int, side: str) -> np.ndarray:
    zeros = [0] * pads
    return np.array([zeros + ids if side == "pre" else ids + zeros], dtype=np.int32)


def build(masking: str, side: str = "post", **kw) -> keras.Model:
    keras.utils.set_random_seed(0)
    return build_lstm(VOCAB, 2, small_model(embedding_dim=8, units=4, masking=masking, **kw), side)


@pytest.fixture(scope="module")
def models():
    return {(m, side): build(m, side) for m in [*MASKED, "none"] for side in ("post", "pre")}


review_st = st.lists(st.integers(1, VOCAB - 1), min_size=1, max_size=12)


@settings(max_examples=20, deadline=None)
@given(
    ids=review_st,
    pads=st.sampled_from([0, 1, 7, 500]),
    side=st.sampled_from(["post", "pre"]),
    masking=st.sampled_from(MASKED),
)
def test_masked_prediction_ignores_padding(models, ids, pads, side, masking):
    net = models[(masking, side)]
    bare = net.predict_on_batch(pad(ids, 0, side))
    np.testing.assert_allclose(net.predict_on_batch(pad(ids, pads, side)), bare, atol=1e-5)


@settings(max_examples=10, deadline=None)
@given(ids=review_st, side=st.sampled_from(["post", "pre"]))
def test_masking_modes_agree_for_identical_weights(models, ids, side):
    reference = models[("mask_zero", side)]
    x = pad(ids, 5, side)
    for masking in MASKED[1:]:
        other = build(masking, side)
        for name in ("embedding", "lstm", "lstm_logits"):
            other.get_layer(name).set_weights(reference.get_layer(name).get_weights())
        np.testing.assert_allclose(
            other.predict_on_batch(x), reference.predict_on_batch(x), atol=1e-6
        )


@pytest.mark.parametrize("side", ["post", "pre"])
def test_without_a_mask_padding_moves_the_prediction(models, side):
    net = models[("none", side)]
    ids = [3, 14, 15, 9, 26]
    outputs = [float(net.predict_on_batch(pad(ids, p, side))[0, 0]) for p in (0, 50, 500)]
    assert max(outputs) - min(outputs) > 1e-4


def test_left_padding_with_a_mask_avoids_cudnn():
    assert build("mask_zero", "pre").get_layer("lstm").use_cudnn is False
    assert build("mask_zero", "post").get_layer("lstm").use_cudnn == "auto"
    assert build("none", "pre").get_layer("lstm").use_cudnn == "auto"


def test_multiclass_head_and_bidirectional():
    net = build_lstm(VOCAB, 4, small_model(embedding_dim=8, units=4, bidirectional=True), "post")
    out = net.predict_on_batch(pad([1, 2, 3], 2, "post"))
    assert out.shape == (1, 4) and np.isclose(out.sum(), 1.0, atol=1e-5)


@pytest.mark.parametrize("masking", MASKED)
def test_custom_layers_survive_save_and_load(tmp_path, masking):
    net = build(masking, "pre")
    net.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    x = pad([4, 5, 6], 3, "pre")
    np.testing.assert_allclose(loaded.predict_on_batch(x), net.predict_on_batch(x), atol=1e-6)


@pytest.mark.parametrize("masking", ["mask_zero", "explicit"])
@pytest.mark.parametrize("side", ["post", "pre"])
def test_last_state_pooling_ignores_padding(masking, side):
    """The final state is the last real step's, in both directions."""
    net = build(masking, side, pooling="last", bidirectional=True)
    ids = [3, 14, 15, 9, 26]
    bare = net.predict_on_batch(pad(ids, 0, side))
    for pads in (1, 30):
        np.testing.assert_allclose(net.predict_on_batch(pad(ids, pads, side)), bare, atol=1e-5)


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("masking", [*MASKED, "none"])
def test_a_left_padded_masked_model_keeps_cudnn_off_when_cloned_fused_and_reloaded(
    tmp_path, masking, bidirectional
):
    """cuDNN takes only right-padded masks; Keras' own LSTM config forgets `use_cudnn=False`,
    so a clone, the fused serving copy or a reloaded model.keras would take cuDNN on a GPU and
    fail. Checked on CPU: what every LSTM layer of each copy carries, both directions of a
    Bidirectional one (Keras rebuilds the backward layer from the forward one's config)."""

    def copies(side: str) -> dict[str, keras.Model]:
        trained = build_lstm(
            VOCAB,
            2,
            small_model(embedding_dim=8, units=4, masking=masking, bidirectional=bidirectional),
            side,
        )
        nets = {"trained": trained, "fused": fused_copy(trained)}
        for name in ("trained", "fused"):
            nets[f"{name}, cloned"] = keras.models.clone_model(nets[name])
            nets[name].save(tmp_path / f"{side}-{name}.keras")
            reloaded = keras.models.load_model(
                tmp_path / f"{side}-{name}.keras", compile=False, safe_mode=True
            )
            nets[f"{name}, reloaded"] = reloaded
            nets[f"{name}, reloaded and cloned"] = keras.models.clone_model(reloaded)
        nets["reloaded, then fused"] = fused_copy(nets["trained, reloaded"])
        return nets

    # right padding, and left padding without a mask, keep the fast kernel
    off = False if masking != "none" else "auto"
    for side, expected in (("pre", off), ("post", "auto")):
        for name, net in copies(side).items():
            layers = lstm_layers(net)
            assert len(layers) == (2 if bidirectional else 1), (side, name)
            assert [layer.use_cudnn for layer in layers] == [expected] * len(layers), (side, name)


@pytest.mark.parametrize("side", ["post", "pre"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_segmented_answers_ignore_padding_and_batch_mates_at_every_length(side, bidirectional):
    """Reviews shorter than, equal to and longer than a window (4), in one batch and alone,
    through the trained model and its fused serving copy."""
    net = build("mask_zero", side, segment=4, bidirectional=bidirectional)
    served = fused_copy(net)
    rng = np.random.default_rng(0)
    reviews = [list(rng.integers(1, VOCAB, n)) for n in (1, 3, 4, 5, 8, 11)]
    longest = max(map(len, reviews)) + 2
    batch = np.concatenate([pad(r, longest - len(r), side) for r in reviews])
    together = net.predict_on_batch(batch)
    alone = np.concatenate([served.predict_on_batch(pad(r, 0, side)) for r in reviews])
    np.testing.assert_allclose(alone, together, atol=1e-5)
    # the window matters: a review longer than it is not read as one sequence
    whole = build("mask_zero", side, bidirectional=bidirectional)
    for name in ("embedding", "lstm_logits"):
        whole.get_layer(name).set_weights(net.get_layer(name).get_weights())
    rnn = "bilstm" if bidirectional else "lstm"
    whole.get_layer(rnn).set_weights(net.get_layer(rnn).get_weights())
    np.testing.assert_allclose(whole.predict_on_batch(batch)[:2], together[:2], atol=1e-5)
    assert np.abs(whole.predict_on_batch(batch)[4:] - together[4:]).max() > 1e-4


def test_segments_need_mean_pooling_and_a_mask():
    with pytest.raises(Exception, match="model.segment"):
        small_model(segment=4, pooling="last")
    with pytest.raises(Exception, match="model.segment"):
        small_model(segment=4, masking="none")
