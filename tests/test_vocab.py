"""Tests for encdec.vocab, and the Multi30k vocabulary sizes the textbook publishes."""

import random
from collections import Counter

import pytest

from encdec.config import DataConfig
from encdec.corpus import build_corpus, read_splits
from encdec.errors import EncdecError
from encdec.tokenize import Tokenizer
from encdec.vocab import EOS, PAD, SOS, SPECIALS, UNK, Vocab

SENTENCES = [
    ["a", "dog", "runs"],
    ["a", "cat", "runs"],
    ["a", "dog", "sleeps"],
    ["the", "bird"],
]


def test_specials_come_first_in_order():
    vocab = Vocab.build(SENTENCES)
    assert vocab.itos[:4] == [UNK, PAD, SOS, EOS]
    assert (vocab.stoi[UNK], vocab.stoi[PAD], vocab.stoi[SOS], vocab.stoi[EOS]) == (0, 1, 2, 3)
    assert (vocab.unk_idx, vocab.pad_idx, vocab.sos_idx, vocab.eos_idx) == (0, 1, 2, 3)


def test_min_freq_keeps_tokens_seen_often_enough():
    vocab = Vocab.build(SENTENCES, min_freq=2)
    assert set(vocab.itos[4:]) == {"a", "dog", "runs"}


def test_min_freq_one_keeps_every_token():
    vocab = Vocab.build(SENTENCES, min_freq=1)
    assert set(vocab.itos[4:]) == {"a", "dog", "runs", "cat", "sleeps", "the", "bird"}


def test_min_freq_drops_everything_below_it():
    vocab = Vocab.build(SENTENCES, min_freq=4)
    assert vocab.itos == list(SPECIALS)


def test_rare_words_become_unk():
    vocab = Vocab.build(SENTENCES, min_freq=2)
    assert vocab.encode(["a", "cat", "runs"]) == [vocab.stoi["a"], 0, vocab.stoi["runs"]]


def test_unseen_words_become_unk():
    vocab = Vocab.build(SENTENCES, min_freq=1)
    assert vocab.encode(["zebra", "dog"]) == [vocab.unk_idx, vocab.stoi["dog"]]


def test_specials_in_text_are_not_added_twice():
    vocab = Vocab.build([[PAD, PAD, "x", "x", EOS, EOS]], min_freq=1)
    assert vocab.itos == [*SPECIALS, "x"]


def test_most_frequent_tokens_come_first():
    vocab = Vocab.build(SENTENCES, min_freq=1)
    # a:3; dog, runs: 2; then the singletons; ties broken alphabetically
    assert vocab.itos[4:] == ["a", "dog", "runs", "bird", "cat", "sleeps", "the"]


def test_order_does_not_depend_on_input_order():
    shuffled = [list(tokens) for tokens in SENTENCES]
    rng = random.Random(0)
    for tokens in shuffled:
        rng.shuffle(tokens)
    rng.shuffle(shuffled)
    assert Vocab.build(shuffled, min_freq=1).itos == Vocab.build(SENTENCES, min_freq=1).itos


def test_decode_drops_structural_tokens_but_keeps_unk():
    vocab = Vocab.build(SENTENCES, min_freq=1)
    ids = [vocab.sos_idx, vocab.stoi["a"], vocab.unk_idx, vocab.eos_idx, vocab.pad_idx]
    assert vocab.decode(ids) == ["a", UNK]


def test_encode_then_decode_round_trips_known_tokens():
    vocab = Vocab.build(SENTENCES, min_freq=1)
    assert vocab.decode(vocab.encode(["the", "cat", "sleeps"])) == ["the", "cat", "sleeps"]


def test_rebuilding_from_itos_gives_an_equal_vocab():
    vocab = Vocab.build(SENTENCES, min_freq=1)
    rebuilt = Vocab(vocab.itos)
    assert rebuilt == vocab
    assert rebuilt.stoi == vocab.stoi


def test_vocabs_with_different_tokens_are_unequal():
    assert Vocab.build(SENTENCES, min_freq=1) != Vocab.build(SENTENCES, min_freq=2)
    assert Vocab(SPECIALS) != list(SPECIALS)


def test_duplicate_token_is_an_error():
    with pytest.raises(EncdecError, match="twice"):
        Vocab([*SPECIALS, "dog", "cat", "dog"])


def test_missing_specials_is_an_error():
    with pytest.raises(EncdecError, match="specials"):
        Vocab(["dog", "cat"])


def test_specials_in_wrong_order_is_an_error():
    with pytest.raises(EncdecError, match="specials"):
        Vocab([PAD, UNK, SOS, EOS, "dog"])


@pytest.fixture(scope="module")
def multi30k_corpus(multi30k_dir):
    return build_corpus(DataConfig(data_dir=str(multi30k_dir)))


def test_multi30k_vocab_sizes_match_the_textbook(multi30k_corpus):
    assert len(multi30k_corpus.src_vocab) == 7853
    assert len(multi30k_corpus.trg_vocab) == 5893


@pytest.mark.parametrize("side, lang", [(0, "de"), (1, "en")])
def test_multi30k_vocab_is_built_from_training_only(multi30k_corpus, multi30k_dir, side, lang):
    vocab = (multi30k_corpus.src_vocab, multi30k_corpus.trg_vocab)[side]
    pairs = multi30k_corpus.pairs
    test_counts = Counter(
        token
        for tokens in Tokenizer("spacy", lang).tokenize_many(pair[side] for pair in pairs["test"])
        for token in tokens
    )
    train_pairs = read_splits(DataConfig(data_dir=str(multi30k_dir)))["train"]
    train_text = " ".join(pair[side] for pair in train_pairs).lower()
    # frequent enough in test alone that a vocab built from all splits would have kept it
    test_only = [
        token for token, count in test_counts.items() if count >= 2 and token not in train_text
    ]
    assert test_only
    assert not any(token in vocab.stoi for token in test_only)


def test_subword_corpus_learns_pieces_from_training_split_only(tmp_path):
    train = ["the dog runs", "the dogs run fast", "a dog is running", "running dogs"] * 3
    test = ["zebras gallop"]  # letters z, b, g, p never occur in training
    for split, lines in (("train", train), ("valid", train[:2]), ("test", test)):
        (tmp_path / f"{split}.tsv").write_text(
            "".join(f"{line}\t{line}\n" for line in lines), encoding="utf-8"
        )
    config = DataConfig(
        dataset="files",
        src_lang="en",
        trg_lang="de",
        **{f"{split}_tsv": str(tmp_path / f"{split}.tsv") for split in ("train", "valid", "test")},
        subwords="bpe",
        subword_vocab_size=40,
        min_freq=1,
    )
    corpus = build_corpus(config)
    assert not {"z", "b", "g", "p"} & {piece.strip("\u2581") for piece in corpus.src_vocab.itos}
    src_ids, _ = corpus.ids["train"].pair(0)
    pieces = corpus.src_vocab.decode(src_ids)
    assert corpus.src_tokenizer.to_words(pieces[::-1]) == ["the", "dog", "runs"]  # reversed


def tsv_config(tmp_path, lines: list[str], **data) -> DataConfig:
    """A files config whose three splits are one TSV of these 'source<TAB>target' lines."""
    path = tmp_path / "pairs.tsv"
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    splits = {f"{split}_tsv": str(path) for split in ("train", "valid", "test")}
    return DataConfig(dataset="files", src_lang="en", trg_lang="es", **splits, **data)


@pytest.mark.parametrize(
    ("lines", "side"),
    [
        (["a dog\tun perro", "the cat\tun gato", "my bird\tun pájaro"], "source"),
        (["a dog\tun perro", "a cat\tel gato", "a bird\tmi pájaro"], "target"),
    ],
)
def test_min_freq_above_every_count_names_the_side_and_min_freq(tmp_path, lines, side):
    # the other side has one word seen 3 times; no word on `side` is seen more than once
    with pytest.raises(
        EncdecError, match=rf"{side} vocabulary.*min_freq=3.*most frequent occurs 1\); lower"
    ):
        build_corpus(tsv_config(tmp_path, lines, min_freq=3))


# "the" only in sources, "el" only in targets, "radio" once on each side, the rest once in all
JOINT_LINES = ["the dog\tel perro", "the cat\tel gato", "radio on\tla casa", "a house\tuna radio"]


def test_joint_vocab_holds_both_sides_words_counting_them_together(tmp_path):
    separate = build_corpus(tsv_config(tmp_path, JOINT_LINES, min_freq=2))
    assert "radio" not in separate.src_vocab.stoi and "radio" not in separate.trg_vocab.stoi
    joint = build_corpus(tsv_config(tmp_path, JOINT_LINES, min_freq=2, joint_vocab=True))
    assert joint.src_vocab == joint.trg_vocab
    assert joint.src_vocab.itos[len(SPECIALS) :] == ["el", "radio", "the"]
    _, trg_ids = joint.ids["train"].pair(3)
    assert joint.trg_vocab.decode(trg_ids) == [UNK, "radio"]  # "una radio"


def test_joint_vocab_of_only_specials_is_named_joint(tmp_path):
    lines = ["a dog\tun perro", "the cat\tel gato"]
    with pytest.raises(EncdecError, match=r"joint vocabulary.*min_freq=2.*most frequent occurs 1"):
        build_corpus(tsv_config(tmp_path, lines, min_freq=2, joint_vocab=True))


def test_joint_subwords_split_a_word_the_same_on_either_side(tmp_path):
    lines = ["walking dogs\tperros caminando", "the dog walks\tel perro camina"] * 3
    config = tsv_config(
        tmp_path, lines, min_freq=1, subwords="bpe", subword_vocab_size=40, joint_vocab=True
    )
    corpus = build_corpus(config)
    words = ["walking", "caminando", "perros", "dogs"]  # source words and target words
    src_pieces = corpus.src_tokenizer.tokenize_many([" ".join(words)])
    assert src_pieces == corpus.trg_tokenizer.tokenize_many([" ".join(words)])
    assert corpus.src_tokenizer.to_words(src_pieces[0]) == words
    assert all(piece in corpus.src_vocab.stoi for piece in src_pieces[0])  # no <unk> piece
    assert corpus.src_vocab == corpus.trg_vocab


@pytest.mark.parametrize("side", ["source", "target"])
def test_empty_training_side_names_the_side(tmp_path, side):
    lines = ["\tun perro", " \tun gato"] if side == "source" else ["a dog\t", "a cat\t  "]
    with pytest.raises(EncdecError, match=f"every {side} sentence of the training split is empty"):
        build_corpus(tsv_config(tmp_path, lines, min_freq=1))


@pytest.mark.parametrize("missing", ["valid", "test"])
def test_files_dataset_without_a_split_names_the_keys_to_set(tmp_path, missing):
    names = {}
    for split in ("train", "valid", "test"):
        if split != missing:
            (tmp_path / f"{split}.tsv").write_text("a cat\teine katze\n", encoding="utf-8")
            names[f"{split}_tsv"] = str(tmp_path / f"{split}.tsv")
    config = DataConfig(dataset="files", src_lang="en", trg_lang="de", min_freq=1, **names)
    with pytest.raises(EncdecError, match=f"data.{missing}_src") as error:
        build_corpus(config)
    assert f"data.{missing}_tsv" in str(error.value)
