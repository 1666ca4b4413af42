"""The textbook seq2seq loop, re-implemented only as the speed reference for benchmarks/speed.py.

It keeps the lesson's semantics on purpose: the encoder runs over padding (no packing), the
decoder is called once per target position and its scores are copied into a zero tensor, one
coin per step decides teacher forcing, batches are shuffled without bucketing, and translation
decodes one sentence at a time. Parameter names match encdec's model, so weights load across.
"""

from __future__ import annotations

import random

import torch
from torch import nn


class Encoder(nn.Module):
    def __init__(self, input_dim, emb_dim, hid_dim, n_layers, dropout):
        super().__init__()
        self.embedding = nn.Embedding(input_dim, emb_dim)
        self.rnn = nn.LSTM(emb_dim, hid_dim, n_layers, dropout=dropout)
        self.dropout = nn.Dropout(dropout)

    def forward(self, src):
        embedded = self.dropout(self.embedding(src))  # (S, B, E)
        _, (hidden, cell) = self.rnn(embedded)  # each (L, B, H), computed after any padding
        return hidden, cell


class Decoder(nn.Module):
    def __init__(self, output_dim, emb_dim, hid_dim, n_layers, dropout):
        super().__init__()
        self.output_dim = output_dim
        self.embedding = nn.Embedding(output_dim, emb_dim)
        self.rnn = nn.LSTM(emb_dim, hid_dim, n_layers, dropout=dropout)
        self.fc_out = nn.Linear(hid_dim, output_dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, input, hidden, cell):
        embedded = self.dropout(self.embedding(input.unsqueeze(0)))  # (1, B, E)
        output, (hidden, cell) = self.rnn(embedded, (hidden, cell))  # (1, B, H)
        return self.fc_out(output.squeeze(0)), hidden, cell  # (B, V)


class Seq2Seq(nn.Module):
    def __init__(self, encoder, decoder):
        super().__init__()
        self.encoder, self.decoder = encoder, decoder

    def forward(self, src, trg, teacher_forcing_ratio=0.5):
        trg_len, batch_size = trg.shape
        outputs = torch.zeros(trg_len, batch_size, self.decoder.output_dim)
        hidden, cell = self.encoder(src)
        input = trg[0]
        for t in range(1, trg_len):
            output, hidden, cell = self.decoder(input, hidden, cell)
            outputs[t] = output
            teacher_force = random.random() < teacher_forcing_ratio
            input = trg[t] if teacher_force else output.argmax(1)
        return outputs  # (T, B, V), row 0 left as zeros


def build_reference(
    src_vocab_size, trg_vocab_size, emb_dim=256, hid_dim=512, n_layers=2, dropout=0.5
) -> Seq2Seq:
    model = Seq2Seq(
        Encoder(src_vocab_size, emb_dim, hid_dim, n_layers, dropout),
        Decoder(trg_vocab_size, emb_dim, hid_dim, n_layers, dropout),
    )
    for parameter in model.parameters():
        nn.init.uniform_(parameter, -0.08, 0.08)
    return model


def train_step(model, src, trg, optimizer, criterion, clip=1.0, teacher_forcing_ratio=0.5):
    model.train()
    optimizer.zero_grad()
    output = model(src, trg, teacher_forcing_ratio)
    loss = criterion(output[1:].reshape(-1, output.shape[-1]), trg[1:].reshape(-1))
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), clip)
    optimizer.step()
    return loss.item()


def translate_sentence(model, src_ids, sos_idx, eos_idx, max_len=25):
    """Greedy decoding of one sentence (a list of source ids with <sos> and <eos>)."""
    model.eval()
    with torch.no_grad():
        hidden, cell = model.encoder(torch.LongTensor(src_ids).unsqueeze(1))
        outputs = [sos_idx]
        for _ in range(max_len):
            input = torch.LongTensor([outputs[-1]])
            output, hidden, cell = model.decoder(input, hidden, cell)
            predicted = output.argmax(-1).item()
            outputs.append(predicted)
            if predicted == eos_idx:
                break
    return outputs[1:]
