"""Every strategy yields each review exactly once per epoch, with its label, padded as promised."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from textclf import batching
from textclf.config import BatchingConfig

STRATEGIES = ["fixed", "per_batch", "bucket", "exact", "pooled"]


def ragged(lengths: list[int]) -> tf.RaggedTensor:
    """Row i holds ids (i*1000 + 1 ...), so every row is recognisable after padding."""
    return tf.ragged.constant(
        [[i * 1000 + j + 1 for j in range(n)] for i, n in enumerate(lengths)], dtype=tf.int32
    )


def spec(strategy: str, **kw) -> BatchingConfig:
    defaults = {
        "batch_size": 4,
        "max_length": 6 if strategy == "fixed" else None,
        "num_buckets": 3,
        "token_budget": None,
        "round_to": 1,
    }
    return BatchingConfig(strategy=strategy, **(defaults | kw))


def batches(tokens, labels, s: BatchingConfig, *args, **kwargs) -> tf.data.Dataset:
    return batching.make_dataset(batching.examples(tokens, labels), s, *args, **kwargs)


def rows(ds: tf.data.Dataset) -> list[tuple[list[int], int]]:
    out = []
    for x, y in ds:
        for ids, label in zip(x.numpy(), y.numpy(), strict=True):
            out.append(([int(t) for t in ids if t], int(label)))
    return out


lengths_st = st.lists(st.integers(1, 12), min_size=1, max_size=40)


@settings(max_examples=25, deadline=None)
@given(
    lengths=lengths_st,
    strategy=st.sampled_from(STRATEGIES),
    side=st.sampled_from(["post", "pre"]),
    shuffle=st.booleans(),
)
def test_each_review_once_with_its_label_and_untruncated(lengths, strategy, side, shuffle):
    tokens, labels = ragged(lengths), np.arange(len(lengths), dtype=np.int32) % 2
    s = spec(strategy, padding_side=side)
    bounds = batching.bucket_boundaries(np.array(lengths), s.num_buckets)
    got = rows(batches(tokens, labels, s, bounds, shuffle=shuffle, seed=1))
    expected = [(row, int(label)) for row, label in zip(tokens.to_list(), labels, strict=True)]
    if strategy == "fixed":  # the only strategy that truncates, and only to max_length
        expected = [(row[: s.max_length], label) for row, label in expected]
    assert sorted(got) == sorted(expected)


@settings(max_examples=25, deadline=None)
@given(lengths=lengths_st, round_to=st.integers(1, 4))
def test_exact_batches_pad_no_more_than_the_rounding(lengths, round_to):
    ds = batches(
        ragged(lengths), np.zeros(len(lengths), np.int32), spec("exact", round_to=round_to)
    )
    for x, _ in ds:
        real = tf.math.count_nonzero(x, axis=1).numpy()
        assert x.shape[1] - real.min() <= round_to - 1
        assert x.shape[0] <= 4


def test_padding_side_puts_pads_after_or_before():
    tokens = ragged([3, 1])
    post = next(iter(batches(tokens, np.zeros(2, np.int32), spec("per_batch"))))[0]
    pre = next(iter(batches(tokens, np.zeros(2, np.int32), spec("per_batch", padding_side="pre"))))[
        0
    ]
    assert post.numpy().tolist() == [[1, 2, 3], [1001, 0, 0]]
    assert pre.numpy().tolist() == [[1, 2, 3], [0, 0, 1001]]


def test_fixed_pads_every_batch_to_max_length():
    ds = batches(ragged([2, 9, 4]), np.zeros(3, np.int32), spec("fixed"))
    assert {x.shape[1] for x, _ in ds} == {6}


def test_bucket_boundaries_follow_the_length_distribution():
    lengths = np.concatenate([np.full(100, 10), np.full(100, 100), np.full(100, 1000)])
    bounds = batching.bucket_boundaries(lengths, 3)
    assert bounds == [11, 101]
    assert batching.bucket_boundaries(np.full(10, 5), 4) == [6]


def test_token_budget_gives_short_buckets_larger_batches():
    # bucket upper bounds are exclusive: the first holds reviews of up to 50 tokens
    sizes = batching.bucket_batch_sizes([51, 101, 201, 1001], 64, token_budget=32000)
    assert sizes == [640, 320, 160, 64, 64]
    assert batching.bucket_batch_sizes([51, 101], 64, token_budget=None) == [64, 64, 64]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_padding_efficiency_counts_real_and_padded_tokens(strategy):
    lengths = [1, 2, 3, 4, 5, 6, 7, 8]
    stats = batching.padding_stats(
        batches(
            ragged(lengths),
            np.zeros(8, np.int32),
            spec(strategy, max_length=10 if strategy == "fixed" else None),
        )
    )
    assert stats.reviews == 8 and stats.real_tokens == sum(lengths)
    if strategy == "exact":
        assert stats.efficiency == 1.0
    if strategy == "fixed":
        assert stats.padded_tokens == 80


def test_repad_trims_guards_empty_rows_and_moves_padding():
    ids = tf.constant([[5, 6, 0, 0, 0], [0, 0, 0, 0, 0]], dtype=tf.int64)
    assert batching.Repad("post")(ids).numpy().tolist() == [[5, 6], [1, 0]]
    assert batching.Repad("pre")(ids).numpy().tolist() == [[5, 6], [0, 1]]


def batch_rows(ds: tf.data.Dataset) -> list[list[int]]:
    """Each batch as the row numbers it holds (row i's first id is i*1000 + 1)."""
    return [sorted(int(ids[ids > 0][0]) // 1000 for ids in x.numpy()) for x, _ in ds]


@settings(max_examples=25, deadline=None)
@given(lengths=st.lists(st.integers(1, 30), min_size=1, max_size=60), pool=st.integers(1, 5))
def test_pooled_batches_are_full_sorted_within_their_pool_and_fixed_by_seed_and_epoch(
    lengths, pool
):
    tokens, labels = ragged(lengths), np.zeros(len(lengths), np.int32)
    s = spec("pooled", pool_batches=pool)
    epoch = [batch_rows(batches(tokens, labels, s, shuffle=True, seed=3, epoch=e)) for e in (0, 1)]
    assert epoch[0] == batch_rows(batches(tokens, labels, s, shuffle=True, seed=3, epoch=0))
    assert sorted(r for b in epoch[0] for r in b) == list(range(len(lengths)))
    sizes = sorted(len(b) for b in epoch[0])
    assert sizes[1:] == [s.batch_size] * (len(sizes) - 1)  # one short batch at most
    # Unshuffled, pools are consecutive rows: each batch's lengths follow the sorted pool's.
    plain = batch_rows(batches(tokens, labels, s))
    per_pool = s.batch_size * pool
    for start in range(0, len(lengths), per_pool):
        ordered = sorted(range(start, min(start + per_pool, len(lengths))), key=lengths.__getitem__)
        cut = [sorted(ordered[i : i + s.batch_size]) for i in range(0, len(ordered), s.batch_size)]
        assert plain[: len(cut)] == cut
        plain = plain[len(cut) :]


@settings(max_examples=50, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 300), min_size=1, max_size=60),
    batch_size=st.integers(1, 8),
    budget=st.integers(1, 400),
    max_rows=st.one_of(st.none(), st.integers(1, 20)),
)
def test_length_batches_cover_every_row_once_within_the_budget(
    lengths, batch_size, budget, max_rows
):
    sorted_lengths = np.sort(np.array(lengths))
    ranges = batching.length_batches(sorted_lengths, batch_size, budget, max_rows)
    assert [r[0] for r in ranges] == [0, *[r[1] for r in ranges[:-1]]]
    assert ranges[-1][1] == len(lengths)
    for start, stop in ranges:
        rows = stop - start
        assert rows >= min(batch_size, len(lengths) - start)
        if rows > batch_size:  # widened past batch_size only within the budget and the cap
            assert rows * sorted_lengths[stop - 1] <= budget
            assert max_rows is None or rows <= max_rows


@settings(max_examples=25, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 30), min_size=1, max_size=60),
    pool=st.integers(1, 4),
    budget=st.integers(8, 200),
)
def test_pooled_with_a_token_budget_widens_batches_of_short_reviews_within_it(
    lengths, pool, budget
):
    tokens, labels = ragged(lengths), np.zeros(len(lengths), np.int32)
    s = spec("pooled", pool_batches=pool, token_budget=budget, max_batch_rows=12)
    epoch = batch_rows(batches(tokens, labels, s, shuffle=True, seed=5, epoch=2))
    assert epoch == batch_rows(batches(tokens, labels, s, shuffle=True, seed=5, epoch=2))
    assert sorted(r for b in epoch for r in b) == list(range(len(lengths)))
    # Unshuffled, each pool (of `pool` of the widest batches) is cut as `length_batches` cuts
    # its sorted lengths.
    plain = batch_rows(batches(tokens, labels, s))
    per_pool = 12 * pool
    for start in range(0, len(lengths), per_pool):
        ordered = sorted(range(start, min(start + per_pool, len(lengths))), key=lengths.__getitem__)
        spans = batching.length_batches(
            np.array([lengths[i] for i in ordered]), s.batch_size, budget, 12
        )
        assert plain[: len(spans)] == [sorted(ordered[a:b]) for a, b in spans]
        plain = plain[len(spans) :]
    assert plain == []


def test_pooled_with_a_token_budget_gives_short_reviews_wider_batches():
    lengths = [2] * 32 + [40] * 32
    tokens, labels = ragged(lengths), np.zeros(64, np.int32)
    s = spec("pooled", pool_batches=4, token_budget=160, max_batch_rows=20)
    sizes = [len(b) for b in batch_rows(batches(tokens, labels, s))]
    # one pool of 4 x 20 rows: 2-token reviews 20 rows a batch (the cap), then the other 12;
    # 40-token ones: batch_size 4
    assert sizes == [20, 12, *[4] * 8]
    stats = batching.padding_stats(batches(tokens, labels, s))
    assert stats.efficiency == 1.0  # the pool holds every review: each batch one length


def test_pooled_with_one_batch_per_pool_is_per_batch_and_with_all_is_sorted():
    lengths = [5, 1, 9, 3, 7, 2, 8, 4]
    tokens, labels = ragged(lengths), np.zeros(8, np.int32)
    one = batch_rows(batches(tokens, labels, spec("pooled", pool_batches=1)))
    assert one == batch_rows(batches(tokens, labels, spec("per_batch")))
    every = batching.padding_stats(batches(tokens, labels, spec("pooled", pool_batches=2)))
    assert every.padded_tokens == 4 * 4 + 4 * 9  # [1 2 3 4] padded to 4, [5 7 8 9] to 9


def test_random_bucket_keys_keep_the_bucket_sizes_and_ignore_length():
    lengths = [2] * 40 + [20] * 40
    tokens, labels = ragged(lengths), np.zeros(80, np.int32)
    bounds = batching.bucket_boundaries(np.array(lengths), 2)
    got = {}
    for keys in ("length", "random"):
        s = spec("bucket", bucket_keys=keys, batch_size=8)
        ds = batches(tokens, labels, s, bounds, shuffle=True, seed=0, epoch=0)
        got[keys] = [(len(b), {lengths[r] for r in b}) for b in batch_rows(ds)]
    assert all(len(lens) == 1 for _, lens in got["length"])  # one length per batch
    assert sum(len(lens) == 2 for _, lens in got["random"]) >= 5  # most batches mix them
    assert sorted(n for n, _ in got["random"]) == sorted(n for n, _ in got["length"])


def test_label_skew_is_zero_for_batches_that_mirror_the_data_and_grows_with_grouping():
    mirrored = [np.array([0, 1, 0, 1]), np.array([1, 0, 1, 0])]
    assert batching.label_skew(mirrored) == 0.0
    assert batching.label_skew([np.array([0, 0]), np.array([1, 1])]) == 0.5
    # by length, where the long reviews are the positive ones
    tokens, labels = ragged([2] * 8 + [9] * 8), np.array([0] * 8 + [1] * 8, np.int32)
    bounds = batching.bucket_boundaries(np.array([2] * 8 + [9] * 8), 2)
    grouped = batching.padding_stats(batches(tokens, labels, spec("bucket"), bounds))
    shuffled = batching.padding_stats(batches(tokens, labels, spec("per_batch"), shuffle=True))
    assert grouped.label_skew == 0.5 and shuffled.label_skew < 0.5
