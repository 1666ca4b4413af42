"""The data pipeline a config describes: text splits -> tokens -> vocabularies -> id examples."""

from __future__ import annotations

from dataclasses import dataclass

from encdec import data
from encdec.batching import Example, numericalize
from encdec.config import DataConfig
from encdec.errors import EncdecError
from encdec.tokenize import Subwords, Tokenizer
from encdec.vocab import Vocab


@dataclass
class Corpus:
    pairs: dict[str, list[data.Pair]]  # raw text per split
    examples: dict[str, list[Example]]  # ids per split, same order as `pairs`
    src_vocab: Vocab
    trg_vocab: Vocab
    skipped: dict[str, int]  # training pairs left out, by reason
    src_tokenizer: Tokenizer
    trg_tokenizer: Tokenizer


def tokenizers(
    config: DataConfig, subwords: tuple[Subwords | None, Subwords | None] = (None, None)
) -> tuple[Tokenizer, Tokenizer]:
    """The source and target tokenizers a data config asks for, with learnt subwords if any."""
    return (
        Tokenizer(config.tokenizer, config.src_lang, config.lowercase, subwords[0]),
        Tokenizer(config.tokenizer, config.trg_lang, config.lowercase, subwords[1]),
    )


def read_splits(config: DataConfig) -> dict[str, list[data.Pair]]:
    """Raw sentence pairs per split: Multi30k, the embedded toy phrases, or the user's files."""
    if config.dataset == "toy":
        return data.toy_phrases()
    if config.dataset == "multi30k":
        return data.load_multi30k(config.src_lang, config.trg_lang, data_dir=config.data_dir)
    splits = {}
    for split in data.SPLITS:
        tsv = getattr(config, f"{split}_tsv")
        src, trg = getattr(config, f"{split}_src"), getattr(config, f"{split}_trg")
        if tsv:
            splits[split] = data.read_tsv(tsv)
        elif src and trg:
            splits[split] = data.read_parallel(src, trg)
        elif split == "train":
            raise EncdecError(
                "data.dataset is 'files' but no training data is named: set data.train_src and "
                "data.train_trg, or data.train_tsv"
            )
    return splits


def _keep_for_training(
    src: list[str], trg: list[str], max_len: int | None, skipped: dict[str, int]
) -> bool:
    if not any(t.strip() for t in src) or not any(t.strip() for t in trg):
        skipped["empty"] = skipped.get("empty", 0) + 1
        return False
    if max_len is not None and max(len(src), len(trg)) > max_len:
        skipped["longer than max_len"] = skipped.get("longer than max_len", 0) + 1
        return False
    return True


def build_corpus(config: DataConfig) -> Corpus:
    """Read and tokenize every split, build the vocabularies from the training split only."""
    pairs = read_splits(config)
    src_words, trg_words = tokenizers(config)
    tokens = {
        split: list(
            zip(
                src_words.words_many(s for s, _ in split_pairs),
                trg_words.words_many(t for _, t in split_pairs),
            )
        )
        for split, split_pairs in pairs.items()
    }
    skipped: dict[str, int] = {}
    kept = [
        i
        for i, (s, t) in enumerate(tokens["train"])
        if _keep_for_training(s, t, config.max_len, skipped)
    ]
    if not kept:
        raise EncdecError("no training pair is left after dropping empty and over-long ones")
    pairs["train"] = [pairs["train"][i] for i in kept]
    tokens["train"] = [tokens["train"][i] for i in kept]
    src_tokenizer, trg_tokenizer = tokenizers(config, _learn_subwords(config, tokens["train"]))
    if config.subwords != "none":
        tokens = {
            split: list(
                zip(
                    src_tokenizer.subwords.split([s for s, _ in token_pairs]),
                    trg_tokenizer.subwords.split([t for _, t in token_pairs]),
                )
            )
            for split, token_pairs in tokens.items()
        }
    src_vocab = Vocab.build((s for s, _ in tokens["train"]), config.min_freq)
    trg_vocab = Vocab.build((t for _, t in tokens["train"]), config.min_freq)
    examples = {
        split: [
            numericalize(s, t, src_vocab, trg_vocab, config.reverse_src) for s, t in token_pairs
        ]
        for split, token_pairs in tokens.items()
    }
    return Corpus(pairs, examples, src_vocab, trg_vocab, skipped, src_tokenizer, trg_tokenizer)


def _learn_subwords(
    config: DataConfig, train_words: list[tuple[list[str], list[str]]]
) -> tuple[Subwords | None, Subwords | None]:
    """Source and target subword models learnt on the training split (None, None without)."""
    if config.subwords == "none":
        return None, None
    return tuple(
        Subwords.learn(
            (pair[side] for pair in train_words), config.subwords, config.subword_vocab_size
        )
        for side in (0, 1)
    )
