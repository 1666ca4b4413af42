"""The encoder-decoder of Sutskever et al. (2014): the textbook seq2seq model.

Shapes use S = source length, T = target length, B = batch, E = embedding size, H = hidden size,
L = layers, V = vocabulary size. Sequences are time-major, (S, B), as in the textbook.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from encdec.attention import ATTENTIONS, Attention, Memory
from encdec.config import ModelConfig
from encdec.errors import EncdecError
from encdec.rnn import StackedRNN, State
from encdec.vocab import SPECIALS, UNK

UNK_IDX, FIRST_WORD_IDX = SPECIALS.index(UNK), len(SPECIALS)


@dataclass
class DecoderState:
    """What the decoder carries from one step to the next, for each sentence of the batch."""

    rnn: State  # the recurrent state; at the start, the encoder's context vector
    memory: Memory | None = None  # the encoder's outputs, for attention
    attentional: torch.Tensor | None = None  # (1, B, H) last attentional vector (input feeding)
    attention: torch.Tensor | None = None  # (steps, B, S) weights of the last decoder call
    fixed_context: torch.Tensor | None = None  # (1, B, H) read by every step (Cho et al., 2014)

    def select(self, index: torch.Tensor) -> DecoderState:
        """The state of batch columns `index`, in that order (finished sentences, beams)."""
        return DecoderState(
            _select_columns(self.rnn, index),
            self.memory.select(index) if self.memory is not None else None,
            _select_columns(self.attentional, index),
            fixed_context=_select_columns(self.fixed_context, index),
        )


class WordDropout(nn.Module):
    """In training, each word becomes <unk> with probability p: whole words dropped, so the
    model cannot lean on any one of them and learns to read around unknown ones (Sennrich et
    al., 2016). Specials and padding stay; at evaluation it does nothing."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return tokens
        dropped = torch.rand(tokens.shape, device=tokens.device) < self.p  # (steps, B)
        dropped &= tokens >= FIRST_WORD_IDX
        return tokens.masked_fill(dropped, UNK_IDX)


def _select_columns(tensors, index: torch.Tensor):
    """Columns `index` of (steps or layers, B, ...) tensors, or of a tuple of them."""
    if tensors is None:
        return None
    if isinstance(tensors, tuple):
        return tuple(part[:, index] for part in tensors)
    return tensors[:, index]


class Encoder(nn.Module):
    """Reads the source and compresses it into a context vector: the RNN's final state.

    A bidirectional encoder reads the source both ways with half the hidden size each way, so
    its outputs keep the size H; a bridge layer turns each layer's two final states into the
    one state the decoder starts from.
    """

    def __init__(
        self,
        vocab_size: int,
        embedding_dim: int,
        hidden_dim: int,
        num_layers: int,
        dropout: float,
        cell: str = "lstm",
        bidirectional: bool = False,
        word_dropout: float = 0.0,
    ):
        super().__init__()
        if bidirectional and hidden_dim % 2:
            raise EncdecError(f"a bidirectional encoder needs an even hidden_dim, got {hidden_dim}")
        self.hidden_dim, self.num_layers = hidden_dim, num_layers
        rnn_dim = hidden_dim // 2 if bidirectional else hidden_dim  # per direction
        self.word_dropout = WordDropout(word_dropout)
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        self.rnn = StackedRNN(cell, embedding_dim, rnn_dim, num_layers, dropout, bidirectional)
        self.dropout = nn.Dropout(dropout)
        self.bridge = nn.Linear(hidden_dim, hidden_dim) if bidirectional else None

    def forward(self, src: torch.Tensor, src_lengths: torch.Tensor) -> tuple[torch.Tensor, State]:
        """The outputs at every source position, (S, B, H), and the context vector."""
        # src: (S, B); src_lengths: (B,) on the CPU
        embedded = self.dropout(self.embedding(self.word_dropout(src)))  # (S, B, E)
        # Packing stops each sentence's RNN at its last real token, so the context vector never
        # sees padding and a sentence encodes the same alone or beside longer batch-mates.
        packed = pack_padded_sequence(embedded, src_lengths.cpu(), enforce_sorted=False)
        packed_outputs, context = self.rnn(packed)  # hidden (and cell): (L * directions, B, .)
        outputs, _ = pad_packed_sequence(packed_outputs, total_length=src.shape[0])  # (S, B, H)
        if self.bridge is not None:
            context = self._bridged(context)
        return outputs, context

    def _bridged(self, context: State) -> State:
        if isinstance(context, tuple):
            return tuple(self._bridged(part) for part in context)
        both_ways = context.view(self.num_layers, 2, *context.shape[1:])  # (L, 2, B, H/2)
        both_ways = torch.cat([both_ways[:, 0], both_ways[:, 1]], dim=-1)  # (L, B, H)
        return torch.tanh(self.bridge(both_ways))  # (L, B, H)


class Decoder(nn.Module):
    """Predicts the next target token from the previous one and the running state.

    Called with one step of input tokens, (1, B), it is the textbook's one-step decoder; called
    with several (teacher forcing), it runs them in one RNN call unless a step's input needs the
    step before. `forward` takes one of four ways, by the model's kind:
    - `_without_attention`, the textbook's: the RNN's output predicts the token.
    - `_with_fixed_context` (`context_every_step`): every step reads the encoder's summary, as
      input and beside the output (Cho et al., 2014), so the state need not carry it.
    - `_attending_after_all_steps`: the RNN's output and the context read from the encoder's
      outputs make the attentional vector that predicts the token (Luong et al., 2015).
    - `_attending_step_by_step`: the same when a step's input needs the step before: input
      feeding, or Bahdanau attention, which reads before the RNN step.
    """

    def __init__(
        self,
        vocab_size: int,
        embedding_dim: int,
        hidden_dim: int,
        num_layers: int,
        dropout: float,
        cell: str = "lstm",
        attention: Attention | None = None,
        input_feeding: bool = False,
        context_every_step: bool = False,
        word_dropout: float = 0.0,
    ):
        super().__init__()
        if context_every_step and attention is not None:
            raise EncdecError("model.context_every_step is for models without attention")
        if input_feeding and attention is None:
            raise EncdecError("model.input_feeding feeds attentional vectors: it needs attention")
        self.vocab_size, self.hidden_dim, self.num_layers = vocab_size, hidden_dim, num_layers
        self.attention, self.input_feeding = attention, input_feeding
        self.context_every_step = context_every_step
        rnn_input_dim = embedding_dim
        if input_feeding:
            rnn_input_dim += hidden_dim
        if attention is not None and attention.query_before_rnn or context_every_step:
            rnn_input_dim += hidden_dim  # the context vector read before the step
        self.word_dropout = WordDropout(word_dropout)
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        self.rnn = StackedRNN(cell, rnn_input_dim, hidden_dim, num_layers, dropout)
        if attention is not None or context_every_step:
            self.combine = nn.Linear(2 * hidden_dim, hidden_dim)  # [context; output] -> H
        self.fc_out = nn.Linear(hidden_dim, vocab_size)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, input_tokens: torch.Tensor, state: DecoderState
    ) -> tuple[torch.Tensor, DecoderState]:
        """Scores (steps, B, V) for the token after each of `input_tokens` (steps, B); new state."""
        embedded = self.dropout(self.embedding(self.word_dropout(input_tokens)))  # (steps, B, E)
        if self.context_every_step:
            return self._with_fixed_context(embedded, state)
        if self.attention is None:
            return self._without_attention(embedded, state)
        if self.attention.query_before_rnn or self.input_feeding:
            return self._attending_step_by_step(embedded, state)
        return self._attending_after_all_steps(embedded, state)

    def _without_attention(
        self, embedded: torch.Tensor, state: DecoderState
    ) -> tuple[torch.Tensor, DecoderState]:
        """The textbook's decoder: the top layer's output predicts the token; steps in one call."""
        output, rnn_state = self.rnn(embedded, state.rnn)  # (steps, B, H)
        return self.fc_out(output), DecoderState(rnn_state)  # (steps, B, V)

    def _with_fixed_context(
        self, embedded: torch.Tensor, state: DecoderState
    ) -> tuple[torch.Tensor, DecoderState]:
        """Every step reads the same context vector, as input and beside the output (Cho et al.)."""
        context = state.fixed_context.expand(embedded.shape[0], -1, -1)  # (steps, B, H)
        output, rnn_state = self.rnn(torch.cat([embedded, context], -1), state.rnn)  # (steps, B, H)
        combined = self._combined(context, output)  # (steps, B, H)
        prediction = self.fc_out(self.dropout(combined))  # (steps, B, V)
        return prediction, DecoderState(rnn_state, fixed_context=state.fixed_context)

    def _attending_after_all_steps(
        self, embedded: torch.Tensor, state: DecoderState
    ) -> tuple[torch.Tensor, DecoderState]:
        """Luong attention without input feeding: steps in one RNN call, one batched attention."""
        output, rnn_state = self.rnn(embedded, state.rnn)  # (steps, B, H)
        context, weights = self.attention(output, state.memory)  # (steps, B, H), (steps, B, S)
        attentional = self._combined(context, output)  # (steps, B, H)
        prediction = self.fc_out(self.dropout(attentional))  # (steps, B, V)
        return prediction, DecoderState(rnn_state, state.memory, attentional[-1:], weights)

    def _attending_step_by_step(
        self, embedded: torch.Tensor, state: DecoderState
    ) -> tuple[torch.Tensor, DecoderState]:
        """Attention when a step's input needs the step before it (input feeding, Bahdanau)."""
        attentional_vectors, all_weights = [], []
        for step_input in embedded.split(1):  # (1, B, E)
            rnn_inputs = [step_input]
            if self.input_feeding:
                rnn_inputs.append(state.attentional)  # (1, B, H)
            if self.attention.query_before_rnn:  # Bahdanau: the top layer's previous state
                context, weights = self.attention(_top_hidden(state.rnn), state.memory)
                rnn_inputs.append(context)  # (1, B, H)
            output, rnn_state = self.rnn(torch.cat(rnn_inputs, -1), state.rnn)  # (1, B, H)
            if not self.attention.query_before_rnn:
                context, weights = self.attention(output, state.memory)
            attentional = self._combined(context, output)  # (1, B, H)
            state = DecoderState(rnn_state, state.memory, attentional)
            attentional_vectors.append(attentional)
            all_weights.append(weights)
        state.attention = torch.cat(all_weights)  # (steps, B, S)
        prediction = self.fc_out(self.dropout(torch.cat(attentional_vectors)))  # (steps, B, V)
        return prediction, state

    def _combined(self, context: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        """tanh(W [context; output]): Luong's attentional vector, or Cho's output beside context."""
        return torch.tanh(self.combine(torch.cat([context, output], -1)))


def _top_hidden(rnn_state: State) -> torch.Tensor:
    hidden = rnn_state[0] if isinstance(rnn_state, tuple) else rnn_state  # (L, B, H)
    return hidden[-1:]  # (1, B, H)


class Seq2Seq(nn.Module):
    """Encoder + decoder: the encoder's final state is the decoder's initial state."""

    def __init__(self, encoder: Encoder, decoder: Decoder):
        super().__init__()
        if encoder.hidden_dim != decoder.hidden_dim:
            raise EncdecError("encoder and decoder must have the same hidden_dim")
        if encoder.num_layers != decoder.num_layers:
            raise EncdecError("encoder and decoder must have the same num_layers")
        self.encoder, self.decoder = encoder, decoder

    def encode(self, src: torch.Tensor, src_lengths: torch.Tensor) -> DecoderState:
        """The decoder's starting state: the context vector (and memory, with attention)."""
        outputs, context = self.encoder(src, src_lengths)
        if self.decoder.context_every_step:
            return DecoderState(context, fixed_context=_top_hidden(context))  # fixed: (1, B, H)
        if self.decoder.attention is None:
            return DecoderState(context)
        memory = self.decoder.attention.memory(outputs, src_lengths)
        first_attentional = outputs.new_zeros(1, src.shape[1], self.decoder.hidden_dim)
        return DecoderState(context, memory, first_attentional)

    def forward(
        self,
        src: torch.Tensor,
        src_lengths: torch.Tensor,
        trg: torch.Tensor,
        teacher_forcing_ratio: float = 1.0,
        coins: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Scores for target positions 1..T-1 given the source, shape (T-1, B, V).

        Position 1 reads <sos>. Each later position t reads the true token trg[t-1] when its
        coin, uniform in [0, 1), falls below `teacher_forcing_ratio` (one coin per step, as in
        the textbook), else the model's own previous guess. `coins` (k >= T-2,) are the steps'
        coins in order, drawn by the caller (training: steps.teacher_forcing_coins); a ratio of
        0 or 1 needs none. Runs of teacher-forced steps go through the decoder in one call.
        """
        steps = trg.shape[0] - 2  # the positions after the first
        if coins is None:
            if 0 < teacher_forcing_ratio < 1:
                raise EncdecError(
                    f"teacher_forcing_ratio {teacher_forcing_ratio} needs coins, one per step"
                )
            forced = [True] + [teacher_forcing_ratio > 0] * steps  # 1: every step, 0: none
        elif len(coins) < steps:
            raise EncdecError(f"{len(coins)} teacher-forcing coins for {steps} steps")
        else:  # the coins are drawn on the host: reading them waits for no device
            forced = [True, *(coins[:steps] < teacher_forcing_ratio).tolist()]
        state = self.encode(src, src_lengths)
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
    encoder = Encoder(
        src_vocab_size, *shape, bidirectional=config.bidirectional, word_dropout=config.word_dropout
    )
    attention = None
    if config.attention != "none":
        attention = ATTENTIONS[config.attention](config.hidden_dim)
    decoder = Decoder(
        trg_vocab_size,
        *shape,
        attention,
        config.input_feeding,
        config.context_every_step,
        word_dropout=config.word_dropout,
    )
    model = Seq2Seq(encoder, decoder)
    for parameter in model.parameters():
        nn.init.uniform_(parameter, -0.08, 0.08)
    if config.share_embeddings:
        _share_source_embedding(encoder, decoder)
    if config.tie_embeddings:
        _tie_output_to_embedding(decoder)
    return model


def _tie_output_to_embedding(decoder: Decoder) -> None:
    """Share the target embedding with the output layer (Press & Wolf, 2017)."""
    if decoder.fc_out.in_features != decoder.embedding.embedding_dim:
        raise EncdecError(
            "model.tie_embeddings needs model.embedding_dim equal to model.hidden_dim "
            f"({decoder.embedding.embedding_dim} != {decoder.fc_out.in_features})"
        )
    decoder.fc_out.weight = decoder.embedding.weight


def _share_source_embedding(encoder: Encoder, decoder: Decoder) -> None:
    """The decoder reads target words through the encoder's embedding: one matrix for both."""
    src_vocab_size, trg_vocab_size = encoder.embedding.num_embeddings, decoder.vocab_size
    if src_vocab_size != trg_vocab_size:
        raise EncdecError(
            "model.share_embeddings needs one vocabulary for source and target, got sizes "
            f"{src_vocab_size} and {trg_vocab_size}: set data.joint_vocab: true"
        )
    decoder.embedding.weight = encoder.embedding.weight


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
