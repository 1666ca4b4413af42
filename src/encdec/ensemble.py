"""Ensembles: several trained models translating as one.

At every step each model predicts the next token on its own, from its own state; the ensemble's
prediction is the mean of their probability distributions (Sutskever et al., 2014, ensembled
five LSTMs this way). Search, scoring and `unk_replace` see one model, so everything that
translates with one checkpoint translates with several.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from encdec.errors import EncdecError
from encdec.model import DecoderState, Seq2Seq


@dataclass
class EnsembleState:
    """Each member's decoder state, in the members' order."""

    members: list[DecoderState]

    def select(self, index: torch.Tensor) -> EnsembleState:
        """The state of batch columns `index`, in that order, for every member."""
        return EnsembleState([state.select(index) for state in self.members])

    @property
    def attention(self) -> torch.Tensor | None:
        """(steps, B, S): the mean of the attention weights of the members that attend."""
        weights = [state.attention for state in self.members if state.attention is not None]
        return torch.stack(weights).mean(0) if weights else None


class EnsembleDecoder:
    """One decoder step of every member; the scores are log(mean of their probabilities)."""

    def __init__(self, members: Sequence[Seq2Seq]):
        self.members = members
        attending = [m.decoder.attention for m in members if m.decoder.attention is not None]
        self.attention = attending[0] if attending else None  # search asks only whether any

    def __call__(
        self, input_tokens: torch.Tensor, state: EnsembleState
    ) -> tuple[torch.Tensor, EnsembleState]:
        """Scores (steps, B, V) for the token after each of `input_tokens` (steps, B)."""
        outputs = [
            model.decoder(input_tokens, member_state)
            for model, member_state in zip(self.members, state.members)
        ]
        log_probs = torch.stack([torch.log_softmax(scores, -1) for scores, _ in outputs])
        # (M, steps, B, V) -> (steps, B, V); already normalised, so log_softmax leaves it as is
        mean_log_prob = torch.logsumexp(log_probs, 0) - math.log(len(self.members))
        return mean_log_prob, EnsembleState([member_state for _, member_state in outputs])


class Ensemble(Seq2Seq):
    """Models that share their vocabularies, used as one Seq2Seq (`forward` is Seq2Seq's)."""

    def __init__(self, members: Sequence[Seq2Seq]):
        nn.Module.__init__(self)  # no encoder or decoder of its own: each member has its own
        if not members:
            raise EncdecError("an ensemble needs at least one model")
        self.members = nn.ModuleList(members)
        self.decoder = EnsembleDecoder(self.members)

    def encode(self, src: torch.Tensor, src_lengths: torch.Tensor) -> EnsembleState:
        """Each member's starting state for the source batch."""
        return EnsembleState([model.encode(src, src_lengths) for model in self.members])
