"""Tokenizers (spaCy blank pipelines, characters, subwords) and their inverse, detokenization."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from functools import cache
from typing import TYPE_CHECKING

import spacy
import tokenizers
from sacremoses import MosesDetokenizer

from encdec.errors import EncdecError

if TYPE_CHECKING:
    from encdec.config import DataConfig


@cache
def _spacy_tokenizer(lang: str):
    # spacy.blank builds the rule-based tokenizer the downloadable models ship, without a download.
    try:
        return spacy.blank(lang).tokenizer
    except (ImportError, OSError, KeyError) as error:
        raise EncdecError(f"spaCy has no tokenizer for language '{lang}': {error}") from None


# A sentence of words that single spaces separate: spaCy splits it at those spaces first and
# tokenizes each word alone, so a word's tokens can be remembered (tests/test_tokenize.py holds
# the cached and the plain tokenizer equal on all of Multi30k). Other sentences go to spaCy whole.
_SINGLE_SPACED = re.compile(r"\S+(?: \S+)*")
_CACHE_LIMIT = 1_000_000  # words remembered per language; the cache starts again when full


class _SpacyWords:
    """spaCy's tokens of sentences (lowercased if asked), each space-separated word tokenized
    once and remembered."""

    def __init__(self, lang: str, lowercase: bool):
        self.tokenizer, self.lowercase = _spacy_tokenizer(lang), lowercase
        self.cache: dict[str, list[str]] = {}

    def __call__(self, sentence: str) -> list[str]:
        if not _SINGLE_SPACED.fullmatch(sentence):
            return self._tokens(sentence)
        words = sentence.split(" ")
        try:
            return [token for word in words for token in self.cache[word]]
        except KeyError:
            self._remember(words)
            return [token for word in words for token in self.cache[word]]

    def _remember(self, words: list[str]) -> None:
        if len(self.cache) + len(words) > _CACHE_LIMIT:
            self.cache.clear()
        for word in words:
            if word not in self.cache:
                self.cache[word] = self._tokens(word)

    def _tokens(self, text: str) -> list[str]:
        # lowercased after tokenizing: spaCy's exceptions ("Dr.", "U.S.") are case-sensitive
        tokens = [token.text for token in self.tokenizer(text)]
        return [token.lower() for token in tokens] if self.lowercase else tokens


@cache
def _spacy_words(lang: str, lowercase: bool) -> _SpacyWords:
    return _SpacyWords(lang, lowercase)


WORD_START = "\u2581"  # "▁" marks a subword that begins a word, as in SentencePiece


class Subwords:
    """A subword model (BPE or unigram, from Hugging Face `tokenizers`) learnt on training text.

    It splits each word into pieces, the first marked with WORD_START, so `join` can glue the
    pieces back into the words they came from.
    """

    def __init__(self, serialized: str):
        self.serialized = serialized  # JSON: what checkpoints store
        self.model = tokenizers.Tokenizer.from_str(serialized)

    @classmethod
    def learn(cls, word_counts: Mapping[str, int], kind: str, vocab_size: int) -> Subwords:
        """Learn `kind` ('bpe' or 'unigram') subwords of at most `vocab_size` pieces.

        Learnt from how often each word occurs, which is all either algorithm reads of the text.
        """
        if kind == "bpe":
            model = tokenizers.models.BPE(unk_token="<unk>")
            trainer = tokenizers.trainers.BpeTrainer(
                vocab_size=vocab_size, special_tokens=["<unk>"], show_progress=False
            )
        elif kind == "unigram":
            model = tokenizers.models.Unigram()
            trainer = tokenizers.trainers.UnigramTrainer(
                vocab_size=vocab_size,
                special_tokens=["<unk>"],
                unk_token="<unk>",
                show_progress=False,
            )
        else:
            raise EncdecError(f"unknown subword kind '{kind}': use 'bpe' or 'unigram'")
        subword_tokenizer = tokenizers.Tokenizer(model)
        subword_tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.Metaspace(WORD_START)
        subword_tokenizer.train_from_iterator(_repeated_words(word_counts), trainer)
        return cls(subword_tokenizer.to_str())

    @classmethod
    def from_file(cls, path: str) -> Subwords:
        """A subword model saved by Hugging Face `tokenizers` (JSON), as `learn` makes them."""
        try:
            with open(path, encoding="utf-8") as file:
                return cls(file.read())
        except OSError as error:
            raise EncdecError(f"data.subword_model {path}: cannot read it ({error})") from None
        except Exception as error:  # tokenizers raises its own exception type for bad JSON
            raise EncdecError(
                f"data.subword_model {path} is not a `tokenizers` JSON model ({error}); save "
                "one with tokenizers' Tokenizer.save, or let encdec learn one (data.subwords)"
            ) from None

    def split(self, token_lists: list[list[str]]) -> list[list[str]]:
        """Each word list as a list of pieces: its words' pieces, one word after another."""
        word_pieces = iter(self.split_words([word for words in token_lists for word in words]))
        return [[piece for _ in words for piece in next(word_pieces)] for words in token_lists]

    def split_words(self, words: list[str]) -> list[list[str]]:
        """Each word's pieces, split alone (so a run of spaces that spaCy keeps as a token
        is one piece wherever it stands, in training and in translation alike)."""
        return [encoding.tokens for encoding in self.model.encode_batch(words)]

    @staticmethod
    def join(pieces: list[str]) -> list[str]:
        """Glue pieces back into words (the inverse of `split`)."""
        return "".join(pieces).replace(WORD_START, " ").split()


def _repeated_words(word_counts: Mapping[str, int], per_text: int = 10_000) -> Iterable[str]:
    """Texts in which each word occurs as often as it is counted, as a trainer reads them."""
    for word, count in word_counts.items():
        for start in range(0, count, per_text):
            yield " ".join([word] * min(per_text, count - start))


TOKENIZERS = ("spacy", "char", "whitespace")


class Tokenizer:
    """Turns sentences into token lists and back, for one language."""

    def __init__(
        self, kind: str, lang: str, lowercase: bool = True, subwords: Subwords | None = None
    ):
        if kind not in TOKENIZERS:
            raise EncdecError(f"unknown tokenizer '{kind}': use one of {', '.join(TOKENIZERS)}")
        self.kind, self.lang, self.lowercase, self.subwords = kind, lang, lowercase, subwords

    def __call__(self, sentence: str) -> list[str]:
        return self.tokenize_many([sentence])[0]

    def tokenize_many(self, sentences: Iterable[str]) -> list[list[str]]:
        """The tokens the model reads or writes: words (or characters), or their subwords."""
        return self.pieces_many(self.words_many(sentences))

    def pieces_many(self, word_lists: list[list[str]]) -> list[list[str]]:
        """Word lists as the tokens the model reads or writes: their subwords, or the words."""
        return self.subwords.split(word_lists) if self.subwords is not None else word_lists

    def words_many(self, sentences: Iterable[str]) -> list[list[str]]:
        """Words of many sentences: spaCy's, characters, or the words spaces separate."""
        if self.kind == "spacy":
            return list(map(_spacy_words(self.lang, self.lowercase), sentences))
        if self.kind == "whitespace":  # lowercasing the line lowercases each of its words
            return [(s.lower() if self.lowercase else s).split() for s in sentences]
        token_lists = [list(sentence) for sentence in sentences]
        if self.lowercase:
            token_lists = [[token.lower() for token in tokens] for tokens in token_lists]
        return token_lists

    def to_words(self, tokens: list[str]) -> list[str]:
        """Model tokens back to words: subwords are glued, words stay as they are."""
        return self.subwords.join(tokens) if self.subwords is not None else tokens

    def detokenize(self, tokens: list[str]) -> str:
        """Join tokens into text: characters are concatenated, words follow Moses' spacing rules."""
        if self.kind == "char":
            return "".join(tokens)
        if self.kind == "whitespace":  # text tokenized before encdec saw it stays tokenized
            return " ".join(self.to_words(tokens))
        words = [
            token for token in self.to_words(tokens) if token.strip()
        ]  # spaCy keeps runs of spaces as tokens
        return _moses_detokenizer(self.lang).detokenize(_rejoin_hyphens(words))


def _rejoin_hyphens(words: list[str]) -> list[str]:
    """Glue a hyphen between two words to both: spaCy splits "t-shirt" into `t - shirt`.

    spaCy (English, French, Czech) splits every hyphen inside a word, and Moses leaves a lone "-"
    spaced. In Multi30k's English training text 1,333 hyphens join two words and 6 stand between
    spaces, so a hyphen between two words is taken to be one that joined them.
    """
    joined: list[str] = []
    for word in words:
        if (
            len(joined) >= 2
            and joined[-1] == "-"
            and joined[-2][-1].isalnum()
            and word[0].isalnum()
        ):
            joined.pop()
            joined[-1] += "-" + word
        else:
            joined.append(word)
    return joined


@cache
def _moses_detokenizer(lang: str) -> MosesDetokenizer:
    return MosesDetokenizer(lang=lang)


def tokenizer_pair(
    config: DataConfig, subwords: tuple[Subwords | None, Subwords | None] = (None, None)
) -> tuple[Tokenizer, Tokenizer]:
    """The source and target tokenizers a data config asks for, with learnt subwords if any."""
    return (
        Tokenizer(config.tokenizer, config.src_lang, config.lowercase, subwords[0]),
        Tokenizer(config.tokenizer, config.trg_lang, config.lowercase, subwords[1]),
    )
