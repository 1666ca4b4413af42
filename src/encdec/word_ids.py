"""Preparing, pass one: every split tokenized into words, in parallel, each word numbered.

Workers tokenize chunks of pairs and number each chunk's words on their own; the main process
renumbers them into one dictionary of every word seen and appends each side's word numbers to a
file. Training pairs are selected here (empty sentences, data.max_len) and their words counted,
which is all that vocabularies and subword models are learnt from.
"""

from __future__ import annotations

import contextlib
import multiprocessing
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from encdec.config import DataConfig
from encdec.errors import EncdecError
from encdec.pair_ids import positions_within
from encdec.progress import progress_bar
from encdec.splits import Chunk, SplitSource
from encdec.tokenize import Tokenizer, tokenizer_pair

CHUNK_PAIRS = 5_000  # pairs a worker tokenizes at a time
SIDES = ("src", "trg")


@dataclass
class ChunkWords:
    """One chunk's sentences of one side as word numbers: first local to the chunk, then global."""

    words: list[str]  # the chunk's distinct words, in order of first sight
    ids: np.ndarray  # (tokens,) int32: every sentence's words, one sentence after another
    lengths: np.ndarray  # (sentences,) int64
    blank: np.ndarray  # (sentences,) bool: nothing but spaces


def chunk_words(tokenizer: Tokenizer, sentences: list[str]) -> ChunkWords:
    """Tokenize `sentences` into words numbered in order of first sight."""
    token_lists = tokenizer.words_many(sentences)
    tokens = [token for token_list in token_lists for token in token_list]
    words = list(dict.fromkeys(tokens))  # distinct, in order of first sight
    numbers = {word: number for number, word in enumerate(words)}
    count = len(token_lists)
    return ChunkWords(
        words,
        np.fromiter(map(numbers.__getitem__, tokens), dtype=np.int32, count=len(tokens)),
        np.fromiter(map(len, token_lists), dtype=np.int64, count=count),
        # every tokenizer keeps a sentence's non-space characters in its tokens
        np.fromiter((not sentence.strip() for sentence in sentences), dtype=bool, count=count),
    )


_worker_tokenizers: tuple[Tokenizer, Tokenizer] | None = None


def _start_worker(config: DataConfig) -> None:
    global _worker_tokenizers
    _worker_tokenizers = tokenizer_pair(config)


def _tokenize_chunk(chunk: Chunk) -> tuple[ChunkWords, ChunkWords]:
    src_tokenizer, trg_tokenizer = _worker_tokenizers
    return chunk_words(src_tokenizer, chunk[0]), chunk_words(trg_tokenizer, chunk[1])


Tokenize = Callable[[Iterable[Chunk]], Iterator[tuple[Chunk, tuple[ChunkWords, ChunkWords]]]]


@contextlib.contextmanager
def tokenizing(config: DataConfig, workers: int) -> Iterator[Tokenize]:
    """A function from chunks to (chunk, words) in order: in this process, or in `workers`."""
    if workers == 1:
        _start_worker(config)
        yield lambda chunks: ((chunk, _tokenize_chunk(chunk)) for chunk in chunks)
        return
    context = multiprocessing.get_context("spawn")  # no state of this process leaks in
    with context.Pool(workers, initializer=_start_worker, initargs=(config,)) as pool:
        yield lambda chunks: _in_order(pool, chunks, ahead=2 * workers)


def _in_order(pool, chunks: Iterable[Chunk], ahead: int):
    """The pool's results in the chunks' order; at most `ahead` chunks read but not yet done."""
    pending: deque = deque()
    for chunk in chunks:
        pending.append((chunk, pool.apply_async(_tokenize_chunk, (chunk,))))
        if len(pending) >= ahead:
            chunk, result = pending.popleft()
            yield chunk, result.get()
    while pending:
        chunk, result = pending.popleft()
        yield chunk, result.get()


class Dictionary:
    """Every word seen, numbered in order of first sight, and its count per side in training."""

    def __init__(self):
        self.numbers: dict[str, int] = {}
        self.words: list[str] = []
        self._counts = [np.zeros(1 << 16, dtype=np.int64) for _ in SIDES]

    def renumber(self, chunk: ChunkWords) -> None:
        """Turn the chunk's local word numbers into this dictionary's."""
        table = np.empty(len(chunk.words), dtype=np.int32)
        for local, word in enumerate(chunk.words):
            number = self.numbers.get(word)
            if number is None:
                number = self.numbers[word] = len(self.words)
                self.words.append(word)
            table[local] = number
        chunk.ids = table[chunk.ids]

    def count(self, side: int, ids: np.ndarray) -> None:
        """Add training words to the counts of side 0 (source) or 1 (target)."""
        counts = self._counts[side]
        if len(counts) < len(self.words):  # grow geometrically: one copy per doubling
            self._counts[side] = counts = np.concatenate([counts, np.zeros_like(counts)])
            return self.count(side, ids)
        counts[: len(self.words)] += np.bincount(ids, minlength=len(self.words))

    def counts(self, side: int) -> np.ndarray:
        """(words,) how often each word occurs on `side` of the training pairs kept."""
        return self._counts[side][: len(self.words)]


@dataclass
class SplitWords:
    """One split after pass one: per side, a file of word numbers and each sentence's length."""

    paths: tuple[Path, Path]
    lengths: tuple[np.ndarray, np.ndarray] = (np.zeros(0, np.int64), np.zeros(0, np.int64))


@dataclass
class Selection:
    """What pass one did to the training pairs."""

    skipped: dict[str, int] = field(default_factory=dict)  # pairs left out, by reason
    truncated: int = 0  # pairs cut to data.max_len
    nonblank: list[bool] = field(default_factory=lambda: [False, False])  # per side: any text

    def add(self, reason: str, count: int) -> None:
        if count:
            self.skipped[reason] = self.skipped.get(reason, 0) + count


def _kept_pairs(
    src: ChunkWords, trg: ChunkWords, config: DataConfig, selection: Selection
) -> np.ndarray:
    """(sentences,) bool: the training pairs kept; the others counted by reason."""
    blank = src.blank | trg.blank
    selection.nonblank[0] |= not src.blank.all()
    selection.nonblank[1] |= not trg.blank.all()
    selection.add("empty", int(blank.sum()))
    if config.max_len is None:
        return ~blank
    too_long = np.maximum(src.lengths, trg.lengths) > config.max_len
    if config.long_pairs == "truncate":
        selection.truncated += int(too_long.sum())
        return ~blank
    selection.add("longer than max_len", int((too_long & ~blank).sum()))
    return ~blank & ~too_long


def _take(chunk: ChunkWords, kept: np.ndarray, max_len: int | None) -> ChunkWords:
    """The kept sentences of a chunk, each cut to its first `max_len` words."""
    within = positions_within(chunk.lengths)  # (tokens,)
    taken = np.repeat(kept, chunk.lengths)
    lengths = chunk.lengths[kept]
    if max_len is not None:
        taken &= within < max_len
        lengths = np.minimum(lengths, max_len)
    return ChunkWords(chunk.words, chunk.ids[taken], lengths, chunk.blank[kept])


def _check_training(selection: Selection, kept: int, total: int) -> None:
    """An error when a side has no text at all, or no training pair is left."""
    for side, name in enumerate(("source", "target")):
        if not selection.nonblank[side]:
            raise EncdecError(
                f"every {name} sentence of the training split is empty: check the training "
                f"data's {name} file (data.train_{SIDES[side]}) or column"
            )
    if not kept:
        reasons = ", ".join(f"{count} {reason}" for reason, count in selection.skipped.items())
        raise EncdecError(
            f"no training pair is left: all {total} were left out ({reasons}); give "
            "sentences on both sides, raise data.max_len or set data.long_pairs: truncate"
        )


@dataclass
class PassOne:
    dictionary: Dictionary
    splits: dict[str, SplitWords]
    selection: Selection


def tokenize_splits(
    sources: dict[str, SplitSource], config: DataConfig, folder: Path, workers: int
) -> PassOne:
    """Tokenize every split into `folder`: word numbers per side, valid and test text too."""
    sizes = {split: source.count() for split, source in sources.items()}  # checked up front
    dictionary, selection, splits = Dictionary(), Selection(), {}
    bar = progress_bar(total=sum(sizes.values()), desc="preparing", unit=" pairs", leave=False)
    with tokenizing(config, workers) as tokenize, bar:
        for split, source in sources.items():
            splits[split] = _write_split(
                split, tokenize(source.chunks(CHUNK_PAIRS)), config, folder, dictionary, selection
            )
            bar.update(sizes[split])
    train_pairs = len(splits["train"].lengths[0])
    _check_training(selection, train_pairs, sizes["train"])
    return PassOne(dictionary, splits, selection)


def _write_split(
    split: str,
    tokenized: Iterator[tuple[Chunk, tuple[ChunkWords, ChunkWords]]],
    config: DataConfig,
    folder: Path,
    dictionary: Dictionary,
    selection: Selection,
) -> SplitWords:
    """Append a split's word numbers to its two files; keep the text of valid and test."""
    paths = tuple(folder / f"{split}.{side}.words" for side in SIDES)
    lengths: tuple[list, list] = ([], [])
    with contextlib.ExitStack() as files:
        word_files = [files.enter_context(open(path, "wb")) for path in paths]
        text_files = (
            []
            if split == "train"
            else [
                files.enter_context(open(folder / f"{split}.{side}.txt", "w", encoding="utf-8"))
                for side in SIDES
            ]
        )
        for chunk, sides in tokenized:
            for side_words in sides:
                dictionary.renumber(side_words)
            if split == "train":
                kept = _kept_pairs(*sides, config, selection)
                max_len = config.max_len if config.long_pairs == "truncate" else None
                sides = tuple(_take(side_words, kept, max_len) for side_words in sides)
            for side, side_words in enumerate(sides):
                side_words.ids.tofile(word_files[side])
                lengths[side].append(side_words.lengths)
                if split == "train":
                    dictionary.count(side, side_words.ids)
            for text_file, sentences in zip(text_files, chunk):
                text_file.write("".join(sentence + "\n" for sentence in sentences))
    empty = np.zeros(0, dtype=np.int64)
    return SplitWords(paths, tuple(np.concatenate([empty, *side]) for side in lengths))
