"""Tests for encdec.batching and encdec.pair_ids: ids, padding, collation and length buckets."""

import random

import numpy as np
import pytest

from encdec.batching import (
    bucket_batches,
    collate,
    evaluation_batches,
    padding_fraction,
)
from encdec.config import DataConfig
from encdec.corpus import build_corpus
from encdec.pair_ids import PairIds, Sentences
from encdec.vocab import SPECIALS, Vocab

SRC_VOCAB = Vocab([*SPECIALS, "ein", "hund", "läuft"])
TRG_VOCAB = Vocab([*SPECIALS, "a", "dog", "runs"])


def pairs_of(id_pairs: list[tuple[list[int], list[int]]], **reversing) -> PairIds:
    """PairIds of (source ids, target ids) given without <sos> and <eos>."""
    return PairIds(
        Sentences.from_lists([src for src, _ in id_pairs]),
        Sentences.from_lists([trg for _, trg in id_pairs]),
        **reversing,
    )


def pairs_of_lengths(lengths: list[int]) -> PairIds:
    """Pairs whose source has the given length and whose target is one longer."""
    return pairs_of([([4] * length, [5] * (length + 1)) for length in lengths])


def all_indices(batches: list[np.ndarray]) -> list[int]:
    return [int(index) for batch in batches for index in batch]


def as_lists(batches: list[np.ndarray]) -> list[list[int]]:
    return [batch.tolist() for batch in batches]


def test_pairs_get_sos_and_eos():
    pairs = PairIds.from_token_lists([["ein", "hund"]], [["a", "dog"]], SRC_VOCAB, TRG_VOCAB)
    src, trg = pairs.pair(0)
    assert src == [2, SRC_VOCAB.stoi["ein"], SRC_VOCAB.stoi["hund"], 3]
    assert trg == [2, TRG_VOCAB.stoi["a"], TRG_VOCAB.stoi["dog"], 3]


def test_source_is_reversed_only_when_asked():
    tokens = [["ein", "hund", "läuft"]]
    forward = PairIds.from_token_lists(tokens, [["a"]], SRC_VOCAB, TRG_VOCAB).pair(0)[0]
    backward = PairIds.from_token_lists(tokens, [["a"]], SRC_VOCAB, TRG_VOCAB, True).pair(0)[0]
    assert backward == [2, *forward[-2:0:-1], 3]
    assert backward != forward


def test_target_is_reversed_only_for_reverse_trg():
    trg_tokens = [["a", "dog", "runs"]]
    make = lambda *reversing: PairIds.from_token_lists(  # noqa: E731
        [["ein"]], trg_tokens, SRC_VOCAB, TRG_VOCAB, *reversing
    ).pair(0)
    assert make(False)[1] == make(True)[1] == [2, *TRG_VOCAB.encode(trg_tokens[0]), 3]
    src, backward = make(False, True)
    assert backward == [2, *TRG_VOCAB.encode(trg_tokens[0][::-1]), 3]
    assert src == [2, SRC_VOCAB.stoi["ein"], 3]


def test_reversed_padding_equals_the_reversed_pair():
    pairs = pairs_of([([5, 6, 7], [8]), ([9], [10, 11])], reverse_src=True, reverse_trg=True)
    batch = collate(pairs, np.array([0, 1]), pad_idx=1)
    assert batch.src[:, 0].tolist() == pairs.pair(0)[0] == [2, 7, 6, 5, 3]
    assert batch.src[:, 1].tolist() == [*pairs.pair(1)[0], 1, 1]
    assert batch.trg[:, 1].tolist() == pairs.pair(1)[1] == [2, 11, 10, 3]


def test_unknown_words_become_unk():
    pairs = PairIds.from_token_lists([["katze"]], [["a"]], SRC_VOCAB, TRG_VOCAB)
    assert pairs.pair(0)[0] == [2, SRC_VOCAB.unk_idx, 3]


def test_padding_is_time_major_and_filled_with_pad_idx():
    batch = collate(pairs_of([([5, 6, 7], [4]), ([8], [4]), ([9, 10], [4])]), [0, 1, 2], 1)
    assert batch.src.shape == (5, 3)  # (max_len + <sos> + <eos>, B)
    assert batch.src.tolist() == [[2, 2, 2], [5, 8, 9], [6, 3, 10], [7, 1, 3], [3, 1, 1]]


def test_collate_counts_non_pad_target_tokens_after_sos():
    pairs = pairs_of([([7], [8, 9]), ([], []), ([7, 7, 7], [8, 8, 8, 8])])
    batch = collate(pairs, [0, 1, 2], pad_idx=1)
    assert batch.n_target_tokens == 3 + 1 + 5
    assert batch.n_target_tokens == int((batch.trg[1:] != 1).sum())


def test_collate_takes_the_chosen_examples_in_order():
    pairs = pairs_of([([7], [8]), ([], [9, 9]), ([6, 6], [])])
    batch = collate(pairs, [2, 0], pad_idx=1)
    assert batch.indices.tolist() == [2, 0]
    assert batch.src.shape == (4, 2)
    assert batch.trg.shape == (3, 2)
    assert batch.src_lengths.tolist() == [4, 3]
    assert batch.src[:, 1].tolist() == [2, 7, 3, 1]
    assert batch.trg[:, 0].tolist() == [2, 3, 1]


def test_every_example_appears_exactly_once():
    examples = pairs_of_lengths([random.Random(i).randint(1, 30) for i in range(1003)])
    batches = bucket_batches(examples, batch_size=16, pool_batches=5, rng=np.random.default_rng(1))
    assert sorted(all_indices(batches)) == list(range(len(examples)))


def test_batches_are_at_most_batch_size():
    examples = pairs_of_lengths([i % 17 + 1 for i in range(250)])
    batches = bucket_batches(examples, batch_size=32, pool_batches=3, rng=np.random.default_rng(0))
    assert all(1 <= len(batch) <= 32 for batch in batches)


def test_same_seed_gives_same_batches():
    examples = pairs_of_lengths([i % 23 + 1 for i in range(500)])
    first = bucket_batches(examples, 16, 4, np.random.default_rng(42))
    second = bucket_batches(examples, 16, 4, np.random.default_rng(42))
    assert as_lists(first) == as_lists(second)


def test_different_seed_gives_different_batches():
    examples = pairs_of_lengths([i % 23 + 1 for i in range(500)])
    first = bucket_batches(examples, 16, 4, np.random.default_rng(42))
    second = bucket_batches(examples, 16, 4, np.random.default_rng(43))
    assert as_lists(first) != as_lists(second)


def test_no_rng_keeps_a_fixed_length_sorted_order():
    lengths = [random.Random(i).randint(1, 40) for i in range(300)]
    examples = pairs_of_lengths(lengths)
    batches = bucket_batches(examples, batch_size=10, pool_batches=len(examples), rng=None)
    order = all_indices(batches)
    assert [lengths[i] for i in order] == sorted(lengths)
    assert as_lists(bucket_batches(examples, 10, len(examples), rng=None)) == as_lists(batches)


def test_evaluation_batches_are_length_sorted_and_fixed():
    lengths = [random.Random(i).randint(1, 40) for i in range(300)]
    examples = pairs_of_lengths(lengths)
    batches = evaluation_batches(examples, batch_size=7)
    assert [lengths[i] for i in all_indices(batches)] == sorted(lengths)
    assert as_lists(evaluation_batches(examples, batch_size=7)) == as_lists(batches)


def test_padding_fraction_counts_padding_on_both_sides():
    pairs = pairs_of([([1, 1], [1, 1, 1, 1]), ([1, 1, 1, 1], [1, 1])])  # + <sos>, <eos>
    assert padding_fraction(pairs, [np.array([0, 1])]) == pytest.approx(4 / 24)
    assert padding_fraction(pairs, [np.array([0]), np.array([1])]) == 0.0


@pytest.fixture(scope="module")
def multi30k_train_examples(multi30k_dir):
    return build_corpus(DataConfig(data_dir=str(multi30k_dir))).ids["train"]


def test_bucketing_cuts_padding_on_multi30k(multi30k_train_examples):
    examples = multi30k_train_examples
    plain = padding_fraction(examples, bucket_batches(examples, 128, 1, np.random.default_rng(0)))
    bucketed = padding_fraction(
        examples, bucket_batches(examples, 128, 100, np.random.default_rng(0))
    )
    assert plain > 0.3
    assert bucketed < plain / 3


def examples_of_unrelated_lengths(count: int, seed: int) -> PairIds:
    """Pairs whose source and target lengths vary independently (2 to 40 ids each)."""
    rng = random.Random(seed)
    return pairs_of([([4] * rng.randint(0, 38), [5] * rng.randint(0, 38)) for _ in range(count)])


def test_token_batches_collate_to_at_most_batch_tokens_positions():
    examples = examples_of_unrelated_lengths(2000, seed=3)
    batches = bucket_batches(examples, 64, 10, np.random.default_rng(0), max_tokens=600)
    assert sorted(all_indices(batches)) == list(range(len(examples)))
    for indices in batches:
        batch = collate(examples, indices, pad_idx=1)
        assert batch.src.numel() + batch.trg.numel() <= 600
        assert len(indices) <= 64
    assert len({len(batch) for batch in batches}) > 3  # short sentences get bigger batches


def test_token_batches_end_only_when_the_next_sentence_would_pass_the_budget():
    examples = examples_of_unrelated_lengths(500, seed=4)
    batches = bucket_batches(examples, 64, len(examples), rng=None, max_tokens=600)
    for indices, following in zip(batches, batches[1:]):
        grown = collate(examples, [*indices, following[0]], pad_idx=1)
        assert len(indices) == 64 or grown.src.numel() + grown.trg.numel() > 600


def test_a_sentence_longer_than_the_token_budget_is_a_batch_alone():
    examples = pairs_of([([4] * 3, [5] * 3), ([4] * 28, [5] * 28), ([4] * 3, [5] * 4)])
    batches = bucket_batches(examples, 8, 1, rng=None, max_tokens=40)
    assert sorted(as_lists(batches)) == [[0, 2], [1]]


def test_evaluation_batches_can_be_capped_in_tokens_and_keep_their_order():
    pairs = pairs_of_lengths([3, 9, 1, 6, 2])
    capped = evaluation_batches(pairs, batch_size=5, max_tokens=30)
    assert all_indices(capped) == all_indices(evaluation_batches(pairs, batch_size=5))
    for batch in capped:
        padded = len(batch) * (max(pairs.src_lengths[batch]) + max(pairs.trg_lengths[batch]))
        assert padded <= 30 or len(batch) == 1
    assert len(capped) > 1
