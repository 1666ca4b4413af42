"""encdec prepare: a corpus tokenized once into id arrays that every run maps from disk.

Pass one (word_ids.py) tokenizes every split into numbered words. Pass two, here, learns the
subword models and vocabularies from the training words' counts and writes each split's ids as
two arrays per side: ids (every sentence's ids, one after another) and offsets. The folder is
built beside its destination and renamed into place last, with its manifest (settings, counts,
sizes, checksums, format version), so an interrupted prepare never leaves a finished-looking one.
"""

from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import json
import os
import secrets
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from encdec.config import DataConfig
from encdec.errors import EncdecError
from encdec.pair_ids import offsets_of, ranges
from encdec.splits import SplitSource, split_sources
from encdec.tokenize import Subwords
from encdec.vocab import SPECIALS, Vocab
from encdec.word_ids import SIDES, Dictionary, SplitWords, tokenize_splits

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
VOCABULARIES = "vocab.json"
# the data settings a prepared folder is made with: all that decides its ids
SETTINGS = (
    "src_lang",
    "trg_lang",
    "tokenizer",
    "lowercase",
    "subwords",
    "subword_vocab_size",
    "subword_model",
    "joint_vocab",
    "min_freq",
    "max_len",
    "long_pairs",
)
_SENTENCES_PER_PASS = 1 << 20  # sentences turned from words into ids at a time


def prepared_settings(config: DataConfig) -> dict:
    return {key: getattr(config, key) for key in SETTINGS}


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def prepare(
    config: DataConfig, out_dir: str | Path, workers: int | None = None, overwrite: bool = False
) -> dict:
    """Prepare the splits `config` names into `out_dir`; returns the manifest."""
    out_dir = Path(out_dir)
    if workers is not None and workers < 1:
        raise EncdecError(f"--workers must be at least 1, got {workers}")
    _check_destination(out_dir, overwrite)
    sources = split_sources(config)
    # a new name for this prepare alone; mkdir gives it the permissions the umask allows
    building = out_dir.with_name(f".{out_dir.name}.partial-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        building.mkdir()
        manifest = write_prepared(config, sources, building, workers or available_cores())
        _move_into_place(building, out_dir)
    except OSError as error:  # a full disk, most likely
        raise EncdecError(f"cannot write the prepared corpus {out_dir}: {error}") from None
    finally:
        shutil.rmtree(building, ignore_errors=True)  # gone once renamed; a failure's leftovers
    return manifest


def _check_destination(out_dir: Path, overwrite: bool) -> None:
    """Refuse a destination that exists (unless `overwrite`) or whose folder is missing."""
    if out_dir.exists() and not overwrite:
        raise EncdecError(
            f"{out_dir} exists; name a new folder with --out, or replace it with --overwrite"
        )
    if not out_dir.parent.is_dir():
        raise EncdecError(f"cannot write {out_dir}: folder {out_dir.parent} does not exist")


def _move_into_place(building: Path, out_dir: Path) -> None:
    """Rename the finished folder to `out_dir`, an old one there moved aside first."""
    old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
    if out_dir.exists():
        out_dir.rename(old)
    building.rename(out_dir)
    shutil.rmtree(old, ignore_errors=True)


def write_prepared(
    config: DataConfig, sources: dict[str, SplitSource], folder: Path, workers: int
) -> dict:
    """Both passes into `folder`, then the manifest, written last."""
    words = tokenize_splits(sources, config, folder, workers)
    subwords = _subword_models(config, words.dictionary)
    pieces = [_pieces(words.dictionary.words, model) for model in subwords]
    vocabs = _vocabularies(config, words.dictionary, pieces)
    expansions = [_Expansion.of(side_pieces, vocab) for side_pieces, vocab in zip(pieces, vocabs)]
    tokens = {}
    for split, split_words in words.splits.items():
        tokens[split] = [
            _write_side(folder, split, side, split_words, expansions[side], len(vocabs[side]))
            for side in range(len(SIDES))
        ]
    _write_json(folder / VOCABULARIES, {side: v.itos for side, v in zip(SIDES, vocabs)})
    for side, model in zip(SIDES, subwords):
        if model is not None:
            (folder / f"{side}_subwords.json").write_text(model.serialized, encoding="utf-8")
    manifest = {
        "format_version": FORMAT_VERSION,
        "encdec_version": importlib.metadata.version("encdec"),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "settings": prepared_settings(config),
        "sources": {split: source.names() for split, source in sources.items()},
        "pairs": {
            split: len(split_words.lengths[0]) for split, split_words in words.splits.items()
        },
        "tokens": {split: dict(zip(SIDES, counts)) for split, counts in tokens.items()},
        "vocab_sizes": {side: len(vocab) for side, vocab in zip(SIDES, vocabs)},
        "skipped": words.selection.skipped,
        "truncated": words.selection.truncated,
        "files": {path.name: file_record(path) for path in sorted(folder.iterdir())},
    }
    _write_json(folder / MANIFEST, manifest)
    return manifest


def _write_json(path: Path, value: object) -> None:
    with open(path, "w", encoding="utf-8") as file:
        json.dump(value, file, ensure_ascii=False, indent=1)
        file.flush()
        os.fsync(file.fileno())


def file_record(path: Path) -> dict:
    """A file's size and SHA-256, read in blocks (the page cache, not this process, holds it)."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while block := file.read(1 << 22):
            digest.update(block)
    return {"bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def _word_counts(dictionary: Dictionary, sides: tuple[int, ...]) -> dict[str, int]:
    """How often each training word occurs on the given sides, together."""
    counts = sum(dictionary.counts(side) for side in sides)
    return {dictionary.words[number]: int(counts[number]) for number in np.flatnonzero(counts)}


def _subword_models(
    config: DataConfig, dictionary: Dictionary
) -> tuple[Subwords | None, Subwords | None]:
    """Source and target subword models: none, the one data.subword_model names, or learnt
    from the training words (with data.joint_vocab, one learnt on both sides)."""
    if config.subwords == "none":
        return None, None
    if config.subword_model:
        model = Subwords.from_file(config.subword_model)
        return model, model
    learn = lambda sides: Subwords.learn(  # noqa: E731
        _word_counts(dictionary, sides), config.subwords, config.subword_vocab_size
    )
    if config.joint_vocab:
        joint = learn((0, 1))
        return joint, joint
    return learn((0,)), learn((1,))


def _pieces(words: list[str], subwords: Subwords | None) -> list[list[str]]:
    """Each dictionary word as the tokens the model reads: its subwords, or itself."""
    return subwords.split_words(words) if subwords is not None else [[word] for word in words]


def _token_counts(word_counts: np.ndarray, pieces: list[list[str]]) -> Counter:
    """How often each token occurs in training, from its words' counts."""
    counts: Counter = Counter()
    for number in np.flatnonzero(word_counts):
        for piece in pieces[number]:
            counts[piece] += int(word_counts[number])
    return counts


def _vocabularies(
    config: DataConfig, dictionary: Dictionary, pieces: list[list[list[str]]]
) -> tuple[Vocab, Vocab]:
    """Source and target vocabularies of the training pairs: with data.joint_vocab, one."""
    counts = [_token_counts(dictionary.counts(side), pieces[side]) for side in (0, 1)]
    if config.joint_vocab:  # min_freq counts a token's uses on both sides together
        joint = _vocabulary(counts[0] + counts[1], config.min_freq, "joint")
        return joint, joint
    return (
        _vocabulary(counts[0], config.min_freq, "source"),
        _vocabulary(counts[1], config.min_freq, "target"),
    )


def _vocabulary(counts: Counter, min_freq: int, side: str) -> Vocab:
    """The `side` vocabulary; an error if every token would be <unk>."""
    vocab = Vocab.from_counts(counts, min_freq)
    if len(vocab) == len(SPECIALS):
        most = max(counts.values(), default=0)
        raise EncdecError(
            f"the {side} vocabulary would hold only specials, so every word would be <unk>: no "
            f"token it is built from occurs data.min_freq={min_freq} times in the training split "
            f"(the most frequent occurs {most}); lower data.min_freq or add training data"
        )
    return vocab


@dataclass(frozen=True)
class _Expansion:
    """Each dictionary word's token ids: word w is ids[starts[w] : starts[w] + lengths[w]]."""

    starts: np.ndarray  # (words,) int64
    lengths: np.ndarray  # (words,) int64
    ids: np.ndarray  # (tokens,) int64

    @classmethod
    def of(cls, pieces: list[list[str]], vocab: Vocab) -> _Expansion:
        lengths = np.fromiter(map(len, pieces), dtype=np.int64, count=len(pieces))
        ids = np.fromiter(
            (vocab.stoi.get(piece, vocab.unk_idx) for word in pieces for piece in word),
            dtype=np.int64,
            count=int(lengths.sum()),
        )
        return cls(offsets_of(lengths)[:-1], lengths, ids)

    def expand(self, words: np.ndarray) -> np.ndarray:
        """(words,) word numbers -> (tokens,) their token ids, one word after another."""
        return self.ids[ranges(self.starts[words], self.lengths[words])]


def _write_side(
    folder: Path,
    split: str,
    side: int,
    split_words: SplitWords,
    expansion: _Expansion,
    vocab_size: int,
) -> int:
    """{split}.{side}.ids.npy and .offsets.npy from the words file, which is then removed."""
    words_path = split_words.paths[side]
    word_lengths = split_words.lengths[side]  # (N,) words per sentence
    word_offsets = offsets_of(word_lengths)
    words = (  # mapped: a pass reads its sentences' words only
        np.memmap(words_path, dtype=np.int32, mode="r")
        if word_offsets[-1]
        else np.zeros(0, np.int32)
    )
    passes = range(0, len(word_lengths), _SENTENCES_PER_PASS)
    lengths = np.concatenate(
        [np.zeros(0, np.int64)]
        + [_token_lengths(words, word_offsets, start, expansion) for start in passes]
    )
    offsets = offsets_of(lengths)
    name = f"{split}.{SIDES[side]}"
    np.save(folder / f"{name}.offsets.npy", offsets)
    dtype = np.uint16 if vocab_size <= 1 << 16 else np.int32
    ids = np.lib.format.open_memmap(folder / f"{name}.ids.npy", "w+", dtype, (int(offsets[-1]),))
    for start in passes:
        end = min(start + _SENTENCES_PER_PASS, len(word_lengths))
        sentence_words = words[word_offsets[start] : word_offsets[end]]
        ids[offsets[start] : offsets[end]] = expansion.expand(sentence_words)
    ids.flush()
    del ids, words
    words_path.unlink()
    return int(offsets[-1])


def _token_lengths(
    words: np.ndarray, word_offsets: np.ndarray, start: int, expansion: _Expansion
) -> np.ndarray:
    """Tokens per sentence for sentences start ... start + _SENTENCES_PER_PASS."""
    bounds = word_offsets[start : start + _SENTENCES_PER_PASS + 1]
    per_word = expansion.lengths[words[bounds[0] : bounds[-1]]]
    running = offsets_of(per_word)
    return running[bounds[1:] - bounds[0]] - running[bounds[:-1] - bounds[0]]
