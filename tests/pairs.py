"""Pairs of ids written as the model reads them, and the training step `encdec train` takes on
them, for tests that build batches by hand."""

import numpy as np
import torch
from torch import nn

from encdec.batching import collate
from encdec.config import TrainingConfig
from encdec.pair_ids import PairIds, Sentences
from encdec.steps import StepTally, train_batch
from encdec.vocab import PAD_IDX


def pairs_of_examples(examples: list[tuple[list[int], list[int]]]) -> PairIds:
    """PairIds of (source, target) id lists that each start with <sos> and end with <eos>."""
    return PairIds(
        Sentences.from_lists([src[1:-1] for src, _ in examples]),
        Sentences.from_lists([trg[1:-1] for _, trg in examples]),
    )


def update_on(
    model: nn.Module,
    pairs: PairIds,
    indices: list[int] | np.ndarray,
    optimizer: torch.optim.Optimizer,
    coins: torch.Tensor | None = None,
    **settings,
) -> float:
    """One update of `model` on batch `indices` by the training step; its mean loss per token."""
    batch = collate(pairs, indices, PAD_IDX)
    tally = StepTally(torch.device("cpu"))
    train_batch(model, batch, TrainingConfig(**settings), optimizer, None, tally, coins=coins)
    return tally.read(steps_done=1) / batch.n_target_tokens
