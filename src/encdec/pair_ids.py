"""Sentence pairs as ids: one flat integer array per side plus offsets, in memory or mapped.

No Python object per sentence: a corpus of millions of pairs costs its arrays, which a prepared
folder (prepared.py) maps from disk, so every process shares the same pages.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from encdec.vocab import Vocab

SOS_IDX, EOS_IDX = 2, 3  # every Vocab starts with <unk>, <pad>, <sos>, <eos>


def positions_within(lengths: np.ndarray) -> np.ndarray:
    """(sum of lengths,) 0 ... length - 1 for each length, one run after another."""
    starts = np.cumsum(lengths) - lengths
    return np.arange(int(lengths.sum())) - np.repeat(starts, lengths)


def ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """(sum of lengths,) the positions starts[i] ... starts[i] + lengths[i] - 1, run after run."""
    return np.repeat(starts, lengths) + positions_within(lengths)


def offsets_of(lengths: np.ndarray) -> np.ndarray:
    """(N + 1,) int64 offsets of N runs of these lengths laid one after another."""
    return np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)


@dataclass(frozen=True)
class Sentences:
    """Many sentences' token ids: sentence i is ids[offsets[i]:offsets[i + 1]], no specials."""

    ids: np.ndarray  # (total tokens,) uint16 or int32
    offsets: np.ndarray  # (N + 1,) int64, starting at 0

    @classmethod
    def from_lists(cls, id_lists: Sequence[Sequence[int]]) -> Sentences:
        lengths = np.fromiter(map(len, id_lists), dtype=np.int64, count=len(id_lists))
        offsets = offsets_of(lengths)
        ids = np.fromiter((i for ids in id_lists for i in ids), dtype=np.int32, count=offsets[-1])
        return cls(ids, offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        """(N,) int64: tokens per sentence, without <sos> and <eos> (computed at each call)."""
        return np.diff(self.offsets)

    def padded(self, indices: np.ndarray, pad_idx: int, reverse: bool) -> np.ndarray:
        """Sentences `indices` as columns <sos> ids <eos> <pad>...: (max length + 2, B) int64.

        With `reverse` each sentence's ids run backwards between its <sos> and <eos>.
        """
        lengths = self.offsets[indices + 1] - self.offsets[indices]  # (B,)
        batch_size = len(indices)
        padded = np.full((int(lengths.max(initial=0)) + 2, batch_size), pad_idx, dtype=np.int64)
        padded[0] = SOS_IDX
        padded[lengths + 1, np.arange(batch_size)] = EOS_IDX
        columns = np.repeat(np.arange(batch_size), lengths)  # (tokens,)
        within = positions_within(lengths)  # (tokens,)
        rows = np.repeat(lengths, lengths) - within if reverse else within + 1
        padded[rows, columns] = self.ids[ranges(self.offsets[indices], lengths)]
        return padded

    def select(self, indices: np.ndarray) -> Sentences:
        """The sentences `indices`, in that order, as a corpus of their own."""
        indices = np.asarray(indices, dtype=np.int64)
        lengths = self.offsets[indices + 1] - self.offsets[indices]
        return Sentences(self.ids[ranges(self.offsets[indices], lengths)], offsets_of(lengths))

    def ids_of(self, index: int) -> list[int]:
        """One sentence's ids, without specials."""
        return self.ids[self.offsets[index] : self.offsets[index + 1]].tolist()


@dataclass(frozen=True)
class PairIds:
    """Source and target sentences, pair i being sentence i of each side.

    `reverse_src` / `reverse_trg` (data.reverse_src, data.reverse_trg) are applied as batches
    are padded, so one prepared corpus serves models trained either way round.
    """

    src: Sentences
    trg: Sentences
    reverse_src: bool = False
    reverse_trg: bool = False

    @classmethod
    def from_token_lists(
        cls,
        src_tokens: Sequence[list[str]],
        trg_tokens: Sequence[list[str]],
        src_vocab: Vocab,
        trg_vocab: Vocab,
        reverse_src: bool = False,
        reverse_trg: bool = False,
    ) -> PairIds:
        """Token lists as ids of the two vocabularies (unknown tokens as <unk>)."""
        return cls(
            Sentences.from_lists([src_vocab.encode(tokens) for tokens in src_tokens]),
            Sentences.from_lists([trg_vocab.encode(tokens) for tokens in trg_tokens]),
            reverse_src,
            reverse_trg,
        )

    def __len__(self) -> int:
        return len(self.src)

    @cached_property
    def src_lengths(self) -> np.ndarray:
        """(N,) int32 source lengths as the model reads them: <sos> and <eos> included."""
        return (self.src.lengths + 2).astype(np.int32)

    @cached_property
    def trg_lengths(self) -> np.ndarray:
        """(N,) int32 target lengths with <sos> and <eos>."""
        return (self.trg.lengths + 2).astype(np.int32)

    def select(self, indices: np.ndarray) -> PairIds:
        """The pairs `indices`, in that order, as a corpus of their own."""
        return PairIds(
            self.src.select(indices), self.trg.select(indices), self.reverse_src, self.reverse_trg
        )

    def pair(self, index: int) -> tuple[list[int], list[int]]:
        """Pair `index` as the model reads it: <sos> ids <eos> per side, reversed as configured."""
        src, trg = self.src.ids_of(index), self.trg.ids_of(index)
        src, trg = src[::-1] if self.reverse_src else src, trg[::-1] if self.reverse_trg else trg
        return [SOS_IDX, *src, EOS_IDX], [SOS_IDX, *trg, EOS_IDX]
