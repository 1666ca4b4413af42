"""The encoder-decoder of Sutskever et al. (2014): the textbook seq2seq model.

Shapes use S = source length, T = target length, B = batch, E = embedding size, H = hidden size,
L = layers, V = vocabulary size. Sequences are time-major, (S, B), as in the textbook.
"""

from __future__ import annotations

import random

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from encdec.config import ModelConfig
from encdec.errors import EncdecError

RNN_CELLS = {"lstm": nn.LSTM, "gru": nn.GRU}

# An LSTM's state is (hidden, cell), each (L, B, H); a GRU's is hidden alone.
State = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


class Encoder(nn.Module):
    """Reads the source and compresses it into a context vector: the RNN's final state."""

    def __init__(
        self,
        vocab_size: int,
        embedding_dim: int,
        hidden_dim: int,
        num_layers: int,
        dropout: float,
        cell: str = "lstm",
    ):
        super().__init__()
        self.hidden_dim, self.num_layers = hidden_dim, num_layers
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        self.rnn = RNN_CELLS[cell](embedding_dim, hidden_dim, num_layers, dropout=dropout)
        self.dropout = nn.Dropout(dropout)

    def forward(self, src: torch.Tensor, src_lengths: torch.Tensor) -> State:
        # src: (S, B); src_lengths: (B,) on the CPU
        embedded = self.dropout(self.embedding(src))  # (S, B, E)
        # Packing stops each sentence's RNN at its last real token, so the context vector never
        # sees padding and a sentence encodes the same alone or beside longer batch-mates.
        packed = pack_padded_sequence(embedded, src_lengths.cpu(), enforce_sorted=False)
        _, context = self.rnn(packed)  # hidden (and cell): (L, B, H)
        return context


class Decoder(nn.Module):
    """Predicts the next target token from the previous one and the running state.

    Called with one step of input tokens, (1, B), it is the textbook's one-step decoder; called
    with several steps it runs them in one RNN call, which is how teacher forcing gets fast.
    """

    def __init__(
        self,
        vocab_size: int,
        embedding_dim: int,
        hidden_dim: int,
        num_layers: int,
        dropout: float,
        cell: str = "lstm",
    ):
        super().__init__()
        self.vocab_size, self.hidden_dim, self.num_layers = vocab_size, hidden_dim, num_layers
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        self.rnn = RNN_CELLS[cell](embedding_dim, hidden_dim, num_layers, dropout=dropout)
        self.fc_out = nn.Linear(hidden_dim, vocab_size)
        self.dropout = nn.Dropout(dropout)

    def forward(self, input_tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        # input_tokens: (steps, B)
        embedded = self.dropout(self.embedding(input_tokens))  # (steps, B, E)
        output, state = self.rnn(embedded, state)  # output: (steps, B, H)
        prediction = self.fc_out(output)  # (steps, B, V)
        return prediction, state


class Seq2Seq(nn.Module):
    """Encoder + decoder: the encoder's final state is the decoder's initial state."""

    def __init__(self, encoder: Encoder, decoder: Decoder):
        super().__init__()
        if encoder.hidden_dim != decoder.hidden_dim:
            raise EncdecError("encoder and decoder must have the same hidden_dim")
        if encoder.num_layers != decoder.num_layers:
            raise EncdecError("encoder and decoder must have the same num_layers")
        self.encoder, self.decoder = encoder, decoder

    def forward(
        self,
        src: torch.Tensor,
        src_lengths: torch.Tensor,
        trg: torch.Tensor,
        teacher_forcing_ratio: float = 0.5,
    ) -> torch.Tensor:
        """Scores for target positions 1..T-1 given the source, shape (T-1, B, V).

        Position t's input is the true token trg[t-1] with probability `teacher_forcing_ratio`
        (one coin per step, as in the textbook), else the model's own previous guess. Runs of
        teacher-forced steps need no guess, so each run goes through the decoder in one call.
        """
        state = self.encoder(src, src_lengths)
        forced = [True] + [random.random() < teacher_forcing_ratio for _ in range(trg.shape[0] - 2)]
        predictions = []
        step, next_input = 0, trg[:1]  # (1, B): <sos>
        while step < len(forced):
            run_end = step + 1
            while run_end < len(forced) and forced[run_end]:
                run_end += 1
            inputs = torch.cat([next_input, trg[step + 1 : run_end]])  # (run, B)
            prediction, state = self.decoder(inputs, state)  # (run, B, V)
            predictions.append(prediction)
            next_input = prediction[-1:].argmax(-1)  # (1, B): used when the next step is free
            step = run_end
        return torch.cat(predictions)  # (T-1, B, V)


def build_model(config: ModelConfig, src_vocab_size: int, trg_vocab_size: int) -> Seq2Seq:
    """The model a config describes, with the textbook's uniform(-0.08, 0.08) initialisation."""
    shape = (
        config.embedding_dim,
        config.hidden_dim,
        config.num_layers,
        config.dropout,
        config.cell,
    )
    model = Seq2Seq(Encoder(src_vocab_size, *shape), Decoder(trg_vocab_size, *shape))
    for parameter in model.parameters():
        nn.init.uniform_(parameter, -0.08, 0.08)
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
