"""Tests for encdec.search: greedy decoding, its stopping rules, batching, and sampling."""

import pytest
import torch

from encdec.batching import collate
from encdec.config import ModelConfig
from encdec.model import Seq2Seq, build_model
from encdec.search import decode, decode_examples

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PAD, SOS, EOS = 1, 2, 3
SRC_VOCAB, TRG_VOCAB = 12, 15
SOURCES = [
    [SOS, 4, 5, 6, EOS],
    [SOS, 7, EOS],
    [SOS, 8, 9, 10, 11, 4, 5, EOS],
    [SOS, 6, 6, 9, EOS],
    [SOS, 11, 10, 9, 8, 7, 6, 5, 4, EOS],
]


@pytest.fixture
def model() -> Seq2Seq:
    """An untrained model, its weights scaled up so the argmax changes from step to step."""
    torch.manual_seed(0)
    config = ModelConfig(embedding_dim=16, hidden_dim=32, num_layers=2, dropout=0.0)
    model = build_model(config, SRC_VOCAB, TRG_VOCAB).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(20)
        model.decoder.fc_out.bias[EOS] += 2.0  # so some sentences end before max_len
    return model


def greedy_by_hand(model: Seq2Seq, source: list[int], max_len: int) -> list[int]:
    """The textbook's one-sentence greedy loop."""
    state = model.encoder(torch.tensor(source).unsqueeze(1), torch.tensor([len(source)]))
    token, output = torch.tensor([[SOS]]), []
    with torch.no_grad():
        for _ in range(max_len):
            logits, state = model.decoder(token, state)  # (1, 1, V)
            token = logits.argmax(-1)  # (1, 1)
            if token.item() == EOS:
                break
            output.append(token.item())
    return output


def decode_batch(model: Seq2Seq, sources: list[list[int]], max_len: int, **options):
    batch = collate([(source, [SOS, EOS]) for source in sources], list(range(len(sources))), PAD)
    return decode(model, batch.src, batch.src_lengths, SOS, EOS, max_len, **options)


def test_greedy_decode_equals_one_sentence_greedy_loop(model):
    expected = [greedy_by_hand(model, source, max_len=12) for source in SOURCES]
    lengths = {len(ids) for ids in expected}
    assert min(lengths) < 12 and max(lengths) == 12  # some stop at <eos>, some at max_len
    for source, ids in zip(SOURCES, expected):
        assert decode_batch(model, [source], max_len=12) == [ids]


def test_batch_decodes_like_each_sentence_alone(model):
    alone = [decode_batch(model, [source], max_len=12)[0] for source in SOURCES]
    assert decode_batch(model, SOURCES, max_len=12) == alone
    assert len({len(ids) for ids in alone}) > 1  # sentences leave the batch at different steps
    examples = [(source, [SOS, EOS]) for source in SOURCES]
    assert decode_examples(model, examples, PAD, SOS, EOS, 12, batch_size=2) == alone


def test_decoding_stops_at_eos_and_leaves_it_out(model):
    with torch.no_grad():
        model.decoder.fc_out.bias[EOS] = 1e4  # <eos> is by far the likeliest token every step
    assert decode_batch(model, SOURCES, max_len=12) == [[] for _ in SOURCES]
    generator = torch.Generator().manual_seed(0)
    sampled = decode_batch(model, SOURCES, max_len=12, temperature=1.0, generator=generator)
    assert sampled == [[] for _ in SOURCES]


def test_decoding_stops_at_max_len(model):
    with torch.no_grad():
        model.decoder.fc_out.bias[7] = 1e4  # never <eos>: always token 7
    assert decode_batch(model, SOURCES, max_len=9) == [[7] * 9 for _ in SOURCES]


def sample(model: Seq2Seq, temperature: float, seed: int) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return decode_batch(model, SOURCES, 12, temperature=temperature, generator=generator)


def test_sampling_with_a_seeded_generator_is_reproducible(model):
    assert sample(model, 1.5, seed=3) == sample(model, 1.5, seed=3)
    assert sample(model, 1.5, seed=3) != sample(model, 1.5, seed=4)


def test_high_temperature_sampling_differs_from_greedy(model):
    greedy = decode_batch(model, SOURCES, max_len=12)
    assert sample(model, 5.0, seed=0) != greedy


def test_very_low_temperature_equals_greedy(model):
    greedy = decode_batch(model, SOURCES, max_len=12)
    for seed in range(3):
        assert sample(model, 1e-4, seed) == greedy
