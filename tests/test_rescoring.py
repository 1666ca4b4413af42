"""Right-to-left models (data.reverse_trg) and rescoring n-best lists with a second model."""

import copy
import json

import pytest
import torch
from serving import attention_checkpoint

from encdec.checkpoint import load_checkpoint, save_checkpoint
from encdec.cli import DEMO_CONFIG, DEMO_SENTENCES, main
from encdec.config import from_dict
from encdec.data import toy_phrases
from encdec.errors import EncdecError
from encdec.evaluation import target_log_probs
from encdec.training import train
from encdec.translator import Translator

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SENTENCES = [*DEMO_SENTENCES, "see you later", "good luck!", "i am cold.", "we won."]


@pytest.fixture(scope="module")
def right_to_left_checkpoint(tmp_path_factory):
    """best.pt of the demo model trained to write its Spanish right to left."""
    config = {**DEMO_CONFIG, "data": {**DEMO_CONFIG["data"], "reverse_trg": True}}
    out_dir = tmp_path_factory.mktemp("right_to_left")
    train(from_dict(config), out_dir, quiet=True, device="cpu")
    return out_dir / "best.pt"


def changed_copy(checkpoint, path, change):
    state = copy.deepcopy(load_checkpoint(checkpoint))
    change(state)
    save_checkpoint(state, path)
    return path


def test_a_right_to_left_model_learns_the_target_backwards_and_writes_it_forwards(
    right_to_left_checkpoint, demo_checkpoint
):
    backwards = Translator.load(right_to_left_checkpoint, device="cpu")
    _, target = backwards.examples([["thank", "you"]], [["muchas", "gracias"]]).pair(0)
    vocab = backwards.trg_vocab
    assert target == [vocab.sos_idx, vocab.stoi["gracias"], vocab.stoi["muchas"], vocab.eos_idx]
    forwards = Translator.load(demo_checkpoint, device="cpu").translate(DEMO_SENTENCES)
    written = backwards.translate(DEMO_SENTENCES)
    # every line is a Spanish phrase of the training data, reading forwards (not "días buenos")
    assert set(written) <= {target for _, target in toy_phrases()["train"]}
    assert sum(a == b for a, b in zip(written, forwards)) >= len(DEMO_SENTENCES) - 1


def test_a_right_to_left_translation_turns_tokens_and_attention_rows_around(
    tmp_path_factory, tmp_path
):
    checkpoint = attention_checkpoint(tmp_path_factory)
    flagged = changed_copy(
        checkpoint, tmp_path / "flagged.pt", lambda s: s["config"]["data"].update(reverse_trg=True)
    )
    sentences = ["thank you very much", "see you tomorrow"]
    written = Translator.load(checkpoint, device="cpu").translations(sentences)
    turned = Translator.load(flagged, device="cpu").translations(sentences)
    for (as_written, *_), (as_turned, *_) in zip(written, turned):
        assert len(as_written.tokens) > 1
        assert as_turned.tokens == as_written.tokens[::-1]
        assert torch.equal(as_turned.attention, as_written.attention.flip(0))


def test_target_log_probs_are_the_scores_beam_search_found(demo_checkpoint):
    translator = Translator.load(demo_checkpoint, device="cpu")
    translations = translator.translations(SENTENCES, n_best=3, beam=3)
    candidates = [(sentence, t) for sentence, ts in zip(SENTENCES, translations) for t in ts]
    examples = translator.examples(
        translator.src_tokenizer.tokenize_many([sentence for sentence, _ in candidates]),
        [translation.tokens for _, translation in candidates],
    )
    scores = target_log_probs(translator.model, examples, translator.trg_vocab.pad_idx, 4)
    assert scores == pytest.approx([t.score for _, t in candidates], abs=1e-4)


@pytest.mark.parametrize("direction", ["left_to_right", "right_to_left"])
def test_a_model_rescoring_itself_changes_nothing(
    direction, demo_checkpoint, right_to_left_checkpoint
):
    checkpoint = {"left_to_right": demo_checkpoint, "right_to_left": right_to_left_checkpoint}
    alone = Translator.load(checkpoint[direction], device="cpu")
    rescored = Translator.load(
        checkpoint[direction], device="cpu", rescore_with=checkpoint[direction]
    )
    for plain, again in zip(
        alone.translations(SENTENCES, n_best=3, beam=3),
        rescored.translations(SENTENCES, n_best=3, beam=3),
    ):
        assert [t.tokens for t in again] == [t.tokens for t in plain]
        assert [t.score for t in again] == pytest.approx([t.score for t in plain], abs=1e-4)


def test_rescoring_mixes_both_models_scores_and_ranks_by_the_mix(
    demo_checkpoint, right_to_left_checkpoint
):
    weight, beam = 0.3, 4
    forwards = Translator.load(demo_checkpoint, device="cpu")
    backwards = Translator.load(right_to_left_checkpoint, device="cpu")
    rescored = forwards.rescore_with(backwards, weight)
    plain = Translator.load(demo_checkpoint, device="cpu").translations(
        SENTENCES, n_best=beam, beam=beam
    )
    reranked = rescored.translations(SENTENCES, n_best=beam, beam=beam)
    source_tokens = forwards.src_tokenizer.tokenize_many(SENTENCES)
    for sentence_tokens, candidates, got in zip(source_tokens, plain, reranked):
        examples = backwards.examples([sentence_tokens] * beam, [t.tokens for t in candidates])
        second = target_log_probs(backwards.model, examples, backwards.trg_vocab.pad_idx, beam)
        mixed = [(1 - weight) * t.score + weight * s for t, s in zip(candidates, second)]
        assert sorted(t.score for t in got) == pytest.approx(sorted(mixed), abs=1e-4)
        penalty = forwards.config.decoding.length_penalty
        ranks = [t.score / (len(t.tokens) + 1) ** penalty for t in got]  # as beam search ranks
        assert ranks == sorted(ranks, reverse=True)
    orders = [[t.text for t in ts] for ts in plain], [[t.text for t in ts] for ts in reranked]
    assert orders[0] != orders[1]  # the second opinion moved some candidates


def toy_files(folder):
    """30 toy pairs, and their sources and references written one a line in `folder`."""
    pairs = toy_phrases()["train"][:30]
    source, reference = folder / "source.txt", folder / "reference.txt"
    source.write_text("".join(english + "\n" for english, _ in pairs))
    reference.write_text("".join(spanish + "\n" for _, spanish in pairs))
    return pairs, source, reference


def test_the_command_line_rescores_like_the_api(
    demo_checkpoint, right_to_left_checkpoint, tmp_path, capsys
):
    pairs, source, reference = toy_files(tmp_path)
    rescore = ["--rescore", str(right_to_left_checkpoint), "--rescore-weight", "0.7"]
    common = ["--device", "cpu", "--quiet", "--beam", "3", *rescore]
    output = tmp_path / "output.txt"
    translate = ["translate", str(demo_checkpoint), "--input", str(source), "--output", str(output)]
    assert main([*translate, *common]) == 0
    api = Translator.load(
        demo_checkpoint, device="cpu", rescore_with=right_to_left_checkpoint, rescore_weight=0.7
    )
    sentences = [english for english, _ in pairs]
    assert output.read_text().splitlines() == api.translate(sentences, beam=3)
    evaluate = ["evaluate", str(demo_checkpoint), "--src", str(source), "--ref", str(reference)]
    assert main([*evaluate, "--json", *common]) == 0
    assert json.loads(capsys.readouterr().out) == pytest.approx(api.evaluate(pairs, beam=3))


def test_a_rescorer_must_share_the_vocabularies(demo_checkpoint, tmp_path):
    other = changed_copy(demo_checkpoint, tmp_path / "other.pt", lambda s: s["trg_vocab"].reverse())
    with pytest.raises(EncdecError, match=f"{other}.*trg vocab.*rescorer"):
        Translator.load(demo_checkpoint, device="cpu", rescore_with=other)


@pytest.mark.parametrize("weight", [-0.1, 1.5])
def test_a_rescore_weight_outside_0_to_1_is_refused(demo_checkpoint, weight):
    with pytest.raises(EncdecError, match=f"rescore_weight must be from 0 to 1, not {weight}"):
        Translator.load(
            demo_checkpoint, device="cpu", rescore_with=demo_checkpoint, rescore_weight=weight
        )


def channel_log_probs(channel, source_words, candidates):
    """The channel model's log-probability of the source, reading each candidate, both split
    into the channel's subwords."""
    examples = channel.examples(
        channel.src_tokenizer.pieces_many([t.tokens for t in candidates]),
        channel.trg_tokenizer.pieces_many([source_words] * len(candidates)),
    )
    return target_log_probs(channel.model, examples, channel.trg_vocab.pad_idx, len(candidates))


@pytest.mark.parametrize("with_rescorer", [False, True])
def test_a_channel_model_adds_its_log_probability_of_the_source_to_the_ranking(
    with_rescorer, demo_checkpoint, right_to_left_checkpoint, channel_checkpoint
):
    beam, channel_weight, rescore_weight = 4, 0.3, 0.2 if with_rescorer else 0.0
    forwards = Translator.load(demo_checkpoint, device="cpu")
    plain = forwards.translations(SENTENCES, n_best=beam, beam=beam)
    channel = Translator.load(channel_checkpoint, device="cpu")
    backwards = Translator.load(right_to_left_checkpoint, device="cpu")
    if with_rescorer:
        forwards.rescore_with(backwards, rescore_weight)
    reranked = forwards.channel_with(channel, channel_weight).translations(
        SENTENCES, n_best=beam, beam=beam
    )
    source_tokens = forwards.src_tokenizer.tokenize_many(SENTENCES)
    for sentence_tokens, candidates, got in zip(source_tokens, plain, reranked):
        explains = channel_log_probs(channel, sentence_tokens, candidates)
        examples = backwards.examples([sentence_tokens] * beam, [t.tokens for t in candidates])
        second = target_log_probs(backwards.model, examples, backwards.trg_vocab.pad_idx, beam)
        own_weight = 1 - channel_weight - rescore_weight
        mixed = [
            own_weight * t.score + channel_weight * c + rescore_weight * r
            for t, c, r in zip(candidates, explains, second)
        ]
        assert sorted(t.score for t in got) == pytest.approx(sorted(mixed), abs=1e-4)
        penalty = forwards.config.decoding.length_penalty
        ranks = [t.score / (len(t.tokens) + 1) ** penalty for t in got]
        assert ranks == sorted(ranks, reverse=True)
    orders = [[t.text for t in ts] for ts in plain], [[t.text for t in ts] for ts in reranked]
    assert orders[0] != orders[1]


def test_the_command_line_scores_with_a_channel_model_like_the_api(
    demo_checkpoint, channel_checkpoint, tmp_path, capsys
):
    pairs, source, reference = toy_files(tmp_path)
    channel = ["--channel", str(channel_checkpoint), "--channel-weight", "0.4"]
    evaluate = ["evaluate", str(demo_checkpoint), "--src", str(source), "--ref", str(reference)]
    assert main([*evaluate, "--json", "--device", "cpu", "--quiet", "--beam", "3", *channel]) == 0
    api = Translator.load(
        demo_checkpoint, device="cpu", channel=channel_checkpoint, channel_weight=0.4
    )
    assert json.loads(capsys.readouterr().out) == pytest.approx(api.evaluate(pairs, beam=3))


def test_a_channel_model_must_translate_the_other_way(demo_checkpoint):
    needs = r"data.src_lang = 'en'; a channel model for .* needs 'es': .* from es to en"
    with pytest.raises(EncdecError, match=needs):
        Translator.load(demo_checkpoint, device="cpu", channel=demo_checkpoint)


@pytest.mark.parametrize("opinion", ["rescore_with", "channel"])
def test_a_second_opinion_without_a_beam_to_rerank_is_refused(
    opinion, demo_checkpoint, channel_checkpoint
):
    second = {"rescore_with": demo_checkpoint, "channel": channel_checkpoint}[opinion]
    translator = Translator.load(demo_checkpoint, device="cpu", **{opinion: second})
    assert translator.config.decoding.beam_size == 1  # the demo decodes greedily
    for greedy_or_sampling in ({}, {"temperature": 0.8, "seed": 1}):
        with pytest.raises(EncdecError, match="reranks the translations of a beam"):
            translator.translate(SENTENCES, **greedy_or_sampling)
    assert len(translator.translate(SENTENCES, beam=2)) == len(SENTENCES)


def test_second_opinions_weighing_more_than_the_model_are_refused(
    demo_checkpoint, channel_checkpoint
):
    with pytest.raises(EncdecError, match=r"rescore_weight \+ channel_weight must be at most 1"):
        Translator.load(
            demo_checkpoint,
            device="cpu",
            rescore_with=demo_checkpoint,
            rescore_weight=0.6,
            channel=channel_checkpoint,
            channel_weight=0.5,
        )


def test_the_command_lines_weights_default_to_the_apis():
    from encdec.cli import build_parser
    from encdec.rescoring import CHANNEL_WEIGHT, RESCORE_WEIGHT

    for verb in ("translate", "evaluate", "serve"):
        args = build_parser().parse_args([verb, "model.pt"])
        assert (args.rescore_weight, args.channel_weight) == (RESCORE_WEIGHT, CHANNEL_WEIGHT)
