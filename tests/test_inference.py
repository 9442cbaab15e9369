"""The exported model as it is served: length-sorted batches answer as one call per text does."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from textclf import inference, tokenize
from textclf.config import TokenizeConfig

from .conftest import build_lstm, padded, reviews, small_model


@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> inference.Classifier:
    """An untrained masked model (its answers still depend on every token it reads)."""
    texts = [t for t, _ in reviews(200)]
    vectorizer = tokenize.adapt(texts, TokenizeConfig())
    keras.utils.set_random_seed(0)
    net = build_lstm(
        vectorizer.vocabulary_size(),
        2,
        small_model(embedding_dim=8, units=8, bidirectional=True),
        "pre",
    )
    exported = inference.export(vectorizer, TokenizeConfig(max_length=60), net, padded("pre"))
    folder = tmp_path_factory.mktemp("model")
    path = inference.save(exported, ["neg", "pos"], folder / "model.keras", folder / "classes.json")
    return inference.Classifier.from_files(path, batch_size=4, token_budget=64)


def test_sorted_batches_answer_like_one_text_per_call_in_the_callers_order(classifier):
    texts = [t for t, _ in reviews(40, seed=3)] + ["great " * 200]  # the last is truncated
    batched = classifier.probabilities(texts)
    one_by_one = np.concatenate([classifier.probabilities([t]) for t in texts])
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)
    whole = inference.class_probabilities(classifier.model(tf.constant(texts)).numpy())
    np.testing.assert_allclose(batched, whole, atol=1e-5)  # one unsorted, fully padded batch
    frame = classifier.predict(texts[::-1])
    np.testing.assert_allclose(frame[["prob_neg", "prob_pos"]].to_numpy(), batched[::-1], atol=1e-6)
    assert classifier.token_counts(texts)[-1] == 60  # read as trained: cut at max_length


def test_texts_with_no_known_word_are_classified_and_flagged(classifier):
    texts = ["a wonderful film", "?!... ---", "zyzzyva quux", "wonderful quux", "   "]
    for batch in (texts, *([t] for t in texts)):  # batched, and one text per call
        frame = classifier.predict(batch)
        expected = [t in ("?!... ---", "zyzzyva quux", "   ") for t in batch]
        assert frame[inference.NO_KNOWN_WORD].tolist() == expected
    frame = classifier.predict(texts)
    assert frame["label"][:4].notna().all() and frame["error"][:4].isna().all()
    assert frame["error"][4] == inference.EMPTY  # empty: an error, as before
    ids = classifier.token_ids(texts[:4])
    assert inference.no_known_word(ids).tolist() == [False, True, True, False]
