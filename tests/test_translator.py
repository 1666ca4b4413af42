"""Tests for encdec.translator on the demo's toy English->Spanish model (trained once)."""

import copy
import json
import math
import shutil
import subprocess
import sys

import pytest
import torch

from encdec.checkpoint import load_checkpoint, save_checkpoint
from encdec.cli import DEMO_CONFIG, main
from encdec.config import from_dict
from encdec.corpus import build_corpus
from encdec.data import toy_phrases
from encdec.errors import EncdecError
from encdec.metrics import bleu
from encdec.model import build_model
from encdec.training import evaluate_split, train
from encdec.translator import Translator, answer_of
from encdec.vocab import EOS, PAD, SOS, SPECIALS, UNK, Vocab

pytestmark = pytest.mark.usefixtures("one_torch_thread")

UNSEEN = ["the purple elephant sings", "zebra", "go go go go go go go go go go go go"]


@pytest.fixture(scope="module")
def translator(demo_checkpoint) -> Translator:
    return Translator.load(demo_checkpoint)


@pytest.fixture(scope="module")
def beam_checkpoint(demo_checkpoint, tmp_path_factory):
    """The demo model, saved as if its config decoded with a beam of 4."""
    state = load_checkpoint(demo_checkpoint)
    state["config"]["decoding"]["beam_size"] = 4
    path = tmp_path_factory.mktemp("beam") / "best.pt"
    save_checkpoint(state, path)
    return path


def test_demo_model_translates_lets_go(translator):
    assert translator.translate(["let's go"]) == ["vamos"]


def test_one_string_instead_of_a_list_is_refused_naming_the_fix(translator):
    with pytest.raises(TypeError, match=r"not one string: put it in a list, \[\"let's go\"\]"):
        translator.translate("let's go")
    with pytest.raises(TypeError, match="a list of strings"):
        translator.translations("let's go", n_best=1)


def test_structural_specials_never_appear_in_output(translator):
    sources = [source for source, _ in toy_phrases()["train"]] + UNSEEN
    # hot sampling from a peaked model picks unlikely ids; <pad> and <sos> are never among them
    for options in ({}, {"temperature": 20.0, "seed": 0}, {"temperature": 20.0, "seed": 1}):
        for (best,) in translator.translations(sources, **options):
            assert not {SOS, EOS, PAD} & set(best.tokens)
        for text in translator.translate(sources, **options):
            assert not any(special in text for special in (SOS, EOS, PAD))


def untrained_attention_translator() -> Translator:
    """The demo's config with Luong attention, untrained: it finds every token about as likely."""
    raw = copy.deepcopy(DEMO_CONFIG)
    raw["model"]["attention"] = "general"
    config = from_dict(raw)
    src_vocab, trg_vocab = (Vocab.build([["a", "b", "c", "d"]], min_freq=1) for _ in range(2))
    torch.manual_seed(0)
    model = build_model(config.model, len(src_vocab), len(trg_vocab))
    return Translator(model, config, src_vocab, trg_vocab)


def test_hot_sampling_never_emits_specials_and_each_token_has_one_attention_row():
    from encdec.plots import attention_heatmap

    translator = untrained_attention_translator()
    sources = ["a b", "c", "d a b c", "b b b"] * 5
    shown = []
    for options in ({"temperature": 50.0, "seed": 0}, {"beam_size": 3, "n_best": 3}, {}):
        for translations in translator.translations(sources, max_len=8, **options):
            for translation in translations:
                assert not set(SPECIALS) - {UNK} & set(translation.tokens)
                assert translation.attention.shape == (
                    len(translation.tokens),
                    len(translation.source_tokens),
                )
                shown.append(translation)
    one_token = min((t for t in shown if t.tokens), key=lambda t: len(t.tokens))
    attention_heatmap(one_token, "a b")  # one row per token: the axes' labels fit


def test_the_length_limit_follows_the_source_and_every_answer_says_when_it_cut(translator):
    sources = ["let's go", "go go go go go go go go go go go go"]
    (free,) = translator.translations(sources[1:])[0]
    assert len(free.tokens) > 1 and not free.truncated
    # one token at most: "vamos" fits and then ends by choice; the other is cut
    (fits,), (cut,) = translator.translations(sources, max_len_a=0.0, max_len_b=1)
    assert (fits.text, fits.truncated) == ("vamos", False)
    assert cut.tokens == free.tokens[:1] and cut.truncated
    answer = answer_of([cut], with_attention=True)
    assert answer["truncated"] is True and answer["n_best"][0]["truncated"] is True
    # one token per source word, at most 2 in all
    (capped,) = translator.translations(sources[1:], max_len_a=1.0, max_len_b=0, max_len=2)[0]
    assert capped.tokens == free.tokens[:2] and capped.truncated
    beams = translator.translations(sources, beam=3, n_best=2, max_len_a=0.0, max_len_b=1)
    assert all(len(t.tokens) <= 1 for n_best in beams for t in n_best)
    assert beams[1][0].truncated


def test_translate_and_evaluate_report_the_lines_cut_at_the_limit(
    demo_checkpoint, tmp_path, capsys
):
    source = tmp_path / "in.txt"
    source.write_text("let's go\ngo go go go go go go go go go go go\n", encoding="utf-8")
    reference = tmp_path / "ref.txt"
    reference.write_text("vamos\nvamos\n", encoding="utf-8")
    limit = ["--set", "decoding.max_len_a=0", "--set", "decoding.max_len_b=1"]
    assert main(["translate", str(demo_checkpoint), "--input", str(source), *limit]) == 0
    assert "1 of 2 lines reached the length limit" in capsys.readouterr().err
    evaluate = ["evaluate", str(demo_checkpoint), "--src", str(source), "--ref", str(reference)]
    assert main([*evaluate, *limit, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["truncated"] == 1
    assert main(evaluate) == 0
    assert "translations cut at the length limit: 0" in capsys.readouterr().out


def test_empty_and_blank_lines_give_empty_translations_in_place(translator):
    sources = ["let's go", "", "   ", "good morning", "\t"]
    translations = translator.translate(sources)
    assert len(translations) == len(sources)
    assert translations == ["vamos", "", "", "buenos días", ""]


def test_a_blank_line_gets_one_empty_translation_whatever_the_search(translator):
    sources = ["let's go", "", "   ", "\t"]
    for options in ({}, {"beam": 3, "n_best": 2}, {"temperature": 1.0, "seed": 0}):
        translations = translator.translations(sources, **options)
        assert len(translations[0]) == options.get("n_best", 1)
        for blank in translations[1:]:
            answer = answer_of(blank, with_attention=True)
            assert answer == {
                "text": "",
                "tokens": [],
                "score": 0.0,
                "truncated": False,
                "n_best": [{"text": "", "tokens": [], "score": 0.0, "truncated": False}],
                "source_tokens": [],
            }


def test_translating_a_list_equals_translating_each_sentence_alone(translator):
    sources = [source for source, _ in toy_phrases()["train"][::7]] + UNSEEN
    assert translator.translate(sources) == [translator.translate([s])[0] for s in sources]


def test_evaluate_scores_memorised_pairs_near_perfectly(translator):
    pairs = toy_phrases()["valid"]  # ten training pairs the demo model has learnt by heart
    scores = translator.evaluate(pairs)
    forced = {"teacher_forced_loss", "teacher_forced_ppl"}
    signed = {"bleu_signature", "bleu_tok_signature", "chrf_signature"}
    assert set(scores) == {"loss", "ppl", "bleu", "bleu_tok", "chrf", "truncated"} | forced | signed
    assert scores["truncated"] == 0
    assert scores["loss"] < 0.5
    assert scores["ppl"] == pytest.approx(math.exp(scores["loss"]))
    assert scores["teacher_forced_ppl"] == pytest.approx(math.exp(scores["teacher_forced_loss"]))
    assert scores["bleu"] > 90
    assert scores["bleu_tok"] > 90
    assert scores["chrf"] > 90


def test_evaluate_scores_wrong_references_low(translator):
    pairs = toy_phrases()["valid"]
    shifted = [(source, reference) for (source, _), (_, reference) in zip(pairs, pairs[1:])]
    scores = translator.evaluate(shifted)
    assert scores["bleu"] < 30
    assert scores["chrf"] < 50
    assert scores["loss"] > 2.0


def test_evaluate_tokenizes_each_source_once_and_scores_its_own_beam(translator, monkeypatch):
    pairs = toy_phrases()["valid"]
    tokenized = []
    tokenize_many = translator.src_tokenizer.tokenize_many
    monkeypatch.setattr(
        translator.src_tokenizer,
        "tokenize_many",
        lambda sentences: tokenized.append(len(sentences)) or tokenize_many(sentences),
    )
    beam = translator.evaluate(pairs, beam=3)
    assert tokenized == [len(pairs)]
    monkeypatch.undo()
    sources, references = zip(*pairs)
    texts = translator.translate(list(sources), beam=3)
    assert beam["bleu"] == pytest.approx(bleu(texts, list(references)))


def test_beam_search_translates_the_demo_phrases(translator):
    pairs = toy_phrases()["valid"]
    sources = [source for source, _ in pairs]
    assert translator.translate(sources, beam_size=4) == translator.translate(sources)


def test_n_best_gives_distinct_translations_best_first(translator):
    ((first, second, third),) = translator.translations(["let's go"], n_best=3, beam_size=3)
    assert first.text == "vamos"
    assert len({first.text, second.text, third.text}) == 3
    ranked = [t.score / (len(t.tokens) + 1) for t in (first, second, third)]  # per token
    assert ranked == sorted(ranked, reverse=True)
    assert first.attention is None  # the demo model has no attention


def test_n_best_above_beam_size_is_an_error(translator):
    with pytest.raises(EncdecError, match="beam_size"):
        translator.translations(["let's go"], n_best=3)


def test_unk_replace_without_attention_is_an_error(translator):
    with pytest.raises(EncdecError, match="attention"):
        translator.translate(["let's go"], unk_replace=True)
    with pytest.raises(EncdecError, match="coverage_penalty needs a model with attention"):
        translator.translate(["let's go"], beam=2, coverage_penalty=0.2)


def test_bad_decoding_option_names_the_field(translator):
    with pytest.raises(EncdecError, match="decoding.beam_size"):
        translator.translate(["let's go"], beam_size=0)


def test_subword_model_translates_from_its_checkpoint_alone(tmp_path):
    raw = copy.deepcopy(DEMO_CONFIG)
    raw["data"] |= {"subwords": "bpe", "subword_vocab_size": 150}
    train(from_dict(raw), tmp_path, quiet=True)
    state = load_checkpoint(tmp_path / "best.pt")
    assert state["src_subwords"] and state["trg_subwords"]
    translator = Translator.load(tmp_path / "best.pt")
    (best,) = translator.translations(["let's go"])[0]
    assert best.text == "vamos"
    assert translator.trg_tokenizer.to_words(best.tokens) == ["vamos"]


def test_joint_subwords_and_shared_embeddings_translate_from_their_checkpoint(tmp_path):
    raw = copy.deepcopy(DEMO_CONFIG)
    raw["data"] |= {"subwords": "bpe", "subword_vocab_size": 150, "joint_vocab": True}
    # tying the output layer too needs embedding_dim == hidden_dim (128)
    raw["model"] |= {"embedding_dim": 128, "share_embeddings": True, "tie_embeddings": True}
    raw["training"]["epochs"] = 2  # what it learns is not the point: test_model checks that
    train(from_dict(raw), tmp_path, quiet=True, device="cpu")
    state = load_checkpoint(tmp_path / "best.pt")
    assert state["src_subwords"] == state["trg_subwords"]
    assert state["src_vocab"] == state["trg_vocab"]
    translator = Translator.load(tmp_path / "best.pt", device="cpu")
    embedding = translator.model.encoder.embedding.weight
    assert embedding is translator.model.decoder.embedding.weight
    assert embedding is translator.model.decoder.fc_out.weight
    pieces = translator.translations(["let's go", "good morning"])
    assert all(UNK not in best.tokens for best, *_ in pieces)  # joint pieces cover every word


def test_beam_is_short_for_beam_size(translator):
    assert translator.translate(["let's go"], beam=3) == ["vamos"]
    ((best, second),) = translator.translations(["let's go"], n_best=2, beam=2)
    assert best.text == "vamos" and second.text != "vamos"


def test_train_from_python_without_a_run_dir_makes_one_under_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    raw = copy.deepcopy(DEMO_CONFIG)
    raw["training"]["epochs"] = 1
    train(from_dict(raw), quiet=True)
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert (run_dir / "best.pt").is_file() and (run_dir / "metrics.jsonl").is_file()


def sampled_translations(translator: Translator) -> dict[int, list[str]]:
    """Hot samples of every toy phrase with seeds 0, 0 again, and 1."""
    sources = [source for source, _ in toy_phrases()["train"]]
    return {
        run: translator.translate(sources, temperature=5.0, seed=seed)
        for run, seed in enumerate((0, 0, 1))
    }


def test_seeded_sampling_repeats_and_other_seeds_differ(demo_checkpoint):
    samples = sampled_translations(Translator.load(demo_checkpoint, device="cpu"))
    assert samples[0] == samples[1]
    assert samples[0] != samples[2]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_seeded_sampling_on_cuda_repeats_and_other_seeds_differ(demo_checkpoint):
    samples = sampled_translations(Translator.load(demo_checkpoint, device="cuda"))
    assert samples[0] == samples[1]
    assert samples[0] != samples[2]


def test_training_validation_scores_equal_those_of_evaluate(demo_checkpoint):
    translator = Translator.load(demo_checkpoint, device="cpu")
    corpus = build_corpus(translator.config.data)
    validation = evaluate_split(translator.model, corpus, "valid", translator.config)
    evaluated = translator.evaluate(corpus.pairs["valid"], beam_size=1, temperature=0.0)
    for key in ("loss", "ppl", "bleu", "bleu_tok", "chrf"):
        assert validation[f"valid_{key}"] == pytest.approx(evaluated[key]), key


def test_best_pt_holds_what_translating_needs_and_last_pt_the_training_state(demo_checkpoint):
    best, last_path = load_checkpoint(demo_checkpoint), demo_checkpoint.parent / "last.pt"
    translating = {"model", "config", "src_vocab", "trg_vocab", "src_subwords", "trg_subwords"}
    assert translating | {"epoch", "valid_loss"} <= set(best)
    assert not {"optimizer", "rng_by_rank", "batches", "selection"} & set(best)
    assert {"optimizer", "rng_by_rank", "selection"} <= set(load_checkpoint(last_path))
    # without Adam's two moments per weight, best.pt is about a third of last.pt
    assert demo_checkpoint.stat().st_size < 0.45 * last_path.stat().st_size


def test_a_best_pt_with_training_state_as_earlier_versions_wrote_still_translates(
    demo_checkpoint, tmp_path
):
    shutil.copy(demo_checkpoint.parent / "last.pt", tmp_path / "best.pt")  # optimizer and all
    assert Translator.load(tmp_path / "best.pt", device="cpu").translate(["let's go"]) == ["vamos"]


def imported_modules(statement: str) -> set[str]:
    """The modules a fresh interpreter holds after running `statement`."""
    code = f"{statement}; import json, sys; print(json.dumps(sorted(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    return set(json.loads(result.stdout))


TRAINING_MODULES = {"encdec.training", "encdec.steps", "encdec.run_state", "encdec.corpus"}
TRAINING_MODULES |= {"encdec.distributed", "encdec.data", "encdec.stop_signals"}


def test_import_encdec_and_search_load_neither_spacy_nor_training():
    modules = imported_modules("import encdec, encdec.search")
    assert not {"spacy", "encdec.translator", *TRAINING_MODULES} & modules


def test_translating_imports_no_training_module():
    assert not TRAINING_MODULES & imported_modules("import encdec.translator")


def test_public_names_load_on_first_use():
    modules = imported_modules(
        "from encdec import Config, Translator, load_config, train; "
        "assert Translator.__module__ == 'encdec.translator' and callable(train)"
    )
    assert {"encdec.training", "encdec.translator", "encdec.config"} <= modules


def test_attention_has_a_column_per_source_token_in_a_padded_batch():
    raw = copy.deepcopy(DEMO_CONFIG)
    raw["model"]["attention"] = "general"
    config = from_dict(raw)
    words = ["a", "b", "c", "d"]
    src_vocab, trg_vocab = (Vocab.build([words], min_freq=1) for _ in range(2))
    torch.manual_seed(0)
    model = build_model(config.model, len(src_vocab), len(trg_vocab))
    translator = Translator(model, config, src_vocab, trg_vocab)
    short, long = translator.translations(["a", "a b c d a b c d"], beam_size=2, max_len=5)
    for (best,) in (short[:1], long[:1]):
        assert best.attention.shape == (len(best.tokens), len(best.source_tokens))


def test_a_temperature_samples_even_where_the_checkpoint_searches_with_beams(beam_checkpoint):
    translator = Translator.load(beam_checkpoint, device="cpu")
    sentences = [source for source, _ in toy_phrases()["train"]][:20]
    sampled = translator.translate(sentences, temperature=3.0, seed=1)
    assert sampled == translator.translate(sentences, temperature=3.0, seed=1, beam_size=1)
    assert sampled != translator.translate(sentences)  # the checkpoint's beam search
    with pytest.raises(EncdecError, match="do not mix"):
        translator.translate(sentences, temperature=3.0, beam_size=2)
