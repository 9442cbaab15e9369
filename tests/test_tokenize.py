"""TextVectorization adapted on training text only; truncation counted; inference layer agrees."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from textclf import tokenize
from textclf.config import TokenizeConfig

from .conftest import build_lstm, padded, small_model

TRAIN = ["The film was GREAT<br />great!", "a dull, dull film", "great cast"]


def test_vocabulary_comes_from_training_text_only():
    vectorizer = tokenize.adapt(TRAIN, TokenizeConfig(vocab_size=50))
    vocab = vectorizer.get_vocabulary()
    assert vocab[:2] == ["", "[UNK]"] and "great" in vocab and "br" not in vocab
    encoded = tokenize.encode(vectorizer, ["great zebra"], np.array([1]), None)
    assert encoded.tokens.to_list() == [[vocab.index("great"), 1]]  # unseen word → OOV id 1


def test_vocab_size_caps_the_vocabulary():
    assert len(tokenize.adapt(TRAIN, TokenizeConfig(vocab_size=4)).get_vocabulary()) == 4


def test_truncation_is_counted_and_applied():
    vectorizer = tokenize.adapt(TRAIN, TokenizeConfig())
    encoded = tokenize.encode(
        vectorizer, ["great " * 10, "great", "great " * 3], np.array([1, 1, 0]), max_length=3
    )
    assert encoded.lengths.tolist() == [3, 1, 3]
    assert encoded.truncated == 1


def test_rows_without_tokens_are_dropped_and_counted():
    vectorizer = tokenize.adapt(TRAIN, TokenizeConfig())
    encoded = tokenize.encode(vectorizer, ["great", "!!!", "dull film"], np.array([1, 0, 0]), None)
    kept, keep = tokenize.drop_empty(encoded)
    assert keep.tolist() == [True, False, True]
    assert int((~keep).sum()) == 1 and len(kept) == 2 and kept.labels.tolist() == [1, 0]


def test_inference_vectorizer_matches_the_training_encoding():
    vectorizer = tokenize.adapt(TRAIN, TokenizeConfig())
    texts = ["great film<br />", "a dull cast", "zebra"]
    ragged = tokenize.encode(vectorizer, texts, np.zeros(3), None).tokens
    dense_vectorizer = tokenize.inference_vectorizer(vectorizer, TokenizeConfig(max_length=None))
    dense = dense_vectorizer(tf.constant(texts))
    assert (
        tf.RaggedTensor.from_tensor(tf.cast(dense, tf.int32), padding=0).to_list()
        == ragged.to_list()
    )


def test_control_characters_never_become_vocabulary_terms(tmp_path):
    """IMDB holds \\x85 (a line break to Python): as a term it broke loading the saved model."""
    import keras

    from textclf import data, inference

    texts = [data.clean(t) for t in ["fine\x85film \x96 here", "dull\u2028film\x97"]]
    vectorizer = tokenize.adapt(texts, TokenizeConfig())
    assert all(t.isprintable() for t in vectorizer.get_vocabulary())
    # the html standardizer
    raw = tokenize.adapt(["fine\x85film \x96 here", "dull\u2028film\x97"], TokenizeConfig())
    assert all(t.isprintable() for t in raw.get_vocabulary())
    classifier = build_lstm(len(raw.get_vocabulary()), 2, small_model(embedding_dim=4, units=4))
    exported = inference.export(raw, TokenizeConfig(max_length=None), classifier, padded())
    exported.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    text = tf.constant(["fine film\x85here"])
    np.testing.assert_allclose(loaded(text).numpy(), exported(text).numpy(), atol=1e-6)


def test_an_enormous_review_is_truncated_without_a_dense_copy():
    """5 MB of text is ~1M tokens: encoded ragged, cut to max_length, counted once."""
    vectorizer = tokenize.adapt(TRAIN, TokenizeConfig())
    huge = "great film " * 500_000
    encoded = tokenize.encode(vectorizer, [huge, "dull film"], np.array([1, 0]), max_length=1000)
    assert encoded.lengths.tolist() == [1000, 2] and encoded.truncated == 1
