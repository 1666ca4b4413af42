"""Tokenizers (spaCy blank pipelines, characters) and their inverse, detokenization."""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache

import spacy
from sacremoses import MosesDetokenizer

from encdec.errors import EncdecError


@cache
def _spacy_tokenizer(lang: str):
    # spacy.blank builds the rule-based tokenizer the downloadable models ship, without a download.
    try:
        return spacy.blank(lang).tokenizer
    except (ImportError, OSError, KeyError) as error:
        raise EncdecError(f"spaCy has no tokenizer for language '{lang}': {error}") from None


class Tokenizer:
    """Turns sentences into token lists and back, for one language."""

    def __init__(self, kind: str, lang: str, lowercase: bool = True):
        if kind not in ("spacy", "char"):
            raise EncdecError(f"unknown tokenizer '{kind}': use 'spacy' or 'char'")
        self.kind, self.lang, self.lowercase = kind, lang, lowercase

    def __call__(self, sentence: str) -> list[str]:
        return self.tokenize_many([sentence])[0]

    def tokenize_many(self, sentences: Iterable[str]) -> list[list[str]]:
        """Tokenize many sentences at once (spaCy's pipe is faster than one call each)."""
        if self.kind == "char":
            token_lists = [list(sentence) for sentence in sentences]
        else:
            docs = _spacy_tokenizer(self.lang).pipe(sentences)
            token_lists = [[token.text for token in doc] for doc in docs]
        if (
            self.lowercase
        ):  # after tokenizing: spaCy's exceptions ("Dr.", "U.S.") are case-sensitive
            token_lists = [[token.lower() for token in tokens] for tokens in token_lists]
        return token_lists

    def detokenize(self, tokens: list[str]) -> str:
        """Join tokens into text: characters are concatenated, words follow Moses' spacing rules."""
        if self.kind == "char":
            return "".join(tokens)
        words = [token for token in tokens if token.strip()]  # spaCy keeps runs of spaces as tokens
        return _moses_detokenizer(self.lang).detokenize(words)


@cache
def _moses_detokenizer(lang: str) -> MosesDetokenizer:
    return MosesDetokenizer(lang=lang)
