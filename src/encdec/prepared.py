"""Reading a prepared folder back: checked against its manifest, its arrays mapped, not read.

A folder made with other settings, by another format version, cut short or changed since is
refused in one line that says what differs and how to rebuild it.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from encdec import data
from encdec.config import DataConfig
from encdec.errors import EncdecError
from encdec.pair_ids import PairIds, Sentences
from encdec.prepare import (
    FORMAT_VERSION,
    MANIFEST,
    SETTINGS,
    VOCABULARIES,
    file_record,
    prepared_settings,
)
from encdec.tokenize import Subwords
from encdec.vocab import Vocab
from encdec.word_ids import SIDES

REBUILD = "rebuild it with encdec prepare --config CONFIG --out {folder} --overwrite"


@dataclass
class PreparedCorpus:
    """What a prepared folder holds, ready to train on."""

    manifest: dict
    ids: dict[str, PairIds]  # per split
    texts: dict[str, list[data.Pair]]  # valid and test as text: BLEU is scored on text
    vocabs: tuple[Vocab, Vocab]
    subwords: tuple[Subwords | None, Subwords | None]


def read_manifest(folder: str | Path) -> dict:
    """The manifest of a finished prepared folder; an error naming the folder otherwise."""
    folder = Path(folder)
    if not folder.is_dir():
        raise EncdecError(f"prepared corpus {folder} does not exist; make it with encdec prepare")
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EncdecError(
            f"{folder} is not a finished prepared corpus (no {MANIFEST}); "
            + REBUILD.format(folder=folder)
        ) from None
    except (OSError, ValueError) as error:
        raise EncdecError(
            f"{folder / MANIFEST} cannot be read ({error}); " + REBUILD.format(folder=folder)
        ) from None
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise EncdecError(
            f"{folder} was prepared in format {version}, this encdec reads format "
            f"{FORMAT_VERSION}; " + REBUILD.format(folder=folder)
        )
    return manifest


def with_prepared_settings(config: DataConfig) -> DataConfig:
    """`config` with its data.prepared folder's settings wherever it leaves a default."""
    if config.prepared is None:
        return config
    made_with, defaults = read_manifest(config.prepared)["settings"], DataConfig()
    adopted = {
        key: made_with[key]
        for key in SETTINGS
        if key in made_with and getattr(config, key) == getattr(defaults, key)
    }
    return dataclasses.replace(config, **adopted)


def check_settings(manifest: dict, config: DataConfig, folder: Path) -> None:
    """Refuse a folder prepared with other data settings than `config`, naming each."""
    made_with, asked = manifest["settings"], prepared_settings(config)
    differences = [
        f"data.{key} {made_with.get(key)!r} there, {asked[key]!r} in the config"
        for key in SETTINGS
        if made_with.get(key) != asked[key]
    ]
    if differences:
        raise EncdecError(
            f"{folder} was prepared with other data settings: {'; '.join(differences)}; use "
            f"the settings it was made with, or " + REBUILD.format(folder=folder)
        )


def check_files(files: dict, folder: Path) -> None:
    """Every file listed (name -> bytes and sha256, as in a manifest) is there, whole, unchanged."""
    for name, expected in files.items():
        path = folder / name
        if not path.is_file():
            raise EncdecError(f"{path} is missing; " + REBUILD.format(folder=folder))
        size = path.stat().st_size
        if size != expected["bytes"]:
            raise EncdecError(
                f"{path} has {size:,} bytes, {expected['bytes']:,} expected (cut short?); "
                + REBUILD.format(folder=folder)
            )
        if file_record(path)["sha256"] != expected["sha256"]:
            raise EncdecError(
                f"{path} fails its checksum (changed since it was prepared); "
                + REBUILD.format(folder=folder)
            )


def split_texts(folder: str | Path, split: str) -> list[data.Pair]:
    """The text of a prepared folder's valid or test split, checked against its manifest."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    if split not in manifest["pairs"] or split == "train":
        raise EncdecError(
            f"{folder} keeps the text of valid and test only, not of {split!r}: score one of "
            "those, or name the files with --src and --ref"
        )
    names = [f"{split}.{side}.txt" for side in SIDES]
    check_files({name: manifest["files"][name] for name in names}, folder)
    return _text(folder, split)


def _text(folder: Path, split: str) -> list[data.Pair]:
    """The pairs of a split kept as text (valid and test)."""
    return list(zip(*(data.read_lines(folder / f"{split}.{side}.txt") for side in SIDES)))


def _array(path: Path, in_memory: bool) -> np.ndarray:
    """An .npy file read, or mapped (numpy cannot map an array of no elements)."""
    if in_memory:
        return np.load(path)
    try:
        return np.load(path, mmap_mode="r")
    except ValueError:
        return np.load(path)


def load_prepared(folder: str | Path, config: DataConfig) -> PreparedCorpus:
    """The corpus in `folder`, checked against its manifest, its arrays mapped from disk."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    check_settings(manifest, config, folder)
    check_files(manifest["files"], folder)
    return read_prepared(folder, manifest, config, in_memory=False)


def read_prepared(
    folder: Path, manifest: dict, config: DataConfig, in_memory: bool
) -> PreparedCorpus:
    """What `folder` holds, as `manifest` lists it, without checking it again (for a folder this
    process has just written); arrays read into memory, or mapped."""

    def sentences(split: str, side: str) -> Sentences:
        ids, offsets = (folder / f"{split}.{side}.{part}.npy" for part in ("ids", "offsets"))
        return Sentences(_array(ids, in_memory), _array(offsets, in_memory))

    ids = {
        split: PairIds(
            sentences(split, "src"), sentences(split, "trg"), config.reverse_src, config.reverse_trg
        )
        for split in manifest["pairs"]
    }
    texts = {split: _text(folder, split) for split in manifest["pairs"] if split != "train"}
    itos = json.loads((folder / VOCABULARIES).read_text(encoding="utf-8"))
    subwords = tuple(
        Subwords((folder / f"{side}_subwords.json").read_text(encoding="utf-8"))
        if (folder / f"{side}_subwords.json").is_file()
        else None
        for side in SIDES
    )
    vocabs = (Vocab(itos["src"]), Vocab(itos["trg"]))
    return PreparedCorpus(manifest, ids, texts, vocabs, subwords)
