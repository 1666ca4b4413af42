"""Property tests (hypothesis): any text translates line for line, vocabularies round-trip."""

import contextlib
import io
from collections import Counter
from unittest import mock

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from encdec.cli import main
from encdec.data import read_lines, split_lines
from encdec.translator import Translator
from encdec.vocab import EOS, PAD, SOS, SPECIALS, UNK, Vocab

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SETTINGS = settings(max_examples=30, deadline=None)
# Any unicode text but surrogates, which no UTF-8 file can hold: control characters, emoji,
# right-to-left scripts, combining marks, unicode line and paragraph separators.
ANY_TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)
# One line of a file: anything but the '\n' that ends it ('\r', '\u2028', '\x85' included).
ANY_LINE = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\n"), max_size=40)
TRICKY_LINES = ["", " ", "a\rb", "a\u2028b", "\x85", "\x0b\x0c\x1c", "🙂 مرحبا", "end\r"]


@pytest.fixture(scope="module")
def translator(demo_checkpoint) -> Translator:
    return Translator.load(demo_checkpoint)


@SETTINGS
@given(sentences=st.lists(ANY_TEXT, max_size=6))
@example(sentences=[])
@example(sentences=[*TRICKY_LINES, "several\nlines\r\nin one"])
def test_any_text_gives_one_translation_per_sentence(translator, sentences):
    translations = translator.translate(sentences)
    assert len(translations) == len(sentences)
    assert all(isinstance(text, str) and "\n" not in text for text in translations)


@SETTINGS
@given(lines=st.lists(ANY_LINE, max_size=6))
@example(lines=TRICKY_LINES)
def test_translate_command_writes_one_line_per_input_line(demo_checkpoint, tmp_path_factory, lines):
    folder = tmp_path_factory.mktemp("translate")
    source, output = folder / "source.txt", folder / "output.txt"
    source.write_bytes("".join(line + "\n" for line in lines).encode("utf-8"))
    argv = ["translate", str(demo_checkpoint), "--input", str(source), "--output", str(output)]
    assert main(argv) == 0
    assert len(read_lines(source)) == len(lines)
    assert output.read_bytes().count(b"\n") == len(read_lines(output)) == len(lines)


@SETTINGS
@given(lines=st.lists(ANY_LINE, max_size=6))
@example(lines=TRICKY_LINES)
def test_translate_from_stdin_prints_one_line_per_input_line(demo_checkpoint, lines):
    text = "".join(line + "\n" for line in lines)
    stdin = io.TextIOWrapper(io.BytesIO(text.encode("utf-8")), encoding="utf-8")  # bytes below
    stdout = io.StringIO()
    with mock.patch("sys.stdin", stdin), contextlib.redirect_stdout(stdout):
        assert main(["translate", str(demo_checkpoint)]) == 0
    assert stdout.getvalue().count("\n") == len(split_lines(stdout.getvalue())) == len(lines)


TOKEN_LISTS = st.lists(st.lists(st.text(min_size=1, max_size=5), max_size=8), max_size=8)


def reloaded(vocab: Vocab) -> Vocab:
    """The vocabulary as a checkpoint stores and restores it: its token list, saved and loaded."""
    buffer = io.BytesIO()
    torch.save({"vocab": vocab.itos}, buffer)
    buffer.seek(0)
    return Vocab(torch.load(buffer, weights_only=True)["vocab"])


@SETTINGS
@given(token_lists=TOKEN_LISTS, min_freq=st.integers(1, 3), sentence=st.lists(st.text(max_size=5)))
@example(token_lists=[["<unk>", "<pad>", "a"]], min_freq=1, sentence=["<sos>", "a", "<unk>", "b"])
def test_vocab_round_trips_through_a_checkpoint(token_lists, min_freq, sentence):
    vocab = Vocab.build(token_lists, min_freq)
    loaded = reloaded(vocab)
    assert loaded == vocab
    assert Vocab(vocab.itos) == vocab
    assert loaded.encode(sentence) == vocab.encode(sentence)
    structural = {PAD, SOS, EOS}
    expected = [t if t in vocab.stoi else UNK for t in sentence if t not in structural]
    assert loaded.decode(vocab.encode(sentence)) == expected


@SETTINGS
@given(token_lists=TOKEN_LISTS, min_freq=st.integers(1, 3))
def test_vocab_keeps_each_token_seen_min_freq_times_once_after_the_specials(token_lists, min_freq):
    counts = Counter(token for tokens in token_lists for token in tokens)
    vocab = Vocab.build(token_lists, min_freq)
    frequent = {token for token, n in counts.items() if n >= min_freq} - set(SPECIALS)
    assert vocab.itos[: len(SPECIALS)] == list(SPECIALS)
    assert sorted(vocab.itos[len(SPECIALS) :]) == sorted(frequent)
