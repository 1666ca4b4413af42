"""Tests for encdec.search: greedy decoding, its stopping rules, batching, sampling, beams."""

import math
import warnings
from functools import partial

import pytest
import torch
from pairs import pairs_of_examples
from torch import nn

from encdec.batching import collate
from encdec.config import DecodingConfig, ModelConfig
from encdec.model import Seq2Seq, build_model
from encdec.search import (
    Hypothesis,
    beam_search,
    choose_next,
    coverage,
    decode,
    decode_examples,
    gumbel_noise,
    length_limits,
    normalised_score,
    sampling_keys,
)
from encdec.translator import hypotheses_of
from encdec.vocab import SPECIALS, Vocab

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PAD, SOS, EOS = 1, 2, 3
SRC_VOCAB, TRG_VOCAB = 12, 15
TRG_VOCAB_TOKENS = Vocab([*SPECIALS, *(f"w{i}" for i in range(TRG_VOCAB - len(SPECIALS)))])
SOURCES = [
    [SOS, 4, 5, 6, EOS],
    [SOS, 7, EOS],
    [SOS, 8, 9, 10, 11, 4, 5, EOS],
    [SOS, 6, 6, 9, EOS],
    [SOS, 11, 10, 9, 8, 7, 6, 5, 4, EOS],
]


@pytest.fixture(
    params=[{}, {"context_every_step": True, "bidirectional": True}],
    ids=["textbook", "context_every_step"],
)
def model(request) -> Seq2Seq:
    """An untrained model, its weights scaled up so the argmax changes from step to step."""
    torch.manual_seed(0)
    config = ModelConfig(
        embedding_dim=16, hidden_dim=32, num_layers=2, dropout=0.0, **request.param
    )
    model = build_model(config, SRC_VOCAB, TRG_VOCAB).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(20)
        model.decoder.fc_out.bias[EOS] += 2.0  # so some sentences end before max_len
    return model


def greedy_by_hand(model: Seq2Seq, source: list[int], max_len: int) -> list[int]:
    """The textbook's one-sentence greedy loop."""
    state = model.encode(torch.tensor(source).unsqueeze(1), torch.tensor([len(source)]))
    token, output = torch.tensor([[SOS]]), []
    with torch.no_grad():
        for _ in range(max_len):
            logits, state = model.decoder(token, state)  # (1, 1, V)
            logits[..., [PAD, SOS]] = float("-inf")  # never chosen
            token = logits.argmax(-1)  # (1, 1)
            if token.item() == EOS:
                break
            output.append(token.item())
    return output


def padded(sources: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Sources (each <sos> ... <eos>) as a padded (S, B) batch and their (B,) lengths."""
    batch = collate(pairs_of_examples([(s, [SOS, EOS]) for s in sources]), range(len(sources)), PAD)
    return batch.src, batch.src_lengths


def greedy(model: Seq2Seq, sources: list[list[int]], max_len: int = 12, seed=None, **options):
    """One hypothesis per source, each limited to `max_len` tokens; `seed` keys sampling."""
    src, lengths = padded(sources)
    keys = sampling_keys(src, lengths, seed) if options.get("temperature") else None
    limits = torch.full((len(sources),), max_len)
    return [
        best for (best,) in hypotheses_of(decode(model, src, lengths, limits, keys=keys, **options))
    ]


def decode_batch(model: Seq2Seq, sources: list[list[int]], max_len: int, **options):
    return [hypothesis.ids for hypothesis in greedy(model, sources, max_len, **options)]


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
    examples = pairs_of_examples([(source, [SOS, EOS]) for source in SOURCES])
    decoding = DecodingConfig(max_len_a=0.0, max_len_b=12, batch_size=2)
    assert in_input_order(decode_examples(model, examples, decoding, src_pad_idx=PAD)) == alone


def in_input_order(batches) -> list[list[int]]:
    """The best ids per example from decode_examples' batches, in the examples' order."""
    best = {}
    for indices, found in batches:
        for index, (first, *_) in zip(indices.tolist(), hypotheses_of(found)):
            best[index] = first.ids
    return [best[index] for index in sorted(best)]


def test_decoding_stops_at_eos_and_leaves_it_out(model):
    with torch.no_grad():
        model.decoder.fc_out.bias[EOS] = 1e4  # <eos> is by far the likeliest token every step
    assert decode_batch(model, SOURCES, max_len=12) == [[] for _ in SOURCES]
    sampled = decode_batch(model, SOURCES, max_len=12, temperature=1.0, seed=0)
    assert sampled == [[] for _ in SOURCES]


def test_pad_and_sos_are_never_chosen_by_any_search(model):
    with torch.no_grad():
        model.decoder.fc_out.bias[[PAD, SOS]] = 1e4  # by far the likeliest tokens every step
    found = [
        *decode_batch(model, SOURCES, max_len=12),
        *decode_batch(model, SOURCES, max_len=12, temperature=5.0, seed=0),
        *(h.ids for n_best in beam_batch(model, SOURCES, beam_size=3, n_best=3) for h in n_best),
    ]
    assert not any({PAD, SOS} & set(ids) for ids in found) and any(found)


def test_decoding_stops_at_the_limit_paying_for_eos_and_says_it_was_cut(model):
    ending = [h for h in greedy(model, SOURCES, max_len=12) if len(h.ids) < 12]
    assert ending and not any(h.truncated for h in ending)  # those that chose <eos>
    with torch.no_grad():
        model.decoder.fc_out.bias[7] = 20.0  # never <eos> by choice: always token 7
    for hypothesis, source in zip(greedy(model, SOURCES, max_len=9), SOURCES):
        assert hypothesis.ids == [7] * 9 and hypothesis.truncated
        # ranked honestly: the score holds what ending there costs, as a finished one's does
        assert hypothesis.score == pytest.approx(log_probability(model, source, [7] * 9), abs=1e-3)


def test_each_sentence_has_its_own_limit(model):
    with torch.no_grad():
        model.decoder.fc_out.bias[7] = 1e4
    src, lengths = padded(SOURCES)
    limits = torch.tensor([3, 1, 7, 2, 5])
    found = decode(model, src, lengths, limits)
    assert found.lengths[:, 0].tolist() == limits.tolist()
    beams = beam_search(model, src, lengths, limits, beam_size=2)
    assert beams.lengths[:, 0].tolist() == limits.tolist() and beams.truncated.all()


def test_length_limits_follow_the_source_and_an_absolute_cap():
    src_lengths = torch.tensor([2, 3, 12, 42])  # <sos> and <eos> counted
    assert length_limits(src_lengths, DecodingConfig()).tolist() == [10, 11, 25, 70]
    capped = DecodingConfig(max_len_a=1.0, max_len_b=0, max_len=20)
    assert length_limits(src_lengths, capped).tolist() == [1, 1, 10, 20]


def sample(model: Seq2Seq, temperature: float, seed: int) -> list[list[int]]:
    return decode_batch(model, SOURCES, 12, temperature=temperature, seed=seed)


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


def log_probability(model: Seq2Seq, source: list[int], ids: list[int]) -> float:
    """The model's log-probability of `ids` then <eos>, scored with teacher forcing."""
    src = torch.tensor(source).unsqueeze(1)
    trg = torch.tensor([SOS, *ids, EOS]).unsqueeze(1)
    with torch.no_grad():
        logits = model(src, torch.tensor([len(source)]), trg, teacher_forcing_ratio=1.0)
    log_probs = torch.log_softmax(logits[:, 0], dim=-1)  # (T-1, V)
    return log_probs.gather(1, trg[1:]).sum().item()


def beam_batch(model: Seq2Seq, sources: list[list[int]], beam_size: int, **options):
    src, lengths = padded(sources)
    limits = torch.full((len(sources),), 12)
    return hypotheses_of(beam_search(model, src, lengths, limits, beam_size=beam_size, **options))


def test_beam_of_one_ranking_by_log_probability_equals_greedy(model):
    greedy = decode_hypotheses(model, SOURCES)
    beams = beam_batch(model, SOURCES, beam_size=1, length_penalty=0.0)
    assert [best.ids for (best,) in beams] == [hypothesis.ids for hypothesis in greedy]
    for (best,), hypothesis in zip(beams, greedy):
        assert best.score == pytest.approx(hypothesis.score, abs=1e-4)


def test_beam_of_one_with_a_length_penalty_keeps_greedy_or_finds_a_better_normalised_one(model):
    # the one live beam goes on past greedy's <eos> while a longer translation could still win
    greedy = decode_hypotheses(model, SOURCES)
    beams = beam_batch(model, SOURCES, beam_size=1, length_penalty=1.0)
    better = 0
    for (best,), hypothesis in zip(beams, greedy):
        assert normalised_score(best, 1.0) >= normalised_score(hypothesis, 1.0) - 1e-5
        better += normalised_score(best, 1.0) > normalised_score(hypothesis, 1.0) + 1e-3
    assert better > 0


def test_hypothesis_score_is_the_models_log_probability(model):
    for (best,), source in zip(beam_batch(model, SOURCES, beam_size=4), SOURCES):
        if len(best.ids) <= 12:  # <eos> counts, chosen or at the limit
            assert best.score == pytest.approx(log_probability(model, source, best.ids), abs=1e-3)


def test_beam_score_is_at_least_the_greedy_score(model):
    greedy = [hypothesis.score for hypothesis in decode_hypotheses(model, SOURCES)]
    beams = beam_batch(model, SOURCES, beam_size=5, length_penalty=0.0)
    assert all(best.score >= score - 1e-4 for (best,), score in zip(beams, greedy))
    assert any(best.score > score + 1e-3 for (best,), score in zip(beams, greedy))


def decode_hypotheses(model: Seq2Seq, sources: list[list[int]]):
    return greedy(model, sources, with_attention=True)


def test_beam_search_of_a_batch_equals_each_sentence_alone(model):
    batched = beam_batch(model, SOURCES, beam_size=3, n_best=3)
    alone = [beam_batch(model, [source], beam_size=3, n_best=3)[0] for source in SOURCES]
    for together, single in zip(batched, alone):
        assert [h.ids for h in together] == [h.ids for h in single]
        assert [h.score for h in together] == pytest.approx([h.score for h in single], abs=1e-4)


def test_n_best_are_distinct_and_ranked_by_normalised_score(model):
    for hypotheses in beam_batch(model, SOURCES, beam_size=4, n_best=4, length_penalty=1.0):
        assert len(hypotheses) == 4
        assert len({tuple(h.ids) for h in hypotheses}) == 4
        normalised = [h.score / (len(h.ids) + 1) for h in hypotheses]
        assert normalised == sorted(normalised, reverse=True)


def test_top_k_sampling_only_picks_among_the_k_likeliest():
    log_probs = torch.tensor([[0.0, 5.0, 4.0, 1.0, 3.0]]).log_softmax(-1).repeat(200, 1)
    noise = gumbel_noise(torch.arange(200), step=0, vocab_size=5)  # 200 sentences' own noise
    picked = choose_next(log_probs, temperature=10.0, top_k=2, noise=noise)
    assert set(picked.tolist()) == {1, 2}


def test_gumbel_noise_samples_the_softmax():
    log_probs = torch.tensor([0.5, 0.3, 0.15, 0.05]).log().expand(20000, 4)
    noise = gumbel_noise(torch.arange(20000), step=3, vocab_size=4)
    counts = torch.bincount(choose_next(log_probs, 1.0, noise=noise), minlength=4)
    assert (counts / 20000).tolist() == pytest.approx([0.5, 0.3, 0.15, 0.05], abs=0.015)


A, B = 4, 5  # two words of a six-token vocabulary: <unk> <pad> <sos> <eos> A B


class PrefixState:
    """A scripted decoder's state: each row's tokens so far, <sos> first."""

    attention = None

    def __init__(self, prefixes: torch.Tensor):
        self.prefixes = prefixes  # (steps, rows)

    def select(self, index: torch.Tensor) -> "PrefixState":
        return PrefixState(self.prefixes[:, index])


class ScriptedDecoder(nn.Module):
    """Next-token probabilities looked up by the prefix; the rest of the mass is shared evenly."""

    attention = None

    def __init__(self, script: dict[tuple[int, ...], dict[int, float]], unscripted: dict):
        super().__init__()
        self.script, self.unscripted, self.calls = script, unscripted, 0

    def forward(self, tokens: torch.Tensor, state: PrefixState) -> tuple[torch.Tensor, PrefixState]:
        self.calls += 1
        prefixes = torch.cat([state.prefixes, tokens])  # (steps + 1, rows)
        rows = [self.probabilities(tuple(column[1:])) for column in prefixes.T.tolist()]
        return torch.stack(rows).log().unsqueeze(0), PrefixState(prefixes)  # (1, rows, V)

    def probabilities(self, prefix: tuple[int, ...]) -> torch.Tensor:
        chosen = self.script.get(prefix, self.unscripted)
        rest = (1 - sum(chosen.values())) / (6 - len(chosen))
        return torch.tensor([chosen.get(token, rest) for token in range(6)], dtype=torch.float64)


class ScriptedModel(nn.Module):
    def __init__(self, script: dict, unscripted: dict | None = None):
        super().__init__()
        self.decoder = ScriptedDecoder(script, unscripted or {EOS: 0.9})

    def encode(self, src: torch.Tensor, src_lengths: torch.Tensor) -> PrefixState:
        return PrefixState(torch.zeros(0, src.shape[1], dtype=torch.long))


# Short translations end likelier, but A A A ends likeliest per token: with a length penalty of
# 1 it must win. A search that kept finished beams in the beam would drop A A at step 2, when
# "" and "A" (both ended) outscore it on raw log-probability.
LONGER_WINS = {
    (): {EOS: 0.40, A: 0.35, B: 0.24},
    (A,): {EOS: 0.55, A: 0.44},
    (A, A): {A: 0.99},
    (A, A, A): {EOS: 0.99},
}


def scripted_search(model: ScriptedModel, max_len: int, **options) -> list[Hypothesis]:
    src, limits = torch.full((3, 1), 4), torch.tensor([max_len])
    return hypotheses_of(beam_search(model, src, torch.tensor([3]), limits, **options))[0]


def test_a_longer_translation_wins_under_a_length_penalty():
    model = ScriptedModel(LONGER_WINS)
    (best,) = scripted_search(model, max_len=10, beam_size=2, length_penalty=1.0)
    assert best.ids == [A, A, A]
    assert best.score == pytest.approx(math.log(0.35 * 0.44 * 0.99 * 0.99))
    assert model.decoder.calls < 10  # stopped once no live beam could beat it


def test_without_a_length_penalty_the_likeliest_short_translation_wins():
    (best, second) = scripted_search(
        ScriptedModel(LONGER_WINS), max_len=10, beam_size=2, length_penalty=0.0, n_best=2
    )
    assert (best.ids, second.ids) == ([], [B])
    assert best.score == pytest.approx(math.log(0.40))


def test_search_stops_when_no_live_beam_can_beat_the_finished_ones():
    model = ScriptedModel({(): {EOS: 0.9}})
    (best,) = scripted_search(model, max_len=10, beam_size=3, length_penalty=1.0)
    assert best.ids == [] and model.decoder.calls == 1


def test_live_beams_end_at_the_limit_paying_for_eos():
    model = ScriptedModel({}, unscripted={A: 0.9, EOS: 0.01})
    hypotheses = scripted_search(model, max_len=4, beam_size=2, length_penalty=1.0, n_best=2)
    assert hypotheses[0].ids == [A] * 4 and hypotheses[0].truncated
    assert hypotheses[0].score == pytest.approx(4 * math.log(0.9) + math.log(0.01))
    assert len(hypotheses[1].ids) == 4 and model.decoder.calls == 5  # the 5th only ends them


def test_coverage_sums_the_log_of_the_attention_each_source_word_received_up_to_one():
    # three steps over <sos>, two words and <eos>, padded to six positions
    attention = torch.tensor(
        [
            [0.1, 0.6, 0.1, 0.2, 0.0, 0.0],
            [0.0, 0.7, 0.2, 0.1, 0.0, 0.0],
            [0.0, 0.1, 0.3, 0.6, 0.0, 0.0],
        ]
    )
    # the first word received 1.4, which counts as 1; the second 0.6; the rest are left out
    four = torch.tensor(4)
    assert coverage(attention.sum(0), four).item() == pytest.approx(math.log(0.6))
    both_covered = attention[:, [0, 1, 1, 3, 4, 5]].sum(0)
    assert coverage(both_covered, four).item() == 0.0


@pytest.fixture
def attending_model() -> Seq2Seq:
    """An untrained model with attention, its weights scaled up like `model`'s."""
    torch.manual_seed(0)
    config = ModelConfig(
        embedding_dim=16, hidden_dim=32, num_layers=2, dropout=0.0, attention="general"
    )
    model = build_model(config, SRC_VOCAB, TRG_VOCAB).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(20)
        model.decoder.fc_out.bias[EOS] += 2.0
    return model


def test_every_hypothesis_knows_its_coverage_of_its_own_source(attending_model):
    greedy = decode_hypotheses(attending_model, SOURCES)
    beams = beam_batch(attending_model, SOURCES, beam_size=3, n_best=3, with_attention=True)
    coverages = []
    for source, hypothesis, n_best in zip(SOURCES, greedy, beams):
        for one in [hypothesis, *n_best]:
            assert one.attention.shape == (len(one.ids), max(map(len, SOURCES)))
            received, length = one.attention.sum(0), torch.tensor(len(source))
            assert one.coverage == pytest.approx(coverage(received, length).item(), abs=1e-5)
            coverages.append(one.coverage)
    assert max(coverages) <= 0 and min(coverages) < -1  # an untrained model overlooks words


def test_a_coverage_penalty_ranks_by_coverage_too(attending_model):
    beta = 1e6  # so large that coverage decides, and the normalised score only breaks ties
    plain = beam_batch(attending_model, SOURCES, beam_size=4, n_best=4, length_penalty=1.0)
    covering = beam_batch(
        attending_model, SOURCES, beam_size=4, n_best=4, length_penalty=1.0, coverage_penalty=beta
    )
    for hypotheses in covering:
        ranks = [normalised_score(h, 1.0, beta) for h in hypotheses]
        assert ranks == sorted(ranks, reverse=True)
    # the search stops no earlier than without the penalty, so it finds every translation the
    # plain search found; the best it keeps covers the source at least as fully
    for (best_plain, *_), (best_covering, *_) in zip(plain, covering):
        assert best_covering.coverage >= best_plain.coverage - 1e-4
    assert any(
        best_covering.coverage > best_plain.coverage + 1e-2
        for (best_plain, *_), (best_covering, *_) in zip(plain, covering)
    )


HOST_READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__", "__index__")


# the encoder's lengths (pack_padded_sequence wants them on the host) and the longest limit
ONCE_A_BATCH = 3


def host_reads(monkeypatch) -> list[str]:
    """The names of the tensor-to-host calls made while the test runs, in order."""
    reads = []
    for name in HOST_READS:
        original = getattr(torch.Tensor, name)

        def counted(tensor, *args, _name=name, _original=original, **kwargs):
            reads.append(_name)
            return _original(tensor, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return reads


def counting_decoder_calls(model: Seq2Seq, monkeypatch) -> list[int]:
    calls = []
    step = model.decoder.forward
    monkeypatch.setattr(model.decoder, "forward", lambda *a: calls.append(1) or step(*a))
    return calls


@pytest.mark.parametrize("options", [{}, {"temperature": 2.0}, {"with_attention": True}])
def test_greedy_reads_the_device_at_most_once_every_eight_steps(
    attending_model, monkeypatch, options
):
    with torch.no_grad():
        attending_model.decoder.fc_out.bias[EOS] -= 10.0  # sentences end at different steps
    src, lengths = padded(SOURCES)
    keys = sampling_keys(src, lengths, 0) if options.get("temperature") else None
    calls = counting_decoder_calls(attending_model, monkeypatch)
    reads = host_reads(monkeypatch)
    found = decode(
        attending_model, src, lengths, torch.tensor([40, 3, 30, 17, 40]), **options, keys=keys
    )
    monkeypatch.undo()
    assert len(calls) > 16 and found.lengths.max() > 16
    assert len(reads) <= ONCE_A_BATCH + len(calls) / 8, reads


def test_beam_search_reads_the_device_at_most_once_a_step(attending_model, monkeypatch):
    src, lengths = padded(SOURCES)
    calls = counting_decoder_calls(attending_model, monkeypatch)
    reads = host_reads(monkeypatch)
    found = beam_search(
        attending_model, src, lengths, torch.full((5,), 30), 4, n_best=2, with_attention=True
    )
    monkeypatch.undo()
    assert len(calls) > 8 and found.lengths.max() > 8
    assert len(reads) <= ONCE_A_BATCH + len(calls), reads


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_cuda_searches_synchronise_no_more_than_they_read(attending_model, monkeypatch):
    model = attending_model.cuda()
    with torch.no_grad():
        model.decoder.fc_out.bias[EOS] -= 10.0
    src, lengths = padded(SOURCES)
    src, limits = src.cuda(), torch.tensor([40, 3, 30, 17, 40])
    calls = counting_decoder_calls(model, monkeypatch)
    for search, per_step in ((decode, 1 / 8), (partial(beam_search, beam_size=4), 1)):
        calls.clear()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                search(model, src, lengths, limits, with_attention=True)
            finally:
                torch.cuda.set_sync_debug_mode(0)
        synchronising = [w for w in caught if "synchroniz" in str(w.message)]
        assert len(calls) > 16
        assert len(synchronising) <= ONCE_A_BATCH + per_step * len(calls), synchronising
