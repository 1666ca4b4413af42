"""Stacked recurrent layers: one-layer LSTMs or GRUs with dropout between them.

`nn.LSTM(..., num_layers=L, dropout=p)` computes the same thing, but on a GPU cuDNN draws its
dropout masks from a generator of its own that no checkpoint can save, so a resumed run would
drift. Here the dropout is an `nn.Dropout`, drawn from torch's generator like every other mask.
Shapes: S = steps, B = batch, H = hidden size per direction, L = layers, D = directions.
"""

from __future__ import annotations

import re

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

RNN_CELLS = {"lstm": nn.LSTM, "gru": nn.GRU}

# An LSTM's state is (hidden, cell), each (L * D, B, H); a GRU's is hidden alone.
State = torch.Tensor | tuple[torch.Tensor, torch.Tensor]

# A key of one multi-layer nn.LSTM/nn.GRU, as checkpoints before StackedRNN hold them:
# weight_ih_l1_reverse is layer 1's backward input weight.
_MULTI_LAYER_KEY = re.compile(r"(?P<name>\w+?)_l(?P<layer>\d+)(?P<reverse>_reverse)?")


class StackedRNN(nn.Module):
    """`num_layers` one-layer RNNs, each reading the outputs of the one below through dropout.

    Takes and returns states shaped (L * D, B, H) like `nn.LSTM`, reads padded (S, B, .) or packed
    sequences, and loads the state_dict of an `nn.LSTM`/`nn.GRU` with `num_layers` layers.
    """

    def __init__(
        self,
        cell: str,
        input_dim: int,
        hidden_dim: int,
        num_layers: int,
        dropout: float,
        bidirectional: bool = False,
    ):
        super().__init__()
        self.directions = 2 if bidirectional else 1
        below = [input_dim] + [self.directions * hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(
            RNN_CELLS[cell](size, hidden_dim, bidirectional=bidirectional) for size in below
        )
        self.dropout = nn.Dropout(dropout)  # between layers, not after the top one
        self.register_load_state_dict_pre_hook(_rename_multi_layer_keys)

    def forward(
        self, inputs: torch.Tensor | PackedSequence, state: State | None = None
    ) -> tuple[torch.Tensor | PackedSequence, State]:
        """The top layer's outputs, (S, B, D * H) or packed, and every layer's final state."""
        outputs, finals = inputs, []
        for index, (layer, layer_state) in enumerate(zip(self.layers, self._split(state))):
            if index:
                outputs = self._drop(outputs)
            outputs, final = layer(outputs, layer_state)  # final: (D, B, H), or two of them
            finals.append(final)
        if isinstance(finals[0], tuple):
            return outputs, tuple(torch.cat(parts) for parts in zip(*finals))  # (L * D, B, H)
        return outputs, torch.cat(finals)  # (L * D, B, H)

    def _split(self, state: State | None) -> list:
        """Each layer's share of a (L * D, B, H) state; None (zeros) for every layer without one."""
        if state is None:
            return [None] * len(self.layers)
        if isinstance(state, tuple):
            return list(zip(*(part.split(self.directions) for part in state)))
        return list(state.split(self.directions))

    def _drop(self, outputs: torch.Tensor | PackedSequence) -> torch.Tensor | PackedSequence:
        if isinstance(outputs, PackedSequence):  # built anew: torch.compile cannot trace _replace
            dropped = self.dropout(outputs.data)  # (tokens, D * H)
            return PackedSequence(
                dropped, outputs.batch_sizes, outputs.sorted_indices, outputs.unsorted_indices
            )
        return self.dropout(outputs)


def _rename_multi_layer_keys(module: StackedRNN, state_dict: dict, prefix: str, *_) -> None:
    """Rename a multi-layer RNN's keys (weight_ih_l1) to this layout's (layers.1.weight_ih_l0)."""
    for key in [key for key in state_dict if key.startswith(prefix)]:
        old = _MULTI_LAYER_KEY.fullmatch(key[len(prefix) :])
        if old is not None:
            new = f"layers.{old['layer']}.{old['name']}_l0{old['reverse'] or ''}"
            state_dict[prefix + new] = state_dict.pop(key)
