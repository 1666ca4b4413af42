"""The data pipeline a config describes: text splits -> tokens -> vocabularies -> id examples."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from encdec import data
from encdec.batching import Example, numericalize
from encdec.config import DataConfig
from encdec.errors import EncdecError
from encdec.tokenize import Subwords, Tokenizer, tokenizer_pair
from encdec.vocab import SPECIALS, Vocab

TokenPair = tuple[list[str], list[str]]  # (source tokens, target tokens)


@dataclass
class Corpus:
    pairs: dict[str, list[data.Pair]]  # raw text per split
    examples: dict[str, list[Example]]  # ids per split, same order as `pairs`
    src_vocab: Vocab
    trg_vocab: Vocab
    skipped: dict[str, int]  # training pairs left out, by reason
    src_tokenizer: Tokenizer
    trg_tokenizer: Tokenizer
    truncated: int = 0  # training pairs cut to data.max_len tokens (data.long_pairs: truncate)


def check_data_config(config: DataConfig) -> None:
    """The language codes a data config names, checked before any data is read or run made."""
    if config.dataset == "multi30k":
        data.check_multi30k_languages(config.src_lang, config.trg_lang)
    if config.tokenizer == "spacy":
        for tokenizer in tokenizer_pair(config):
            tokenizer.words_many([])  # loads spaCy's rules: an unknown language fails here


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
        else:  # every split is needed: valid picks best.pt, test scores it
            raise EncdecError(
                f"data.dataset is 'files' but no {split} data is named: set data.{split}_src "
                f"and data.{split}_trg, or data.{split}_tsv"
            )
    return splits


def _truncate(token_pairs: list[TokenPair], max_len: int | None) -> tuple[list[TokenPair], int]:
    """Each side cut to its first `max_len` tokens, and how many pairs were cut."""
    if max_len is None:
        return token_pairs, 0
    cut = sum(max(len(src), len(trg)) > max_len for src, trg in token_pairs)
    return [(src[:max_len], trg[:max_len]) for src, trg in token_pairs], cut


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


def _check_no_side_is_empty(tokens: list[TokenPair]) -> None:
    """Name the side when every training sentence on it is empty or blank."""
    for index, side in enumerate(("source", "target")):
        if not any(token.strip() for pair in tokens for token in pair[index]):
            raise EncdecError(
                f"every {side} sentence of the training split is empty: check the training "
                f"data's {side} file (data.train_{'src' if index == 0 else 'trg'}) or column"
            )


def _select_training(
    pairs: list[data.Pair], tokens: list[TokenPair], config: DataConfig
) -> tuple[list[data.Pair], list[TokenPair], dict[str, int], int]:
    """The training pairs kept, their tokens, the pairs left out by reason and the count cut."""
    _check_no_side_is_empty(tokens)
    truncated = 0
    if config.long_pairs == "truncate":
        tokens, truncated = _truncate(tokens, config.max_len)
    skipped: dict[str, int] = {}
    kept = [
        i for i, (s, t) in enumerate(tokens) if _keep_for_training(s, t, config.max_len, skipped)
    ]
    if not kept:
        reasons = ", ".join(f"{count} {reason}" for reason, count in skipped.items())
        raise EncdecError(
            f"no training pair is left: all {len(tokens)} were left out ({reasons}); give "
            "sentences on both sides, raise data.max_len or set data.long_pairs: truncate"
        )
    return [pairs[i] for i in kept], [tokens[i] for i in kept], skipped, truncated


def _sides(token_pairs: list[TokenPair]) -> tuple[list[list[str]], list[list[str]]]:
    """The source token lists and the target token lists, each in the pairs' order."""
    return [src for src, _ in token_pairs], [trg for _, trg in token_pairs]


def _build_vocab(token_lists: list[list[str]], min_freq: int, side: str) -> Vocab:
    """The `side` vocabulary (source, target or joint); an error if every token would be <unk>."""
    vocab = Vocab.build(token_lists, min_freq)
    if len(vocab) == len(SPECIALS):
        counts = Counter(token for tokens in token_lists for token in tokens)
        most = max(counts.values(), default=0)
        raise EncdecError(
            f"the {side} vocabulary would hold only specials, so every word would be <unk>: no "
            f"token it is built from occurs data.min_freq={min_freq} times in the training split "
            f"(the most frequent occurs {most}); lower data.min_freq or add training data"
        )
    return vocab


def _build_vocabs(train_tokens: list[TokenPair], config: DataConfig) -> tuple[Vocab, Vocab]:
    """Source and target vocabularies of the training split: with data.joint_vocab, one for both."""
    sources, targets = _sides(train_tokens)
    if config.joint_vocab:  # min_freq counts a token's uses on both sides together
        joint = _build_vocab(sources + targets, config.min_freq, "joint")
        return joint, joint
    return (
        _build_vocab(sources, config.min_freq, "source"),
        _build_vocab(targets, config.min_freq, "target"),
    )


def build_corpus(config: DataConfig) -> Corpus:
    """Read and tokenize every split, build the vocabularies from the training split only."""
    pairs = read_splits(config)
    src_words, trg_words = tokenizer_pair(config)
    tokens = {
        split: list(
            zip(
                src_words.words_many(s for s, _ in split_pairs),
                trg_words.words_many(t for _, t in split_pairs),
            )
        )
        for split, split_pairs in pairs.items()
    }
    pairs["train"], tokens["train"], skipped, truncated = _select_training(
        pairs["train"], tokens["train"], config
    )
    src_tokenizer, trg_tokenizer = tokenizer_pair(config, _learn_subwords(config, tokens["train"]))
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
    src_vocab, trg_vocab = _build_vocabs(tokens["train"], config)
    examples = {
        split: [
            numericalize(s, t, src_vocab, trg_vocab, config.reverse_src, config.reverse_trg)
            for s, t in token_pairs
        ]
        for split, token_pairs in tokens.items()
    }
    return Corpus(
        pairs, examples, src_vocab, trg_vocab, skipped, src_tokenizer, trg_tokenizer, truncated
    )


def _learn_subwords(
    config: DataConfig, train_words: list[TokenPair]
) -> tuple[Subwords | None, Subwords | None]:
    """Source and target subword models learnt on the training split (None, None without);
    with data.joint_vocab, one model learnt on both sides serves both."""
    if config.subwords == "none":
        return None, None
    sources, targets = _sides(train_words)
    if config.joint_vocab:
        joint = Subwords.learn(sources + targets, config.subwords, config.subword_vocab_size)
        return joint, joint
    return tuple(
        Subwords.learn(words, config.subwords, config.subword_vocab_size)
        for words in (sources, targets)
    )
