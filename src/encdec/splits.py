"""The splits a data config names, read a chunk of pairs at a time, whatever their size.

Files are read a line at a time (`data.lines_of`), so nothing holds a whole corpus in memory.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from encdec import data
from encdec.config import DataConfig
from encdec.errors import EncdecError

Chunk = tuple[list[str], list[str]]  # (source sentences, target sentences), line for line


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
            return data.count_lines(self.tsv_path)
        sources, targets = data.count_lines(self.src_path), data.count_lines(self.trg_path)
        data.check_parallel(self.src_path, sources, self.trg_path, targets)
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


def _parallel_chunks(src_path: Path, trg_path: Path, size: int) -> Iterator[Chunk]:
    return _chunked(zip(data.lines_of(src_path), data.lines_of(trg_path), strict=True), size)


def _tsv_chunks(path: Path, size: int) -> Iterator[Chunk]:
    lines = enumerate(data.lines_of(path), start=1)
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
