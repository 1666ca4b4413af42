"""From sentence pairs to padded tensors: length-bucketed batches, padding, sharding.

Batches are planned from the pairs' length arrays (numpy), so planning an epoch of millions of
pairs makes one array per batch and no Python object per sentence.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from encdec.errors import EncdecError
from encdec.pair_ids import PairIds


@dataclass
class Batch:
    src: torch.Tensor  # (S, B) source ids, time-major like the textbook
    src_lengths: torch.Tensor  # (B,) on the CPU, as pack_padded_sequence wants
    trg: torch.Tensor  # (T, B) target ids, <sos> first
    n_target_tokens: int  # tokens the loss is computed on: non-padding positions after <sos>
    indices: np.ndarray  # (B,) positions of these pairs in the corpus


def collate(pairs: PairIds, indices: np.ndarray, pad_idx: int) -> Batch:
    """Pad the chosen pairs into one Batch."""
    indices = np.asarray(indices, dtype=np.int64)
    src = pairs.src.padded(indices, pad_idx, pairs.reverse_src)  # (S, B)
    trg = pairs.trg.padded(indices, pad_idx, pairs.reverse_trg)  # (T, B)
    n_target_tokens = int(pairs.trg_lengths[indices].sum()) - len(indices)
    return Batch(
        torch.from_numpy(src),
        torch.from_numpy(pairs.src_lengths[indices].astype(np.int64)),
        torch.from_numpy(trg),
        n_target_tokens,
        indices,
    )


def bucket_batches(
    pairs: PairIds,
    batch_size: int,
    pool_batches: int,
    rng: np.random.Generator | None,
    max_tokens: int | None = None,
) -> list[np.ndarray]:
    """Group pair indices into batches of similar length to cut padding.

    The pairs are shuffled (when `rng` is given), cut into pools of `pool_batches` batches,
    each pool sorted by length and sliced into batches, and the batch order shuffled again.
    `pool_batches=1` gives plain random batches; `rng=None` keeps the data order (evaluation).
    With `max_tokens`, a batch also ends before its padded source + target positions (the
    elements of collate's two tensors) would pass it; a longer sentence alone is a batch.
    """
    order = rng.permutation(len(pairs)) if rng is not None else np.arange(len(pairs))
    pool_size = batch_size * pool_batches
    batches: list[np.ndarray] = []
    for start in range(0, len(order), pool_size):
        pool = order[start : start + pool_size]
        # a stable sort by source length, then target length
        pool = pool[np.lexsort((pairs.trg_lengths[pool], pairs.src_lengths[pool]))]
        batches += _slice(pool, pairs, batch_size, max_tokens)
    if rng is not None:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def _slice(
    pool: np.ndarray, pairs: PairIds, batch_size: int, max_tokens: int | None
) -> list[np.ndarray]:
    """Cut a length-sorted pool into consecutive batches within both limits."""
    if max_tokens is None:
        return [pool[i : i + batch_size] for i in range(0, len(pool), batch_size)]
    ends, size, longest_src, longest_trg = [], 0, 0, 0
    lengths = zip(pairs.src_lengths[pool].tolist(), pairs.trg_lengths[pool].tolist())
    for position, (src_length, trg_length) in enumerate(lengths):
        # collate pads each side to its own longest sentence: (S, B) + (T, B) positions
        padded = (size + 1) * (max(longest_src, src_length) + max(longest_trg, trg_length))
        if size and (size == batch_size or padded > max_tokens):
            ends.append(position)
            size, longest_src, longest_trg = 0, 0, 0
        size += 1
        longest_src, longest_trg = max(longest_src, src_length), max(longest_trg, trg_length)
    return np.split(pool, ends) if len(pool) else []


def padding_fraction(pairs: PairIds, batches: list[np.ndarray]) -> float:
    """Share of source and target positions in the padded tensors that are padding."""
    real = padded = 0
    for batch in batches:
        for lengths in (pairs.src_lengths[batch], pairs.trg_lengths[batch]):
            real += int(lengths.sum())
            padded += int(lengths.max()) * len(lengths)
    return 1 - real / padded if padded else 0.0


def evaluation_batches(
    pairs: PairIds, batch_size: int, max_tokens: int | None = None
) -> list[np.ndarray]:
    """Length-sorted batches in a fixed order, for validation, test and translation; with
    `max_tokens`, capped in padded positions as in `bucket_batches`."""
    whole = max(len(pairs), 1)
    return bucket_batches(pairs, batch_size, pool_batches=whole, rng=None, max_tokens=max_tokens)


def splittable(batches: list[np.ndarray], world_size: int) -> list[np.ndarray]:
    """The batches, each with at least `world_size` pairs: a smaller one joins its neighbour.

    Every process of a data-parallel run needs a non-empty share of every batch.
    """
    merged: list[np.ndarray] = []
    for batch in batches:
        if merged and (len(batch) < world_size or len(merged[-1]) < world_size):
            merged[-1] = np.concatenate([merged[-1], batch])
        else:
            merged.append(batch)
    if merged and len(merged[-1]) < world_size:
        raise EncdecError(
            f"{len(merged[-1])} training pairs cannot be shared by {world_size} processes: "
            "use more data or fewer processes"
        )
    return merged


def shard(batch: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """Process `rank`'s share of a length-sorted batch: every `world_size`-th pair.

    Striding (not cutting into blocks) gives each process sentences of every length in the
    batch, so all of them finish a step at about the same time.
    """
    return batch[rank::world_size]
