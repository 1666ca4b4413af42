"""From sentences to padded tensors: numericalisation, length-bucketed batches, padding."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from encdec.errors import EncdecError
from encdec.vocab import Vocab

Example = tuple[list[int], list[int]]  # (source ids, target ids with <sos> ... <eos>)


def numericalize(
    src_tokens: list[str],
    trg_tokens: list[str],
    src_vocab: Vocab,
    trg_vocab: Vocab,
    reverse_src: bool,
    reverse_trg: bool = False,
) -> Example:
    """Token lists -> id lists; either side optionally reversed; both get <sos> and <eos>."""
    if reverse_src:
        src_tokens = src_tokens[::-1]
    if reverse_trg:
        trg_tokens = trg_tokens[::-1]
    src = [src_vocab.sos_idx, *src_vocab.encode(src_tokens), src_vocab.eos_idx]
    trg = [trg_vocab.sos_idx, *trg_vocab.encode(trg_tokens), trg_vocab.eos_idx]
    return src, trg


@dataclass
class Batch:
    src: torch.Tensor  # (S, B) source ids, time-major like the textbook
    src_lengths: torch.Tensor  # (B,) on the CPU, as pack_padded_sequence wants
    trg: torch.Tensor  # (T, B) target ids, <sos> first
    n_target_tokens: int  # tokens the loss is computed on: non-padding positions after <sos>
    indices: list[int]  # positions of these examples in the dataset


def pad(sequences: Sequence[list[int]], pad_idx: int) -> torch.Tensor:
    """Stack id lists into a (max_len, B) tensor filled with `pad_idx` after each sequence."""
    padded = torch.full((max(map(len, sequences)), len(sequences)), pad_idx, dtype=torch.long)
    for column, sequence in enumerate(sequences):
        padded[: len(sequence), column] = torch.tensor(sequence, dtype=torch.long)
    return padded


def collate(examples: Sequence[Example], indices: list[int], pad_idx: int) -> Batch:
    """Pad the chosen examples into one Batch."""
    src = [examples[i][0] for i in indices]
    trg = [examples[i][1] for i in indices]
    src_lengths = torch.tensor([len(s) for s in src], dtype=torch.long)
    n_target_tokens = sum(len(t) - 1 for t in trg)
    return Batch(pad(src, pad_idx), src_lengths, pad(trg, pad_idx), n_target_tokens, indices)


def bucket_batches(
    examples: Sequence[Example],
    batch_size: int,
    pool_batches: int,
    rng: random.Random | None,
    max_tokens: int | None = None,
) -> list[list[int]]:
    """Group example indices into batches of similar length to cut padding.

    The examples are shuffled (when `rng` is given), cut into pools of `pool_batches` batches,
    each pool sorted by length and sliced into batches, and the batch order shuffled again.
    `pool_batches=1` gives plain random batches; `rng=None` keeps the data order (evaluation).
    With `max_tokens`, a batch also ends before its padded source + target positions (the
    elements of collate's two tensors) would pass it; a longer sentence alone is a batch.
    """
    order = list(range(len(examples)))
    if rng is not None:
        rng.shuffle(order)
    pool_size = batch_size * pool_batches
    batches = []
    for start in range(0, len(order), pool_size):
        pool = sorted(
            order[start : start + pool_size],
            key=lambda i: (len(examples[i][0]), len(examples[i][1])),
        )
        batches += _slice(pool, examples, batch_size, max_tokens)
    if rng is not None:
        rng.shuffle(batches)
    return batches


def _slice(
    pool: list[int], examples: Sequence[Example], batch_size: int, max_tokens: int | None
) -> list[list[int]]:
    """Cut a length-sorted pool into consecutive batches within both limits."""
    if max_tokens is None:
        return [pool[i : i + batch_size] for i in range(0, len(pool), batch_size)]
    batches, batch, longest_src, longest_trg = [], [], 0, 0
    for index in pool:
        src_length, trg_length = map(len, examples[index])
        # collate pads each side to its own longest sentence: (S, B) + (T, B) positions
        padded = (len(batch) + 1) * (max(longest_src, src_length) + max(longest_trg, trg_length))
        if batch and (len(batch) == batch_size or padded > max_tokens):
            batches.append(batch)
            batch, longest_src, longest_trg = [], 0, 0
        batch.append(index)
        longest_src, longest_trg = max(longest_src, src_length), max(longest_trg, trg_length)
    return batches + [batch] if batch else batches


def padding_fraction(examples: Sequence[Example], batches: Sequence[list[int]]) -> float:
    """Share of source and target positions in the padded tensors that are padding."""
    real = padded = 0
    for batch in batches:
        for side in (0, 1):
            lengths = [len(examples[i][side]) for i in batch]
            real += sum(lengths)
            padded += max(lengths) * len(lengths)
    return 1 - real / padded if padded else 0.0


def evaluation_batches(examples: Sequence[Example], batch_size: int) -> list[list[int]]:
    """Length-sorted batches in a fixed order, for validation, test and translation."""
    return bucket_batches(examples, batch_size, pool_batches=max(len(examples), 1), rng=None)


def splittable(batches: list[list[int]], world_size: int) -> list[list[int]]:
    """The batches, each with at least `world_size` examples: a smaller one joins its neighbour.

    Every process of a data-parallel run needs a non-empty share of every batch.
    """
    merged: list[list[int]] = []
    for batch in batches:
        if merged and (len(batch) < world_size or len(merged[-1]) < world_size):
            merged[-1] = merged[-1] + batch
        else:
            merged.append(batch)
    if merged and len(merged[-1]) < world_size:
        raise EncdecError(
            f"{len(merged[-1])} training examples cannot be shared by {world_size} processes: "
            "use more data or fewer processes"
        )
    return merged


def shard(batch: list[int], rank: int, world_size: int) -> list[int]:
    """Process `rank`'s share of a length-sorted batch: every `world_size`-th example.

    Striding (not cutting into blocks) gives each process sentences of every length in the
    batch, so all of them finish a step at about the same time.
    """
    return batch[rank::world_size]
