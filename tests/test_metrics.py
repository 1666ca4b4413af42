"""Tests for encdec.metrics: perplexity, both BLEU flavours and chrF against sacreBLEU."""

import math

import pytest
import sacrebleu
from sacrebleu.metrics import CHRF

from encdec.metrics import bleu, bleu_tok, chrf, perplexity

HYPOTHESES = [
    "A man in a blue shirt is standing on a ladder.",
    "Two dogs play in the snow.",
    "A girl rides her bike down the street.",
]
REFERENCES = [
    "A man in a blue shirt is standing on a ladder cleaning windows.",
    "Two dogs are playing in the snow.",
    "A little girl is riding a bike on the road.",
]


@pytest.mark.parametrize("loss", [0.0, 0.5, 2.3, 7.0])
def test_perplexity_is_exp_of_loss(loss):
    assert perplexity(loss) == pytest.approx(math.exp(loss))


def test_perplexity_is_capped_for_huge_losses():
    huge = perplexity(1e6)
    assert math.isfinite(huge)
    assert huge == perplexity(1e9)
    assert huge >= perplexity(50.0)


def test_bleu_equals_lowercased_sacrebleu():
    expected = sacrebleu.corpus_bleu(HYPOTHESES, [REFERENCES], lowercase=True).score
    assert bleu(HYPOTHESES, REFERENCES) == pytest.approx(expected)
    assert 0 < expected < 100


def test_bleu_of_identical_text_is_100():
    assert bleu(REFERENCES, REFERENCES) == pytest.approx(100.0)


def test_bleu_ignores_case():
    assert bleu([h.upper() for h in REFERENCES], REFERENCES) == pytest.approx(100.0)
    assert bleu([h.lower() for h in HYPOTHESES], REFERENCES) == pytest.approx(
        bleu(HYPOTHESES, REFERENCES)
    )


def test_bleu_of_unrelated_text_is_low():
    unrelated = ["Completely different words here today."] * len(REFERENCES)
    assert bleu(unrelated, REFERENCES) < 5


def test_bleu_tok_of_identical_tokens_is_100():
    tokens = [sentence.lower().split() for sentence in REFERENCES]
    assert bleu_tok(tokens, tokens) == pytest.approx(100.0)


def test_bleu_tok_equals_sacrebleu_without_tokenization():
    hypothesis_tokens = [["a", "man", "in", "a", "blue", "shirt", "."], ["two", "dogs", "play"]]
    reference_tokens = [
        ["a", "man", "in", "a", "blue", "shirt", "stands", "."],
        ["two", "dogs", "are", "playing", "."],
    ]
    expected = sacrebleu.corpus_bleu(
        ["a man in a blue shirt .", "two dogs play"],
        [["a man in a blue shirt stands .", "two dogs are playing ."]],
        tokenize="none",
    ).score
    assert bleu_tok(hypothesis_tokens, reference_tokens) == pytest.approx(expected)
    assert 0 < expected < 100


def test_bleu_tok_does_not_retokenize():
    # "dog." as one token differs from "dog" "."; sacreBLEU's 13a would split it and score 100.
    hypothesis = [["the", "big", "brown", "dog."]]
    reference = [["the", "big", "brown", "dog", "."]]
    assert bleu_tok(hypothesis, reference) < 100
    assert bleu(["the big brown dog."], ["the big brown dog ."]) == pytest.approx(100.0)


def test_chrf_equals_lowercased_sacrebleu_chrf():
    expected = CHRF(lowercase=True).corpus_score(HYPOTHESES, [REFERENCES]).score
    assert chrf(HYPOTHESES, REFERENCES) == pytest.approx(expected)
    assert 0 < expected < 100


def test_chrf_pins_a_known_value():
    # computed once with sacreBLEU 2.6: a changed default (n-gram order, beta) would show here
    assert chrf(["the cat sat on the mat"], ["the cat is on the mat"]) == pytest.approx(
        64.578, abs=1e-3
    )


def test_chrf_of_identical_text_is_100_and_ignores_case():
    assert chrf(REFERENCES, REFERENCES) == pytest.approx(100.0)
    assert chrf([r.upper() for r in REFERENCES], REFERENCES) == pytest.approx(100.0)


def test_chrf_gives_partial_credit_where_bleu_gives_none():
    # no shared word 4-gram, but most characters match: BLEU 0, chrF well above it
    hypothesis, reference = ["the dogs plays"], ["the dog played"]
    assert bleu(hypothesis, reference) == pytest.approx(0.0)
    assert chrf(hypothesis, reference) > 40
