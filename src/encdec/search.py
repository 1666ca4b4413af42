"""Decoding: from a source batch to target ids, greedily or by sampling from the softmax."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from encdec.batching import Example, collate, evaluation_batches
from encdec.model import Seq2Seq, State


def _select(state: State, keep: torch.Tensor) -> State:
    """The state of the batch columns in `keep` only."""
    if isinstance(state, tuple):
        return tuple(part[:, keep] for part in state)
    return state[:, keep]


@torch.no_grad()
def decode(
    model: Seq2Seq,
    src: torch.Tensor,
    src_lengths: torch.Tensor,
    sos_idx: int,
    eos_idx: int,
    max_len: int,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
) -> list[list[int]]:
    """Decode a batch one token at a time until <eos> or `max_len` tokens.

    temperature 0 takes the argmax (greedy decoding); above 0 it samples from
    softmax(logits / temperature). Finished sentences leave the batch, so the work shrinks as
    they end. Returns each sentence's ids without <sos> and <eos>, in batch order.
    """
    state = model.encoder(src, src_lengths)
    batch_size = src.shape[1]
    generated = torch.full((max_len, batch_size), eos_idx, dtype=torch.long)
    active = torch.arange(batch_size)  # batch positions still decoding
    tokens = torch.full((1, batch_size), sos_idx, dtype=torch.long, device=src.device)
    for step in range(max_len):
        logits, state = model.decoder(tokens, state)  # (1, active, V)
        tokens = choose_next(logits[0], temperature, generator).unsqueeze(0)  # (1, active)
        generated[step, active] = tokens[0].cpu()
        unfinished = tokens[0] != eos_idx
        if not unfinished.any():
            break
        if not unfinished.all():
            active, tokens = active[unfinished.cpu()], tokens[:, unfinished]
            state = _select(state, unfinished)
    return [_before_eos(ids, eos_idx) for ids in generated.T.tolist()]


def _before_eos(ids: list[int], eos_idx: int) -> list[int]:
    return ids[: ids.index(eos_idx)] if eos_idx in ids else ids


def choose_next(
    logits: torch.Tensor,
    temperature: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Next token per row of (B, V) logits: argmax, or a sample at the given temperature."""
    if temperature == 0:
        return logits.argmax(-1)
    probabilities = torch.softmax(logits / temperature, dim=-1)
    return torch.multinomial(probabilities, 1, generator=generator).squeeze(1)


def decode_examples(
    model: Seq2Seq,
    examples: Sequence[Example],
    pad_idx: int,
    sos_idx: int,
    eos_idx: int,
    max_len: int,
    batch_size: int,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
) -> list[list[int]]:
    """Decode the sources of many examples in length-sorted batches; results in input order."""
    model.eval()
    outputs: list[list[int]] = [[] for _ in examples]
    for indices in evaluation_batches(examples, batch_size):
        batch = collate(examples, indices, pad_idx)
        ids = decode(
            model, batch.src, batch.src_lengths, sos_idx, eos_idx, max_len, temperature, generator
        )
        for index, sentence_ids in zip(indices, ids):
            outputs[index] = sentence_ids
    return outputs
