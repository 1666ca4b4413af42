"""Tests for encdec.data and encdec.corpus: line reading, parallel and TSV files, Multi30k, toy
phrases, and the training split's filters (empty pairs, data.max_len, data.long_pairs)."""

import gzip
import hashlib
import http.server
import io
import re
import threading
import urllib.request
from pathlib import Path

import pytest

from encdec.config import DataConfig, from_dict
from encdec.corpus import build_corpus
from encdec.data import (
    MULTI30K_LANGS,
    MULTI30K_SHA256,
    SPLITS,
    default_cache_dir,
    download_file,
    download_multi30k,
    load_multi30k,
    multi30k_file,
    read_lines,
    read_parallel,
    read_tsv,
    split_lines,
    toy_phrases,
)
from encdec.errors import EncdecError
from encdec.training import train

# Port 9 (discard) refuses connections, so a test that wrongly downloads fails fast, offline.
NO_NETWORK_URL = "http://127.0.0.1:9/"


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def files_in(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir()) if folder.exists() else []


@pytest.fixture
def serve(monkeypatch):
    """Start HTTP servers on 127.0.0.1; serve(folder) returns (base URL, paths requested)."""
    # A proxy configured in the environment must not intercept requests to the local server.
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    servers = []

    def start(folder: Path) -> tuple[str, list[str]]:
        requested: list[str] = []

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(folder), **kwargs)

            def do_GET(self):
                requested.append(self.path)
                super().do_GET()

            def log_message(self, format, *args):
                pass  # keep pytest output free of access-log lines

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        # A short poll interval keeps shutdown, and so each test's teardown, quick.
        threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/", requested

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def cache_dir(tmp_path, monkeypatch) -> Path:
    """An empty cache with no local Multi30k copy to fall back on."""
    monkeypatch.delenv("ENCDEC_DATA", raising=False)
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def de_en(multi30k_dir, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return load_multi30k("de", "en", multi30k_dir, cache, base_url=NO_NETWORK_URL)


# --- reading lines -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"a\nb\n", ["a", "b"]),
        (b"a\r\nb", ["a", "b"]),
        (b" x \n", [" x "]),
        (b"a\n\nb\n", ["a", "", "b"]),
        (b"a\rb\n", ["a\rb"]),
        (b"", []),
    ],
)
def test_read_lines_removes_only_line_endings(tmp_path, content, expected):
    path = tmp_path / "text.txt"
    path.write_bytes(content)
    assert read_lines(path) == expected


def test_split_lines_splits_at_newlines_only():
    text = "a\u2028b\rc\x85d\x0be\r\nf\n"
    assert split_lines(text) == ["a\u2028b\rc\x85d\x0be", "f"]


def test_gzipped_file_reads_like_plain_file(tmp_path):
    content = "Ein Hund läuft.\nA dog runs.\n".encode()
    (tmp_path / "plain.txt").write_bytes(content)
    (tmp_path / "packed.txt.gz").write_bytes(gzip.compress(content))
    assert read_lines(tmp_path / "packed.txt.gz") == read_lines(tmp_path / "plain.txt")
    assert read_lines(tmp_path / "plain.txt") == ["Ein Hund läuft.", "A dog runs."]


def test_invalid_utf8_error_names_file_and_line(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("fine\nalso fine\nnaïve\n".encode("latin-1"))
    with pytest.raises(EncdecError, match=r"latin1\.txt:3: not valid UTF-8"):
        read_lines(path)


def test_missing_file_error_names_path(tmp_path):
    with pytest.raises(EncdecError, match="nowhere.txt"):
        read_lines(tmp_path / "nowhere.txt")


def test_a_folder_where_a_file_is_asked_for_is_an_error_naming_it(tmp_path):
    with pytest.raises(EncdecError, match=f"{re.escape(str(tmp_path))} is a folder; name a file"):
        read_lines(tmp_path)


def test_corrupt_gzip_file_raises_encdec_error(tmp_path):
    path = tmp_path / "broken.gz"
    path.write_bytes(gzip.compress(b"some text\n" * 100)[:30])
    with pytest.raises(EncdecError, match="broken.gz"):
        read_lines(path)


# --- parallel and TSV files ----------------------------------------------------------------------


def test_read_parallel_pairs_lines_in_order(tmp_path):
    (tmp_path / "src.txt").write_text("eins\nzwei\n", encoding="utf-8")
    (tmp_path / "trg.txt").write_text("one\ntwo\n", encoding="utf-8")
    pairs = read_parallel(tmp_path / "src.txt", tmp_path / "trg.txt")
    assert pairs == [("eins", "one"), ("zwei", "two")]


def test_read_parallel_mismatch_names_both_files_and_counts(tmp_path):
    (tmp_path / "src.txt").write_text("eins\nzwei\ndrei\n", encoding="utf-8")
    (tmp_path / "trg.txt").write_text("one\ntwo\n", encoding="utf-8")
    with pytest.raises(EncdecError) as error:
        read_parallel(tmp_path / "src.txt", tmp_path / "trg.txt")
    message = str(error.value)
    assert "src.txt has 3 lines" in message
    assert "trg.txt has 2" in message


def test_read_tsv_splits_at_the_tab(tmp_path):
    path = tmp_path / "pairs.tsv"
    path.write_text("hello\thola\nlet's go!\t¡vamos!\n", encoding="utf-8")
    assert read_tsv(path) == [("hello", "hola"), ("let's go!", "¡vamos!")]


@pytest.mark.parametrize("bad_line", ["no tab here", "one\ttwo\tthree"])
def test_read_tsv_line_without_exactly_one_tab_names_file_and_line(tmp_path, bad_line):
    path = tmp_path / "pairs.tsv"
    path.write_text(f"hello\thola\n{bad_line}\n", encoding="utf-8")
    with pytest.raises(EncdecError, match=r"pairs\.tsv:2: .*exactly one tab"):
        read_tsv(path)


# --- Multi30k from the shared copy ---------------------------------------------------------------


def test_multi30k_de_en_has_standard_split_sizes(de_en):
    assert {split: len(pairs) for split, pairs in de_en.items()} == {
        "train": 29000,
        "valid": 1014,
        "test": 1000,
    }


def test_multi30k_first_training_pair_is_aligned(de_en):
    assert de_en["train"][0] == (
        "Zwei junge weiße Männer sind im Freien in der Nähe vieler Büsche.",
        "Two young, White males are outside near many bushes.",
    )


def test_multi30k_pairs_any_two_languages(multi30k_dir, tmp_path):
    fr_cs = load_multi30k("fr", "cs", multi30k_dir, tmp_path, base_url=NO_NETWORK_URL)
    assert [len(fr_cs[split]) for split in SPLITS] == [29000, 1014, 1000]
    assert fr_cs["test"][0] == (
        "Un homme avec un chapeau orange regardant quelque chose.",
        "Muž v oranžovém klobouku na něco zírá.",
    )


def test_multi30k_data_dir_falls_back_to_encdec_data(multi30k_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("ENCDEC_DATA", str(multi30k_dir))
    path = multi30k_file("test", "de", cache_dir=tmp_path, base_url=NO_NETWORK_URL)
    assert path == multi30k_dir / "test_2016_flickr.de.gz"


def test_embedded_checksums_match_shared_sha256sums(multi30k_dir):
    lines = (multi30k_dir / "SHA256SUMS").read_text(encoding="utf-8").split("\n")
    listed = dict(reversed(line.split()) for line in lines if line.strip())
    assert MULTI30K_SHA256 == listed


def test_unknown_language_error_lists_valid_ones(tmp_path):
    with pytest.raises(EncdecError, match="de, en, fr, cs"):
        multi30k_file("train", "es", cache_dir=tmp_path, base_url=NO_NETWORK_URL)


def test_unknown_split_error_lists_valid_ones(tmp_path):
    with pytest.raises(EncdecError, match="train, valid, test"):
        multi30k_file("dev", "de", cache_dir=tmp_path, base_url=NO_NETWORK_URL)


def test_same_source_and_target_language_is_rejected(tmp_path):
    with pytest.raises(EncdecError, match="'de'"):
        load_multi30k("de", "de", cache_dir=tmp_path, base_url=NO_NETWORK_URL)


def test_default_cache_dir_honours_encdec_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ENCDEC_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path
    monkeypatch.delenv("ENCDEC_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "encdec"


# --- downloading from a local server -------------------------------------------------------------


def test_download_multi30k_fetches_every_file_with_its_checksum(serve, cache_dir, multi30k_dir):
    base_url, _ = serve(multi30k_dir)
    paths = download_multi30k(MULTI30K_LANGS, cache_dir, base_url)
    assert sorted(path.name for path in paths) == sorted(MULTI30K_SHA256)
    assert all(sha256_of(path) == MULTI30K_SHA256[path.name] for path in paths)
    assert files_in(cache_dir) == sorted(MULTI30K_SHA256)  # no temp files left over


def test_load_multi30k_downloads_into_cache_when_no_local_copy(serve, cache_dir, multi30k_dir):
    base_url, _ = serve(multi30k_dir)
    de_en = load_multi30k("de", "en", cache_dir=cache_dir, base_url=base_url)
    assert len(de_en["valid"]) == 1014
    assert len(files_in(cache_dir)) == 6


def test_corrupt_download_is_rejected_and_leaves_nothing(serve, cache_dir, multi30k_dir, tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    corrupted = bytearray((multi30k_dir / "val.en.gz").read_bytes())
    corrupted[100] ^= 0xFF
    (served / "val.en.gz").write_bytes(corrupted)
    base_url, _ = serve(served)
    with pytest.raises(EncdecError) as error:
        multi30k_file("valid", "en", cache_dir=cache_dir, base_url=base_url)
    assert "val.en.gz" in str(error.value)
    assert MULTI30K_SHA256["val.en.gz"] in str(error.value)
    assert hashlib.sha256(corrupted).hexdigest() in str(error.value)
    assert files_in(cache_dir) == []


def test_missing_file_on_server_raises_and_leaves_nothing(serve, cache_dir, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    base_url, _ = serve(empty)
    with pytest.raises(EncdecError, match="--data-dir") as error:
        multi30k_file("test", "fr", cache_dir=cache_dir, base_url=base_url)
    assert base_url + "test_2016_flickr.fr.gz" in str(error.value)
    assert files_in(cache_dir) == []


def test_cached_file_is_not_downloaded_again(serve, cache_dir, multi30k_dir):
    base_url, requested = serve(multi30k_dir)
    first = multi30k_file("test", "cs", cache_dir=cache_dir, base_url=base_url)
    again = multi30k_file("test", "cs", cache_dir=cache_dir, base_url=base_url)
    assert again == first
    download_multi30k(["cs"], cache_dir, base_url)
    assert requested.count("/test_2016_flickr.cs.gz") == 1


def test_download_multi30k_replaces_a_damaged_cached_file(serve, cache_dir, multi30k_dir):
    base_url, requested = serve(multi30k_dir)
    download_multi30k(["en"], cache_dir, base_url)
    (cache_dir / "val.en.gz").write_bytes(b"damaged")
    download_multi30k(["en"], cache_dir, base_url)
    assert sha256_of(cache_dir / "val.en.gz") == MULTI30K_SHA256["val.en.gz"]
    assert requested.count("/val.en.gz") == 2
    assert requested.count("/train.en.gz") == 1


def test_interrupted_download_leaves_nothing(tmp_path, monkeypatch):
    class InterruptedResponse(io.BytesIO):
        def read(self, size=-1):
            if self.tell():
                raise KeyboardInterrupt  # as if Ctrl-C arrived mid-transfer
            return super().read(4)

    monkeypatch.setattr(
        urllib.request, "urlopen", lambda url, timeout: InterruptedResponse(b"partial data")
    )
    with pytest.raises(KeyboardInterrupt):
        download_file("http://127.0.0.1:9/file.gz", tmp_path / "file.gz", sha256=None)
    assert files_in(tmp_path) == []


def test_download_file_without_checksum_creates_missing_folders(serve, tmp_path, multi30k_dir):
    base_url, _ = serve(multi30k_dir)
    dest = tmp_path / "a" / "b" / "README.md"
    assert download_file(base_url + "README.md", dest, sha256=None) == dest
    assert dest.read_bytes() == (multi30k_dir / "README.md").read_bytes()


# --- toy phrases ---------------------------------------------------------------------------------


def test_toy_phrases_contain_the_demo_pairs():
    train = toy_phrases()["train"]
    assert ("let's go", "vamos") in train
    assert ("to go", "ir") in train


def test_toy_phrases_have_no_empty_sides():
    train = toy_phrases()["train"]
    assert len(train) >= 80
    assert all(source.strip() and target.strip() for source, target in train)


def test_toy_valid_and_test_are_a_handful_copied_from_train():
    toy = toy_phrases()
    assert toy["valid"] == toy["test"]
    assert 5 <= len(toy["valid"]) <= 15
    assert set(toy["valid"]) <= set(toy["train"])


# --- the training split: empty pairs, data.max_len, data.long_pairs ------------------------------

LONG_PAIR = ("one two three four five", "uno dos tres cuatro cinco")
SHORT_PAIRS = [("good morning", "buenos días"), ("thank you", "gracias"), ("i eat", "yo como")]


def tsv_corpus_config(tmp_path: Path, pairs: list[tuple[str, str]], **data) -> DataConfig:
    """A files config whose three splits are one TSV of `pairs`."""
    path = tmp_path / "pairs.tsv"
    path.write_text("".join(f"{src}\t{trg}\n" for src, trg in pairs), encoding="utf-8")
    splits = {f"{split}_tsv": str(path) for split in SPLITS}
    return DataConfig(dataset="files", src_lang="en", trg_lang="es", min_freq=1, **splits, **data)


def train_tokens(corpus, side: int) -> list[list[str]]:
    """The training split's tokens of one side (0 source, 1 target) in reading order."""
    vocab = (corpus.src_vocab, corpus.trg_vocab)[side]
    train = corpus.ids["train"]
    token_lists = [vocab.decode(train.pair(index)[side]) for index in range(len(train))]
    return [tokens[::-1] for tokens in token_lists] if side == 0 else token_lists


def test_empty_and_blank_pairs_are_skipped_and_counted(tmp_path):
    pairs = [*SHORT_PAIRS, ("", "algo"), ("   ", "algo"), ("something", "   ")]
    corpus = build_corpus(tsv_corpus_config(tmp_path, pairs))
    assert corpus.skipped == {"empty": 3}
    assert train_tokens(corpus, 0) == [source.split() for source, _ in SHORT_PAIRS]


def test_long_pairs_drop_leaves_out_pairs_over_max_len_and_counts_them(tmp_path):
    corpus = build_corpus(tsv_corpus_config(tmp_path, [*SHORT_PAIRS, LONG_PAIR], max_len=3))
    assert corpus.skipped == {"longer than max_len": 1}
    assert corpus.truncated == 0
    assert train_tokens(corpus, 1) == [target.split() for _, target in SHORT_PAIRS]


def test_long_pairs_truncate_cuts_each_side_to_max_len_and_counts_them(tmp_path):
    config = tsv_corpus_config(
        tmp_path, [*SHORT_PAIRS, LONG_PAIR], max_len=3, long_pairs="truncate"
    )
    corpus = build_corpus(config)
    assert (corpus.skipped, corpus.truncated) == ({}, 1)
    assert train_tokens(corpus, 0)[-1] == ["one", "two", "three"]
    assert train_tokens(corpus, 1)[-1] == ["uno", "dos", "tres"]
    src_ids, trg_ids = corpus.ids["train"].pair(len(corpus.ids["train"]) - 1)
    assert len(src_ids) == len(trg_ids) == 3 + 2  # <sos> and <eos> around the cut sentence
    valid = corpus.ids["valid"]
    assert valid.pair(len(valid) - 1)[0][1:-1] != src_ids[1:-1]  # other splits stay whole


def test_long_pairs_must_be_drop_or_truncate():
    with pytest.raises(EncdecError, match="data.long_pairs"):
        from_dict({"data": {"long_pairs": "cut"}})


def test_no_training_pair_left_names_the_reasons_and_the_remedies(tmp_path):
    config = tsv_corpus_config(tmp_path, [LONG_PAIR, ("", "algo")], max_len=3)
    with pytest.raises(EncdecError, match="all 2 were left out .*1 empty.*long_pairs: truncate"):
        build_corpus(config)


@pytest.mark.parametrize(
    ("long_pairs", "log_lines"),
    [
        ("drop", ["skipped training pairs: {'empty': 1, 'longer than max_len': 1}"]),
        ("truncate", ["skipped training pairs: {'empty': 1}", "training pairs cut to max_len: 1"]),
    ],
)
def test_training_log_reports_pairs_skipped_or_cut(
    tmp_path, one_torch_thread, long_pairs, log_lines
):
    data = tsv_corpus_config(
        tmp_path, [*SHORT_PAIRS, ("", "algo"), LONG_PAIR], max_len=3, long_pairs=long_pairs
    )
    tiny = {"embedding_dim": 4, "hidden_dim": 4, "num_layers": 1, "dropout": 0.0}
    config = from_dict(
        {"model": tiny, "training": {"epochs": 1, "batch_size": 8}, "decoding": {"max_len": 3}}
    )
    config.data = data
    train(config, tmp_path / "run", quiet=True)
    log_text = (tmp_path / "run" / "train.log").read_text(encoding="utf-8")
    assert all(line in log_text for line in log_lines)
    assert ("cut to max_len" in log_text) == (long_pairs == "truncate")
