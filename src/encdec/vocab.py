"""Vocabulary: the mapping between tokens and integer ids, with the four special tokens."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping

from encdec.errors import EncdecError

UNK, PAD, SOS, EOS = "<unk>", "<pad>", "<sos>", "<eos>"
SPECIALS = (UNK, PAD, SOS, EOS)
UNK_IDX, PAD_IDX, SOS_IDX, EOS_IDX = range(len(SPECIALS))  # the same in every vocabulary


class Vocab:
    """Tokens in id order; the specials come first, so <unk>=0, <pad>=1, <sos>=2, <eos>=3."""

    def __init__(self, tokens: Iterable[str]):
        self.itos = list(tokens)
        if tuple(self.itos[: len(SPECIALS)]) != SPECIALS:
            raise EncdecError(f"a vocabulary must start with the specials {SPECIALS}")
        self.stoi = {token: index for index, token in enumerate(self.itos)}
        if len(self.stoi) != len(self.itos):
            raise EncdecError("a vocabulary must not list a token twice")
        self.unk_idx, self.pad_idx, self.sos_idx, self.eos_idx = UNK_IDX, PAD_IDX, SOS_IDX, EOS_IDX
        self.structural_ids = {self.pad_idx, self.sos_idx, self.eos_idx}

    @classmethod
    def build(cls, token_lists: Iterable[list[str]], min_freq: int = 2) -> Vocab:
        """Keep every token seen at least `min_freq` times, most frequent first."""
        return cls.from_counts(
            Counter(token for tokens in token_lists for token in tokens), min_freq
        )

    @classmethod
    def from_counts(cls, counts: Mapping[str, int], min_freq: int = 2) -> Vocab:
        """Keep every token counted at least `min_freq` times, most frequent first."""
        kept = sorted(
            (t for t, n in counts.items() if n >= min_freq and t not in SPECIALS),
            key=lambda token: (-counts[token], token),
        )
        return cls(SPECIALS + tuple(kept))

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, tokens: list[str]) -> list[int]:
        return [self.stoi.get(token, self.unk_idx) for token in tokens]

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Tokens of a sentence: <sos>, <eos> and <pad> are dropped, <unk> stays as a marker."""
        return [self.itos[index] for index in ids if index not in self.structural_ids]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and self.itos == other.itos
