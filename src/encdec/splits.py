"""The splits a data config names, read a chunk of pairs at a time, whatever their size.

A file is read as bytes and split at '\n' only (as `data.split_lines` does), so line numbers in
errors are the numbers an editor shows; nothing holds a whole corpus in memory.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from encdec import data
from encdec.config import DataConfig
from encdec.errors import EncdecError

Chunk = tuple[list[str], list[str]]  # (source sentences, target sentences), line for line
_BLOCK_BYTES = 1 << 20


@dataclass(frozen=True)
class SplitSource:
    """Where one split's pairs come from: two parallel files, one TSV file, or pairs in memory."""

    split: str
    src_path: Path | None = None
    trg_path: Path | None = None
    tsv_path: Path | None = None
    pairs: list[data.Pair] | None = None  # the embedded toy phrases

    def names(self) -> list[str]:
        """The files read, for a manifest and for messages."""
        paths = (self.src_path, self.trg_path, self.tsv_path)
        return [str(path) for path in paths if path is not None] or ["(embedded toy phrases)"]

    def count(self) -> int:
        """Pairs in the split; parallel files of different lengths are refused, naming both."""
        if self.pairs is not None:
            return len(self.pairs)
        if self.tsv_path is not None:
            return count_lines(self.tsv_path)
        sources, targets = count_lines(self.src_path), count_lines(self.trg_path)
        if sources != targets:
            raise EncdecError(
                f"{self.src_path} has {sources:,} lines but {self.trg_path} has {targets:,}; "
                "parallel files need one sentence per line, line for line"
            )
        return sources

    def chunks(self, size: int) -> Iterator[Chunk]:
        """The pairs in order, `size` at a time."""
        if self.pairs is not None:
            return _chunked(self.pairs, size)
        if self.tsv_path is not None:
            return _tsv_chunks(self.tsv_path, size)
        return _parallel_chunks(self.src_path, self.trg_path, size)

    def read(self) -> list[data.Pair]:
        """Every pair of the split (for the small ones: valid and test)."""
        return [pair for sources, targets in self.chunks(10_000) for pair in zip(sources, targets)]


def split_sources(config: DataConfig) -> dict[str, SplitSource]:
    """Each split's source: Multi30k (downloaded when missing), the toy phrases, or user files."""
    if config.dataset == "toy":
        toy = data.toy_phrases()
        return {split: SplitSource(split, pairs=pairs) for split, pairs in toy.items()}
    if config.dataset == "multi30k":
        data.check_multi30k_languages(config.src_lang, config.trg_lang)
        return {
            split: SplitSource(
                split,
                data.multi30k_file(split, config.src_lang, config.data_dir),
                data.multi30k_file(split, config.trg_lang, config.data_dir),
            )
            for split in data.SPLITS
        }
    return {split: _file_source(config, split) for split in data.SPLITS}


def _file_source(config: DataConfig, split: str) -> SplitSource:
    tsv = getattr(config, f"{split}_tsv")
    src, trg = getattr(config, f"{split}_src"), getattr(config, f"{split}_trg")
    if tsv:
        return SplitSource(split, tsv_path=Path(tsv))
    if src and trg:
        return SplitSource(split, Path(src), Path(trg))
    # every split is needed: valid picks best.pt, test scores it
    raise EncdecError(
        f"data.dataset is 'files' but no {split} data is named: set data.{split}_src "
        f"and data.{split}_trg, or data.{split}_tsv"
    )


def _open(path: Path) -> BinaryIO:
    """The file's bytes, gunzipped when its name ends in .gz; a clear error when it cannot be."""
    try:
        return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")
    except FileNotFoundError:
        raise EncdecError(f"{path}: no such file; check the path") from None
    except IsADirectoryError:
        raise EncdecError(f"{path} is a folder; name a file of lines in it") from None
    except OSError as error:
        raise EncdecError(f"{path}: cannot read ({error.strerror})") from None


def count_lines(path: Path) -> int:
    """Lines in a file: its '\n's, plus one for a last line without one."""
    lines, last = 0, b"\n"
    try:
        with _open(path) as file:
            while block := file.read(_BLOCK_BYTES):
                lines, last = lines + block.count(b"\n"), block[-1:]
    except (OSError, EOFError) as error:  # a gzip file cut short or not gzip at all
        raise EncdecError(f"{path}: cannot read ({error}); replace it with a good copy") from None
    return lines + (last != b"\n")


def read_lines(path: Path) -> Iterator[str]:
    """The file's lines, decoded; a line that is not UTF-8 is an error naming its number."""
    with _open(path) as file:
        for number, raw in enumerate(file, start=1):
            try:
                yield raw.decode("utf-8").removesuffix("\n").removesuffix("\r")
            except UnicodeDecodeError as error:
                raise EncdecError(
                    f"{path}:{number}: not valid UTF-8 ({error.reason}); re-encode it as UTF-8"
                ) from None


def _parallel_chunks(src_path: Path, trg_path: Path, size: int) -> Iterator[Chunk]:
    return _chunked(zip(read_lines(src_path), read_lines(trg_path), strict=True), size)


def _tsv_chunks(path: Path, size: int) -> Iterator[Chunk]:
    lines = enumerate(read_lines(path), start=1)
    return _chunked((data.split_tsv_line(line, path, number) for number, line in lines), size)


def _chunked(pairs: Iterable[data.Pair], size: int) -> Iterator[Chunk]:
    """The pairs in order, as (sources, targets) of `size` pairs (the last may have fewer)."""
    chunk: Chunk = ([], [])
    for source, target in pairs:
        chunk[0].append(source)
        chunk[1].append(target)
        if len(chunk[0]) == size:
            yield chunk
            chunk = ([], [])
    if chunk[0]:
        yield chunk
