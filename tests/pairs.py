"""Pairs of ids written as the model reads them, for tests that build batches by hand."""

from encdec.pair_ids import PairIds, Sentences


def pairs_of_examples(examples: list[tuple[list[int], list[int]]]) -> PairIds:
    """PairIds of (source, target) id lists that each start with <sos> and end with <eos>."""
    return PairIds(
        Sentences.from_lists([src[1:-1] for src, _ in examples]),
        Sentences.from_lists([trg[1:-1] for _, trg in examples]),
    )
