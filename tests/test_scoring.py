"""`encdec score`: translations against references, and sentence pairs under a model."""

import json
import math

import pytest
import sacrebleu
from sacrebleu.metrics import CHRF

from encdec.cli import main
from encdec.translator import Translator

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SOURCES = ["good morning", "let's go", "thank you very much", "where is the cat"]
TARGETS = ["buenos días", "vamos", "muchas gracias", "dónde está el gato"]


def write_lines(path, lines: list[str]):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_translations_get_sacrebleus_lowercased_bleu_and_chrf_with_signatures(tmp_path, capsys):
    hypotheses = ["A man rides a bike .", "Two dogs play in the snow ."]
    references = ["a man is riding a bike .", "two dogs are playing in the snow ."]
    hyp_file = write_lines(tmp_path / "hyp.en", hypotheses)
    ref_file = write_lines(tmp_path / "ref.en", references)
    assert main(["score", "translations", str(hyp_file), "--ref", str(ref_file), "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)
    expected_bleu = sacrebleu.corpus_bleu(hypotheses, [references], lowercase=True)
    expected_chrf = CHRF(lowercase=True).corpus_score(hypotheses, [references])
    assert scores["bleu"] == pytest.approx(expected_bleu.score)
    assert scores["chrf"] == pytest.approx(expected_chrf.score)
    assert scores["sentences"] == 2
    assert scores["bleu_signature"].startswith("nrefs:1|case:lc|eff:no|tok:13a|smooth:exp|")
    assert scores["chrf_signature"].startswith("nrefs:1|case:lc|eff:yes|nc:6|nw:0|space:no|")

    assert main(["score", "translations", str(hyp_file), "--ref", str(ref_file)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        f"{hyp_file}: BLEU {scores['bleu']:.2f} | chrF {scores['chrf']:.2f}",
        f"BLEU signature: {scores['bleu_signature']}",
        f"chrF signature: {scores['chrf_signature']}",
    ]


def test_translations_and_references_of_other_lengths_are_a_one_line_error(tmp_path, capsys):
    hyp_file = write_lines(tmp_path / "hyp.en", ["a", "b"])
    ref_file = write_lines(tmp_path / "ref.en", ["a"])
    assert main(["score", "translations", str(hyp_file), "--ref", str(ref_file)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "has 2 lines" in error and str(ref_file) in error


def test_a_pairs_log_probability_is_the_score_of_the_models_own_translation(
    demo_checkpoint, tmp_path, capsys
):
    translator = Translator.load(demo_checkpoint, device="cpu")
    best = [translations[0] for translations in translator.translations(SOURCES)]
    source = write_lines(tmp_path / "src.en", SOURCES)
    target = write_lines(tmp_path / "trg.es", [translation.text for translation in best])
    argv = ["score", "pairs", str(demo_checkpoint), "--src", str(source), "--trg", str(target)]
    assert main([*argv, "--device", "cpu", "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)
    sentences = scores["sentences"]
    assert [s["log_prob"] for s in sentences] == pytest.approx([t.score for t in best], abs=1e-4)
    assert [s["tokens"] for s in sentences] == [len(t.tokens) + 1 for t in best]  # and <eos>
    for sentence in sentences:
        assert sentence["ppl"] == pytest.approx(
            math.exp(-sentence["log_prob"] / sentence["tokens"])
        )
    assert scores["pairs"] == len(SOURCES) and scores["tokens"] == sum(
        s["tokens"] for s in sentences
    )
    assert scores["ppl"] == pytest.approx(math.exp(-scores["log_prob"] / scores["tokens"]))

    assert main([*argv, "--device", "cpu", "--batch-size", "1"]) == 0
    captured = capsys.readouterr()
    rows = [line.split("\t") for line in captured.out.splitlines()]
    assert [float(log_prob) for log_prob, _, _ in rows] == pytest.approx(
        [s["log_prob"] for s in sentences], abs=1e-3
    )
    assert [int(tokens) for _, tokens, _ in rows] == [s["tokens"] for s in sentences]
    assert f"perplexity {scores['ppl']:.2f} (teacher-forced)" in captured.err


def test_the_perplexity_of_pairs_is_evaluates_teacher_forced_one(demo_checkpoint, tmp_path, capsys):
    source = write_lines(tmp_path / "src.en", SOURCES)
    target = write_lines(tmp_path / "trg.es", TARGETS)
    argv = ["score", "pairs", str(demo_checkpoint), "--src", str(source), "--trg", str(target)]
    assert main([*argv, "--device", "cpu", "--json"]) == 0
    scored = json.loads(capsys.readouterr().out)
    argv = ["evaluate", str(demo_checkpoint), "--src", str(source), "--ref", str(target)]
    assert main([*argv, "--device", "cpu", "--json", "--quiet"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert scored["ppl"] == pytest.approx(evaluated["teacher_forced_ppl"], rel=1e-4)
