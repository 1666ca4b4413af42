"""Corpora: Multi30k (download + checksum), parallel files, TSV files and the toy phrases."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.client
import os
import urllib.request
import zlib
from collections.abc import Iterable, Iterator
from importlib import resources
from pathlib import Path
from typing import BinaryIO

from encdec.errors import EncdecError

MULTI30K_LANGS = ("de", "en", "fr", "cs")
MULTI30K_URL = "https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw/"
MULTI30K_FILES = {
    "train": "train.{lang}.gz",
    "valid": "val.{lang}.gz",
    "test": "test_2016_flickr.{lang}.gz",
}
MULTI30K_SHA256 = {
    "test_2016_flickr.cs.gz": "200a4a74cc9560f051924abb9803be008d1908d77f747e9141aeb86dfd2797f1",
    "test_2016_flickr.de.gz": "9204244e408ccb38d2a55cfcd344df15005fc42a07a6e55ca6c52b6ababb8cc8",
    "test_2016_flickr.en.gz": "611d361c6334bc7246101d48097c13cf5c4413c5befc793cc629934359d532d9",
    "test_2016_flickr.fr.gz": "6d326e188d259fb1d04ac19eae3af956559b3a0b93d7635e56c90987c40c8b90",
    "train.cs.gz": "a65adb8b32e3bc664f21ecba7a6e7f6950fd1f405e135f7c312faabdb6255077",
    "train.de.gz": "726e39b2fa9eb9ffb6dc763fb35a179f80fae06ffc5d28b6ace5faa883de28a6",
    "train.en.gz": "d79cfa999dd4c51d2cb42499b6796d5a882c3a8a961923c25a898c90f8bbd56f",
    "train.fr.gz": "622e75069e9f4c577425c4f277116ce66e63a2401c0a2312d90073cb12379a3c",
    "val.cs.gz": "b63226e05c4bd5dd6a42897d74b86a1b9d2c31498252c572b1ea7f7996927fcc",
    "val.de.gz": "f0cba2f995189cf5770f29a8a9a537a3ad3f51657ad873405082ff6863a5e75a",
    "val.en.gz": "14f7d25ddd868909a9213e361768460edcacdd6ab9d1e77b92560dc10c10dc28",
    "val.fr.gz": "ca3106f1a72390591d25f6c45cb4cd39dec4cd3f123e099748a3ce5256c160e9",
}
SPLITS = ("train", "valid", "test")

Pair = tuple[str, str]  # (source sentence, target sentence), raw text

_TOY_HELDOUT_SIZE = 10
_DOWNLOAD_TIMEOUT_S = 60
_CHUNK_BYTES = 1 << 20


def default_cache_dir() -> Path:
    """Where downloads are kept: $ENCDEC_CACHE if set, else ~/.cache/encdec."""
    return Path(os.environ.get("ENCDEC_CACHE") or Path.home() / ".cache" / "encdec")


def read_lines(path: str | Path) -> list[str]:
    """Read UTF-8 text (gzip if the name ends in .gz) and split it into lines (`split_lines`)."""
    return list(lines_of(path))


def lines_of(path: str | Path) -> Iterator[str]:
    """A file's lines one at a time, split as `split_lines` splits them: at b'\n' only (UTF-8
    never uses that byte inside a character), so a huge file is never read whole."""
    path = Path(path)
    with _readable(path):
        with _opened(path) as file:
            for number, raw in enumerate(file, start=1):
                try:
                    yield raw.decode("utf-8").removesuffix("\n").removesuffix("\r")
                except UnicodeDecodeError as error:
                    raise EncdecError(_not_utf8(path, number, error)) from None


def count_lines(path: str | Path) -> int:
    """Lines in a file (as `lines_of` gives them): its b'\n's, plus a last line without one."""
    path, lines, last = Path(path), 0, b"\n"
    with _readable(path), _opened(path) as file:
        while block := file.read(_CHUNK_BYTES):
            lines, last = lines + block.count(b"\n"), block[-1:]
    return lines + (last != b"\n")


def split_lines(text: str) -> list[str]:
    """Lines end at '\n' only (or '\r\n'): a lone '\r', '\u2028' or '\x85' stays in its line.

    `str.splitlines` would split at those too, so a file and its translation could differ in
    length; encdec writes one '\n' after each output line, so lines in and lines out agree.
    """
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()  # the newline ending the last line does not start another one
    return [line.removesuffix("\r") for line in lines]


def _opened(path: Path) -> BinaryIO:
    """The file open for reading bytes, gunzipped when its name ends in .gz."""
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


@contextlib.contextmanager
def _readable(path: Path) -> Iterator[None]:
    """Reading `path` inside: a missing, folder or unreadable file is one line naming it."""
    try:
        yield
    except FileNotFoundError:
        raise EncdecError(f"{path}: no such file; check the path") from None
    except IsADirectoryError:
        raise EncdecError(f"{path} is a folder; name a file of lines in it") from None
    except (OSError, EOFError, zlib.error) as error:
        raise EncdecError(
            f"{path}: cannot read ({error}); replace the file with a good copy"
        ) from None


def file_bytes(text: str, path: str | Path) -> bytes:
    """`text` as the file `path` holds it: UTF-8, gzipped when the name ends in .gz."""
    encoded = text.encode("utf-8")
    return gzip.compress(encoded, mtime=0) if Path(path).suffix == ".gz" else encoded


def read_stream_lines(stream: BinaryIO, name: str) -> list[str]:
    """Lines of a stream of UTF-8 bytes such as stdin (`split_lines`); errors call it `name`."""
    return split_lines(_decode_utf8(stream.read(), name))


def _decode_utf8(data: bytes, path: str | Path) -> str:
    """Decode, pointing at the offending line when the bytes are not UTF-8."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line_number = data.count(b"\n", 0, error.start) + 1
        raise EncdecError(_not_utf8(path, line_number, error)) from None


def _not_utf8(path: str | Path, line_number: int, error: UnicodeDecodeError) -> str:
    return f"{path}:{line_number}: not valid UTF-8 ({error.reason}); re-encode it as UTF-8"


def read_parallel(src_path: str | Path, trg_path: str | Path) -> list[Pair]:
    """Pair line i of the source file with line i of the target file."""
    sources, targets = read_lines(src_path), read_lines(trg_path)
    check_parallel(src_path, len(sources), trg_path, len(targets))
    return list(zip(sources, targets, strict=True))


def check_parallel(src_path: str | Path, sources: int, trg_path: str | Path, targets: int) -> None:
    """Refuse parallel files of different lengths, naming both files and both line counts."""
    if sources != targets:
        raise EncdecError(
            f"{src_path} has {sources:,} lines but {trg_path} has {targets:,}; "
            "parallel files need one sentence per line, line for line"
        )


def read_tsv(path: str | Path) -> list[Pair]:
    """Read one 'source<TAB>target' pair per line."""
    lines = read_lines(path)
    return [split_tsv_line(line, path, number) for number, line in enumerate(lines, start=1)]


def split_tsv_line(line: str, path: str | Path, line_number: int) -> Pair:
    """Split a line at its single tab."""
    fields = line.split("\t")
    if len(fields) != 2:
        raise EncdecError(
            f"{path}:{line_number}: expected 'source<TAB>target' with exactly one tab, "
            f"found {len(fields) - 1}; fix or remove that line"
        )
    return fields[0], fields[1]


def download_file(url: str, dest: Path, sha256: str | None) -> Path:
    """Download url to dest, checking its SHA-256 if given; dest appears whole or not at all."""
    from encdec.checkpoint import atomic_file  # torch is imported only when a download happens

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(dest) as file:
        _check_sha256(dest, expected=sha256, actual=_fetch(url, file))
    return dest


def _fetch(url: str, out: BinaryIO) -> str:
    """Stream url into out and return the SHA-256 hex digest of the bytes written."""
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as response:
            while chunk := response.read(_CHUNK_BYTES):
                digest.update(chunk)
                out.write(chunk)
    except (OSError, http.client.HTTPException) as error:
        raise EncdecError(
            f"could not download {url} ({error}); without network access, put a local copy "
            "of the files in a folder and name it with --data-dir, the config key "
            "data.data_dir, or $ENCDEC_DATA"
        ) from None
    return digest.hexdigest()


def _check_sha256(dest: Path, expected: str | None, actual: str) -> None:
    """Refuse a download whose digest differs from the published one."""
    if expected is not None and actual != expected:
        raise EncdecError(
            f"{dest}: downloaded data has sha256 {actual} but {expected} was expected; "
            "the download was discarded, try again or fetch the file by hand"
        )


def _sha256_of(path: Path) -> str:
    """The SHA-256 hex digest of a file's contents (Multi30k files are a few MB at most)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _check_choice(value: str, choices: tuple[str, ...], what: str) -> None:
    """Reject a value that is not one of the choices, listing them."""
    if value not in choices:
        raise EncdecError(f"unknown Multi30k {what} {value!r}; choose one of {', '.join(choices)}")


def _multi30k_name(split: str, lang: str) -> str:
    """The Multi30k file name for a split and language, e.g. val.de.gz."""
    _check_choice(split, SPLITS, "split")
    _check_choice(lang, MULTI30K_LANGS, "language")
    return MULTI30K_FILES[split].format(lang=lang)


def _multi30k_cache(cache_dir: Path | None) -> Path:
    """The folder Multi30k downloads go to."""
    return Path(cache_dir) if cache_dir is not None else default_cache_dir() / "multi30k"


def multi30k_file(
    split: str,
    lang: str,
    data_dir: str | Path | None = None,
    cache_dir: Path | None = None,
    base_url: str = MULTI30K_URL,
) -> Path:
    """A Multi30k file from data_dir (else $ENCDEC_DATA), which must hold it; without either,
    from the cache, else downloaded."""
    name = _multi30k_name(split, lang)
    data_dir = data_dir if data_dir is not None else os.environ.get("ENCDEC_DATA")
    if data_dir:  # a local copy is trusted unchecked, so reading stays fast
        if not (Path(data_dir) / name).is_file():
            raise EncdecError(
                f"{Path(data_dir) / name} not found: the Multi30k folder named by --data-dir, "
                "data.data_dir or $ENCDEC_DATA must hold the train, val and test_2016_flickr "
                "files of both languages (encdec download fetches them into the cache)"
            )
        return Path(data_dir) / name
    cached = _multi30k_cache(cache_dir) / name
    if cached.is_file():
        return cached  # only a verified download can have been moved here
    return download_file(base_url + name, cached, MULTI30K_SHA256[name])


def download_multi30k(
    langs: Iterable[str], cache_dir: Path | None = None, base_url: str = MULTI30K_URL
) -> list[Path]:
    """Make sure all splits of each language are in the cache with the right checksum."""
    names = [_multi30k_name(split, lang) for lang in langs for split in SPLITS]
    cache = _multi30k_cache(cache_dir)
    return [_verified_download(name, cache, base_url) for name in names]


def _verified_download(name: str, cache: Path, base_url: str) -> Path:
    """Keep a cached file whose checksum matches; download it otherwise."""
    path = cache / name
    if path.is_file() and _sha256_of(path) == MULTI30K_SHA256[name]:
        return path
    return download_file(base_url + name, path, MULTI30K_SHA256[name])


def check_multi30k_languages(src_lang: str, trg_lang: str) -> None:
    """Two different languages that Multi30k has, or an error listing those it has."""
    if src_lang == trg_lang:
        raise EncdecError(f"source and target language are both {src_lang!r}; pick two different")
    for lang in (src_lang, trg_lang):
        _check_choice(lang, MULTI30K_LANGS, "language")


def load_multi30k(
    src_lang: str,
    trg_lang: str,
    data_dir: str | Path | None = None,
    cache_dir: Path | None = None,
    base_url: str = MULTI30K_URL,
) -> dict[str, list[Pair]]:
    """Multi30k sentence pairs for each split: 29000 train, 1014 valid, 1000 test."""
    check_multi30k_languages(src_lang, trg_lang)  # before anything is downloaded
    return {
        split: read_parallel(
            multi30k_file(split, src_lang, data_dir, cache_dir, base_url),
            multi30k_file(split, trg_lang, data_dir, cache_dir, base_url),
        )
        for split in SPLITS
    }


def toy_phrases() -> dict[str, list[Pair]]:
    """English-Spanish everyday phrases; valid and test repeat a few training pairs to memorise."""
    with resources.as_file(resources.files("encdec") / "toy_phrases.tsv") as path:
        pairs = read_tsv(path)
    heldout = pairs[:: len(pairs) // _TOY_HELDOUT_SIZE][:_TOY_HELDOUT_SIZE]
    return {"train": pairs, "valid": list(heldout), "test": list(heldout)}
