"""Tokenizers (spaCy blank pipelines, characters, subwords) and their inverse, detokenization."""

from __future__ import annotations

from collections.abc import Iterable
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
    def learn(cls, token_lists: Iterable[list[str]], kind: str, vocab_size: int) -> Subwords:
        """Learn `kind` ('bpe' or 'unigram') subwords of at most `vocab_size` pieces."""
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
        texts = (" ".join(tokens) for tokens in token_lists)
        subword_tokenizer.train_from_iterator(texts, trainer)
        return cls(subword_tokenizer.to_str())

    def split(self, token_lists: list[list[str]]) -> list[list[str]]:
        """Each word list as a list of pieces."""
        encodings = self.model.encode_batch([" ".join(tokens) for tokens in token_lists])
        return [encoding.tokens for encoding in encodings]

    @staticmethod
    def join(pieces: list[str]) -> list[str]:
        """Glue pieces back into words (the inverse of `split`)."""
        return "".join(pieces).replace(WORD_START, " ").split()


class Tokenizer:
    """Turns sentences into token lists and back, for one language."""

    def __init__(
        self, kind: str, lang: str, lowercase: bool = True, subwords: Subwords | None = None
    ):
        if kind not in ("spacy", "char"):
            raise EncdecError(f"unknown tokenizer '{kind}': use 'spacy' or 'char'")
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
        """Words of many sentences at once (spaCy's pipe is faster than one call each)."""
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

    def to_words(self, tokens: list[str]) -> list[str]:
        """Model tokens back to words: subwords are glued, words stay as they are."""
        return self.subwords.join(tokens) if self.subwords is not None else tokens

    def detokenize(self, tokens: list[str]) -> str:
        """Join tokens into text: characters are concatenated, words follow Moses' spacing rules."""
        if self.kind == "char":
            return "".join(tokens)
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
