"""The corpus a data config describes: the splits as ids, their vocabularies and tokenizers.

There is one way from text to ids, `encdec prepare`'s: without data.prepared the splits are
prepared into a scratch folder and read back into memory, so a prepared folder and the text it
was made from give the same vocabularies, the same ids and the same training run.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from encdec import data
from encdec.config import DataConfig
from encdec.pair_ids import PairIds
from encdec.prepare import write_prepared
from encdec.prepared import PreparedCorpus, load_prepared, read_prepared
from encdec.splits import split_sources
from encdec.tokenize import Tokenizer, tokenizer_pair
from encdec.vocab import Vocab


@dataclass
class Corpus:
    pairs: dict[str, list[data.Pair]]  # valid and test as text, which BLEU is scored on
    ids: dict[str, PairIds]  # every split as ids; train without the pairs left out
    src_vocab: Vocab
    trg_vocab: Vocab
    skipped: dict[str, int]  # training pairs left out, by reason
    src_tokenizer: Tokenizer
    trg_tokenizer: Tokenizer
    truncated: int = 0  # training pairs cut to data.max_len tokens (data.long_pairs: truncate)


def check_data_config(config: DataConfig) -> None:
    """The language codes a data config names, checked before any data is read or run made."""
    if config.dataset == "multi30k" and config.prepared is None:
        data.check_multi30k_languages(config.src_lang, config.trg_lang)
    if config.tokenizer == "spacy":
        for tokenizer in tokenizer_pair(config):
            tokenizer.words_many([])  # loads spaCy's rules: an unknown language fails here


def read_splits(config: DataConfig) -> dict[str, list[data.Pair]]:
    """Raw sentence pairs per split: Multi30k, the embedded toy phrases, or the user's files."""
    return {split: source.read() for split, source in split_sources(config).items()}


def build_corpus(config: DataConfig) -> Corpus:
    """The splits as ids with their vocabularies, from data.prepared or prepared here."""
    if config.prepared is not None:
        return _corpus(config, load_prepared(config.prepared, config))
    with tempfile.TemporaryDirectory(prefix="encdec-corpus-") as scratch:
        manifest = write_prepared(config, split_sources(config), Path(scratch), workers=1)
        return _corpus(config, read_prepared(Path(scratch), manifest, config, in_memory=True))


def _corpus(config: DataConfig, prepared: PreparedCorpus) -> Corpus:
    src_tokenizer, trg_tokenizer = tokenizer_pair(config, prepared.subwords)
    return Corpus(
        prepared.texts,
        prepared.ids,
        *prepared.vocabs,
        prepared.manifest["skipped"],
        src_tokenizer,
        trg_tokenizer,
        prepared.manifest["truncated"],
    )
