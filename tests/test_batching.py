"""Tests for encdec.batching: numericalisation, padding, collation and length buckets."""

import random

import pytest
import torch

from encdec.batching import (
    bucket_batches,
    collate,
    evaluation_batches,
    numericalize,
    pad,
    padding_fraction,
)
from encdec.config import DataConfig
from encdec.corpus import build_corpus
from encdec.vocab import SPECIALS, Vocab

SRC_VOCAB = Vocab([*SPECIALS, "ein", "hund", "läuft"])
TRG_VOCAB = Vocab([*SPECIALS, "a", "dog", "runs"])


def examples_of_lengths(lengths: list[int]) -> list[tuple[list[int], list[int]]]:
    """Examples whose source has the given length and whose target is one longer."""
    return [([4] * length, [5] * (length + 1)) for length in lengths]


def all_indices(batches: list[list[int]]) -> list[int]:
    return [index for batch in batches for index in batch]


def test_numericalize_adds_sos_and_eos():
    src, trg = numericalize(["ein", "hund"], ["a", "dog"], SRC_VOCAB, TRG_VOCAB, reverse_src=False)
    assert src == [2, SRC_VOCAB.stoi["ein"], SRC_VOCAB.stoi["hund"], 3]
    assert trg == [2, TRG_VOCAB.stoi["a"], TRG_VOCAB.stoi["dog"], 3]


def test_numericalize_reverses_source_only_when_asked():
    tokens = ["ein", "hund", "läuft"]
    forward, _ = numericalize(tokens, ["a"], SRC_VOCAB, TRG_VOCAB, reverse_src=False)
    backward, _ = numericalize(tokens, ["a"], SRC_VOCAB, TRG_VOCAB, reverse_src=True)
    assert backward == [2, *forward[-2:0:-1], 3]
    assert backward != forward


def test_numericalize_reverses_the_target_only_for_reverse_trg():
    trg_tokens = ["a", "dog", "runs"]
    _, forward = numericalize(["ein"], trg_tokens, SRC_VOCAB, TRG_VOCAB, reverse_src=False)
    _, also_forward = numericalize(["ein"], trg_tokens, SRC_VOCAB, TRG_VOCAB, reverse_src=True)
    assert forward == also_forward == [2, *TRG_VOCAB.encode(trg_tokens), 3]
    src, backward = numericalize(["ein"], trg_tokens, SRC_VOCAB, TRG_VOCAB, False, True)
    assert backward == [2, *TRG_VOCAB.encode(trg_tokens[::-1]), 3]
    assert src == [2, SRC_VOCAB.stoi["ein"], 3]
    assert trg_tokens == ["a", "dog", "runs"]  # the caller's list is left as it was


def test_numericalize_does_not_change_the_callers_tokens():
    tokens = ["ein", "hund"]
    numericalize(tokens, ["a"], SRC_VOCAB, TRG_VOCAB, reverse_src=True)
    assert tokens == ["ein", "hund"]


def test_numericalize_maps_unknown_words_to_unk():
    src, _ = numericalize(["katze"], ["a"], SRC_VOCAB, TRG_VOCAB, reverse_src=False)
    assert src == [2, SRC_VOCAB.unk_idx, 3]


def test_pad_is_time_major_and_filled_with_pad_idx():
    padded = pad([[5, 6, 7], [8], [9, 10]], pad_idx=1)
    assert padded.shape == (3, 3)  # (max_len, B)
    assert padded.dtype == torch.long
    assert padded.tolist() == [[5, 8, 9], [6, 1, 10], [7, 1, 1]]


def test_collate_counts_non_pad_target_tokens_after_sos():
    examples = [([2, 7, 3], [2, 8, 9, 3]), ([2, 3], [2, 3]), ([2, 7, 7, 7, 3], [2, 8, 8, 8, 8, 3])]
    batch = collate(examples, [0, 1, 2], pad_idx=1)
    assert batch.n_target_tokens == 3 + 1 + 5
    assert batch.n_target_tokens == int((batch.trg[1:] != 1).sum())


def test_collate_takes_the_chosen_examples_in_order():
    examples = [([2, 7, 3], [2, 8, 3]), ([2, 3], [2, 9, 9, 3]), ([2, 6, 6, 3], [2, 3])]
    batch = collate(examples, [2, 0], pad_idx=1)
    assert batch.indices == [2, 0]
    assert batch.src.shape == (4, 2)
    assert batch.trg.shape == (3, 2)
    assert batch.src_lengths.tolist() == [4, 3]
    assert batch.src[:, 1].tolist() == [2, 7, 3, 1]
    assert batch.trg[:, 0].tolist() == [2, 3, 1]


def test_every_example_appears_exactly_once():
    examples = examples_of_lengths([random.Random(i).randint(1, 30) for i in range(1003)])
    batches = bucket_batches(examples, batch_size=16, pool_batches=5, rng=random.Random(1))
    assert sorted(all_indices(batches)) == list(range(len(examples)))


def test_batches_are_at_most_batch_size():
    examples = examples_of_lengths([i % 17 + 1 for i in range(250)])
    batches = bucket_batches(examples, batch_size=32, pool_batches=3, rng=random.Random(0))
    assert all(1 <= len(batch) <= 32 for batch in batches)


def test_same_seed_gives_same_batches():
    examples = examples_of_lengths([i % 23 + 1 for i in range(500)])
    first = bucket_batches(examples, 16, 4, random.Random(42))
    second = bucket_batches(examples, 16, 4, random.Random(42))
    assert first == second


def test_different_seed_gives_different_batches():
    examples = examples_of_lengths([i % 23 + 1 for i in range(500)])
    first = bucket_batches(examples, 16, 4, random.Random(42))
    second = bucket_batches(examples, 16, 4, random.Random(43))
    assert first != second


def test_no_rng_keeps_a_fixed_length_sorted_order():
    lengths = [random.Random(i).randint(1, 40) for i in range(300)]
    examples = examples_of_lengths(lengths)
    batches = bucket_batches(examples, batch_size=10, pool_batches=len(examples), rng=None)
    order = all_indices(batches)
    assert [lengths[i] for i in order] == sorted(lengths)
    assert bucket_batches(examples, 10, len(examples), rng=None) == batches


def test_evaluation_batches_are_length_sorted_and_fixed():
    lengths = [random.Random(i).randint(1, 40) for i in range(300)]
    examples = examples_of_lengths(lengths)
    batches = evaluation_batches(examples, batch_size=7)
    assert [lengths[i] for i in all_indices(batches)] == sorted(lengths)
    assert evaluation_batches(examples, batch_size=7) == batches


def test_padding_fraction_counts_padding_on_both_sides():
    examples = [([1, 1], [1, 1, 1, 1]), ([1, 1, 1, 1], [1, 1])]
    assert padding_fraction(examples, [[0, 1]]) == pytest.approx(4 / 16)
    assert padding_fraction(examples, [[0], [1]]) == 0.0


@pytest.fixture(scope="module")
def multi30k_train_examples(multi30k_dir):
    return build_corpus(DataConfig(data_dir=str(multi30k_dir))).examples["train"]


def test_bucketing_cuts_padding_on_multi30k(multi30k_train_examples):
    examples = multi30k_train_examples
    plain = padding_fraction(examples, bucket_batches(examples, 128, 1, random.Random(0)))
    bucketed = padding_fraction(examples, bucket_batches(examples, 128, 100, random.Random(0)))
    assert plain > 0.3
    assert bucketed < plain / 3


def examples_of_unrelated_lengths(count: int, seed: int) -> list[tuple[list[int], list[int]]]:
    """Examples whose source and target lengths vary independently (2 to 40 ids each)."""
    rng = random.Random(seed)
    return [([4] * rng.randint(2, 40), [5] * rng.randint(2, 40)) for _ in range(count)]


def test_token_batches_collate_to_at_most_batch_tokens_positions():
    examples = examples_of_unrelated_lengths(2000, seed=3)
    batches = bucket_batches(examples, 64, 10, random.Random(0), max_tokens=600)
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
    examples = [([4] * 5, [5] * 5), ([4] * 30, [5] * 30), ([4] * 5, [5] * 6)]
    batches = bucket_batches(examples, 8, 1, rng=None, max_tokens=40)
    assert sorted(batches) == [[0, 2], [1]]
