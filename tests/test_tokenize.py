"""Tests for encdec.tokenize: spaCy blank tokenizers, characters, detokenization."""

import pytest

from encdec.errors import EncdecError
from encdec.tokenize import Tokenizer


def test_english_contraction_splits_into_two_tokens():
    assert Tokenizer("spacy", "en")("isn't") == ["is", "n't"]


def test_english_punctuation_becomes_separate_tokens():
    tokens = Tokenizer("spacy", "en")("Two dogs, one ball.")
    assert tokens == ["two", "dogs", ",", "one", "ball", "."]


def test_german_sentence_splits_words_and_punctuation():
    tokens = Tokenizer("spacy", "de")("Zwei Hunde spielen im Schnee, oder?")
    assert tokens == ["zwei", "hunde", "spielen", "im", "schnee", ",", "oder", "?"]


def test_german_abbreviation_stays_one_token():
    assert Tokenizer("spacy", "de")("Das ist z.B. gut.") == ["das", "ist", "z.b.", "gut", "."]


def test_tokens_are_lowercased():
    tokens = Tokenizer("spacy", "en")("A Man IN Blue")
    assert tokens == ["a", "man", "in", "blue"]


def test_lowercasing_happens_after_tokenization():
    # spaCy's exception for "Dr." only matches the cased form: lowercasing first would split it.
    assert Tokenizer("spacy", "en")("Dr. Smith") == ["dr.", "smith"]
    assert Tokenizer("spacy", "en")("He lives in the U.S.")[-1] == "u.s."


def test_lowercase_false_keeps_case():
    tokens = Tokenizer("spacy", "en", lowercase=False)("Dr. Smith isn't Here")
    assert tokens == ["Dr.", "Smith", "is", "n't", "Here"]


def test_tokenize_many_matches_one_at_a_time():
    tokenizer = Tokenizer("spacy", "en")
    sentences = ["A dog runs.", "", "Isn't it?"]
    assert tokenizer.tokenize_many(sentences) == [tokenizer(s) for s in sentences]


def test_char_tokenizer_gives_characters():
    assert Tokenizer("char", "en", lowercase=False)("Ab c!") == ["A", "b", " ", "c", "!"]


def test_char_tokenizer_lowercases_when_asked():
    assert Tokenizer("char", "en")("AbC") == ["a", "b", "c"]


def test_char_detokenize_concatenates():
    tokenizer = Tokenizer("char", "de", lowercase=False)
    sentence = "Ein Hund , läuft."
    assert tokenizer.detokenize(tokenizer(sentence)) == sentence


def test_detokenize_attaches_punctuation():
    tokenizer = Tokenizer("spacy", "en")
    assert tokenizer.detokenize(["a", "man", ",", "a", "plan", "."]) == "a man, a plan."


def test_detokenize_drops_whitespace_only_tokens():
    tokenizer = Tokenizer("spacy", "en")
    assert tokenizer.detokenize(["a", "  ", "dog", "\n", "runs", "."]) == "a dog runs."


def test_spacy_keeps_runs_of_spaces_that_detokenize_removes():
    tokenizer = Tokenizer("spacy", "en")
    tokens = tokenizer("a  dog   runs .")
    assert any(not token.strip() for token in tokens)
    assert tokenizer.detokenize(tokens) == "a dog runs."


def test_unknown_spacy_language_is_an_error():
    with pytest.raises(EncdecError, match="zz"):
        Tokenizer("spacy", "zz")("hello")


def test_unknown_tokenizer_kind_is_an_error():
    with pytest.raises(EncdecError, match="bpe"):
        Tokenizer("bpe", "en")
