"""Attention: at each target step, a weighted average of the encoder's outputs.

Luong et al. (2015) score the decoder's current output against each source position (`dot`,
or `general` with a learnt matrix); Bahdanau et al. (2015) score the decoder's previous state
with a small feed-forward layer (`additive`). Padding positions get weight 0.

Shapes: T = target steps, S = source length, B = batch, H = hidden size (of the decoder and
of each encoder output).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class Memory:
    """What attention reads: the encoder's outputs, batch-major, and where the padding is."""

    values: torch.Tensor  # (B, S, H) encoder outputs
    keys: torch.Tensor  # (B, S, H) the attention's projection of `values`, computed once
    mask: torch.Tensor  # (B, S) True at real source tokens

    def select(self, index: torch.Tensor) -> Memory:
        """The memory of batch columns `index`, in that order."""
        return Memory(self.values[index], self.keys[index], self.mask[index])


class Attention(nn.Module):
    """Shared by both scoring functions: masking, softmax and the weighted average."""

    # Bahdanau's query is the decoder state before the step, Luong's the output after it.
    query_before_rnn = False

    def keys(self, values: torch.Tensor) -> torch.Tensor:
        """The per-source-position part of the score, computed once per sentence."""
        return values

    def scores(self, queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """Luong's multiplicative score: each query dotted with each key."""
        return torch.bmm(queries, keys.transpose(1, 2))  # (B, T, H) x (B, H, S) -> (B, T, S)

    def memory(self, outputs: torch.Tensor, src_lengths: torch.Tensor) -> Memory:
        """Memory from the encoder's outputs (S, B, H) and the source lengths (B,)."""
        values = outputs.transpose(0, 1)  # (B, S, H)
        positions = torch.arange(values.shape[1], device=values.device)
        mask = positions.unsqueeze(0) < src_lengths.to(values.device).unsqueeze(1)  # (B, S)
        return Memory(values, self.keys(values), mask)

    def forward(self, queries: torch.Tensor, memory: Memory) -> tuple[torch.Tensor, torch.Tensor]:
        """Context vectors (T, B, H) and attention weights (T, B, S) for queries (T, B, H)."""
        scores = self.scores(queries.transpose(0, 1), memory.keys)  # (B, T, S)
        scores = scores.masked_fill(~memory.mask.unsqueeze(1), float("-inf"))
        weights = torch.softmax(scores, dim=-1)  # (B, T, S)
        context = torch.bmm(weights, memory.values)  # (B, T, H)
        return context.transpose(0, 1), weights.transpose(0, 1)


class DotAttention(Attention):
    """Luong's `dot` score: query · encoder output."""

    def __init__(self, hidden_dim: int):
        super().__init__()


class GeneralAttention(Attention):
    """Luong's `general` score: query · W · encoder output."""

    def __init__(self, hidden_dim: int):
        super().__init__()
        self.key_projection = nn.Linear(hidden_dim, hidden_dim, bias=False)

    def keys(self, values: torch.Tensor) -> torch.Tensor:
        return self.key_projection(values)  # (B, S, H)


class AdditiveAttention(Attention):
    """Bahdanau's score: v · tanh(W · query + U · encoder output)."""

    query_before_rnn = True

    def __init__(self, hidden_dim: int):
        super().__init__()
        self.query_projection = nn.Linear(hidden_dim, hidden_dim, bias=False)
        self.key_projection = nn.Linear(hidden_dim, hidden_dim, bias=False)
        self.energy = nn.Linear(hidden_dim, 1, bias=False)

    def keys(self, values: torch.Tensor) -> torch.Tensor:
        return self.key_projection(values)  # (B, S, H)

    def scores(self, queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        queries = self.query_projection(queries).unsqueeze(2)  # (B, T, 1, H)
        energy = self.energy(torch.tanh(queries + keys.unsqueeze(1)))  # (B, T, S, 1)
        return energy.squeeze(-1)  # (B, T, S)


ATTENTIONS = {"dot": DotAttention, "general": GeneralAttention, "additive": AdditiveAttention}
