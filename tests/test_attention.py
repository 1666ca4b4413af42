"""Tests for attention (Luong dot/general, Bahdanau additive), the bidirectional encoder, tying."""

import pytest
import torch

from encdec.config import ModelConfig
from encdec.errors import EncdecError
from encdec.model import Seq2Seq, build_model, count_parameters
from encdec.translator import _replace_unknowns

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PAD, SOS, EOS = 1, 2, 3
SRC_VOCAB, TRG_VOCAB = 11, 13
VARIANTS = [
    {"attention": "dot"},
    {"attention": "general"},
    {"attention": "general", "input_feeding": True},
    {"attention": "additive"},
    {"attention": "general", "bidirectional": True},
    {"attention": "additive", "bidirectional": True, "cell": "gru"},
    {"attention": "dot", "bidirectional": True, "input_feeding": True},
]


def attention_model(seed: int = 0, **options) -> Seq2Seq:
    torch.manual_seed(seed)
    config = ModelConfig(embedding_dim=16, hidden_dim=32, num_layers=2, dropout=0.0, **options)
    model = build_model(config, SRC_VOCAB, TRG_VOCAB).eval()
    with torch.no_grad():  # sharper weights, so attention is far from uniform
        for parameter in model.parameters():
            parameter.mul_(10)
    return model


def padded_batch(lengths: list[int], vocab_size: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    batch = torch.full((max(lengths), len(lengths)), PAD, dtype=torch.long)
    for column, length in enumerate(lengths):
        body = torch.randint(4, vocab_size, (length - 2,), generator=generator).tolist()
        batch[:length, column] = torch.tensor([SOS, *body, EOS])
    return batch


def teacher_forced_step_by_step(model: Seq2Seq, src, src_lengths, trg):
    """Scores and attention from one decoder call per target position."""
    state, predictions, weights = model.encode(src, src_lengths), [], []
    for t in range(trg.shape[0] - 1):
        prediction, state = model.decoder(trg[t : t + 1], state)  # (1, B, V)
        predictions.append(prediction)
        weights.append(state.attention)  # (1, B, S)
    return torch.cat(predictions), torch.cat(weights)


@pytest.mark.parametrize("options", VARIANTS)
def test_padding_gets_no_attention(options):
    model = attention_model(**options)
    src_lengths = [7, 3, 5]
    src, trg = padded_batch(src_lengths, SRC_VOCAB, 1), padded_batch([6, 6, 6], TRG_VOCAB, 2)
    with torch.no_grad():
        _, weights = teacher_forced_step_by_step(model, src, torch.tensor(src_lengths), trg)
    for column, length in enumerate(src_lengths):
        assert torch.all(weights[:, column, length:] == 0)
        assert torch.all(weights[:, column, :length] > 0)
    torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:2]))


@pytest.mark.parametrize("options", VARIANTS)
def test_sentence_decodes_the_same_alone_and_in_a_padded_batch(options):
    model = attention_model(**options)
    src, trg = padded_batch([4, 9], SRC_VOCAB, 3), padded_batch([6, 6], TRG_VOCAB, 4)
    with torch.no_grad():
        batched = model(src, torch.tensor([4, 9]), trg, teacher_forcing_ratio=1.0)
        alone = model(src[:4, :1], torch.tensor([4]), trg[:, :1], teacher_forcing_ratio=1.0)
    torch.testing.assert_close(batched[:, :1], alone, atol=1e-5, rtol=0)


@pytest.mark.parametrize("options", VARIANTS)
def test_whole_target_in_one_call_matches_one_step_at_a_time(options):
    model = attention_model(**options)
    src_lengths = [6, 4, 5]
    src, trg = padded_batch(src_lengths, SRC_VOCAB, 5), padded_batch([7, 3, 6], TRG_VOCAB, 6)
    with torch.no_grad():
        fast = model(src, torch.tensor(src_lengths), trg, teacher_forcing_ratio=1.0)
        slow, _ = teacher_forced_step_by_step(model, src, torch.tensor(src_lengths), trg)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=0)


def test_attention_changes_the_prediction():
    plain = build_model(ModelConfig(embedding_dim=16, hidden_dim=32), SRC_VOCAB, TRG_VOCAB)
    attending = attention_model(attention="general")
    assert count_parameters(attending) > count_parameters(plain)
    src, trg = padded_batch([6, 6], SRC_VOCAB, 7), padded_batch([5, 5], TRG_VOCAB, 8)
    other_src = padded_batch([6, 6], SRC_VOCAB, 9)
    with torch.no_grad():
        first = attending(src, torch.tensor([6, 6]), trg, teacher_forcing_ratio=1.0)
        second = attending(other_src, torch.tensor([6, 6]), trg, teacher_forcing_ratio=1.0)
    assert not torch.allclose(first, second, atol=1e-3)  # the source reaches the output


def test_bidirectional_encoder_bridges_to_the_decoders_size():
    model = attention_model(attention="general", bidirectional=True)
    src = padded_batch([6, 4, 5], SRC_VOCAB, 10)
    outputs, (hidden, cell) = model.encoder(src, torch.tensor([6, 4, 5]))
    assert outputs.shape == (6, 3, 32)  # both directions side by side, 16 each
    assert hidden.shape == cell.shape == (2, 3, 32)  # one state per decoder layer
    assert torch.all(outputs[4:, 1] == 0)  # nothing is read past the sentence's end


def test_bidirectional_encoder_needs_an_even_hidden_size():
    with pytest.raises(EncdecError, match="even hidden_dim"):
        build_model(ModelConfig(hidden_dim=33, bidirectional=True), SRC_VOCAB, TRG_VOCAB)


def test_tied_embeddings_share_one_weight_matrix():
    config = ModelConfig(embedding_dim=32, hidden_dim=32, tie_embeddings=True)
    model = build_model(config, SRC_VOCAB, TRG_VOCAB)
    assert model.decoder.fc_out.weight is model.decoder.embedding.weight
    untied = build_model(ModelConfig(embedding_dim=32, hidden_dim=32), SRC_VOCAB, TRG_VOCAB)
    assert count_parameters(untied) - count_parameters(model) == TRG_VOCAB * 32


def test_tying_different_sizes_is_a_clear_error():
    with pytest.raises(EncdecError, match="embedding_dim"):
        build_model(ModelConfig(embedding_dim=16, hidden_dim=32, tie_embeddings=True), 11, 13)


def test_unknown_words_are_replaced_by_the_most_attended_source_word():
    source = ["<sos>", "katze", "die", "<eos>"]
    attention = torch.tensor(
        [
            [0.1, 0.2, 0.6, 0.1],  # "the" looks at "die"
            [0.1, 0.7, 0.1, 0.1],  # <unk> looks at "katze"
            [0.1, 0.1, 0.1, 0.7],  # <unk> looks at <eos>: nothing to copy
        ]
    )
    replaced = _replace_unknowns(["the", "<unk>", "<unk>"], source, attention)
    assert replaced == ["the", "katze", "<unk>"]
