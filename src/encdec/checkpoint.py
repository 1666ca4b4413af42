"""Checkpoints: written atomically, self-describing, checked on load; the RNG states to resume."""

from __future__ import annotations

import contextlib
import os
import pickle
import random
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np
import torch

from encdec.config import Config, DataConfig
from encdec.errors import EncdecError

if TYPE_CHECKING:
    from encdec.corpus import Corpus
    from encdec.model import Seq2Seq
    from encdec.tokenize import Tokenizer

FORMAT_VERSION = 1
READABLE_VERSIONS = (1,)
REQUIRED_KEYS = ("format_version", "model", "config", "src_vocab", "trg_vocab")
# what translating needs besides the weights; the rest of last.pt is training state
TRANSLATION_KEYS = ("config", "src_vocab", "trg_vocab", "src_subwords", "trg_subwords")
# Checkpoints are unpickled with torch.load(weights_only=True): tensors and plain Python types
# only, so a file cannot run code. A last.pt written before 2026-12 held NumPy's generator
# state as an array; these rebuild such an array (and nothing else) so that it still resumes.
_rebuild_array = np.zeros(0).__reduce__()[0]  # numpy.core (NumPy 1) or numpy._core (2)
NUMPY_ARRAY_GLOBALS = [
    np.ndarray,
    np.dtype,
    type(np.dtype(np.uint32)),
    _rebuild_array,
    (_rebuild_array, "numpy.core.multiarray._reconstruct"),  # as NumPy 1 wrote it
]


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[BinaryIO]:
    """Open a temporary file beside `path`; on success it is synced and renamed over `path`.

    A `path` that is a folder, or whose folder is missing or read-only, is an EncdecError.
    """
    path = Path(path)
    if path.is_dir():
        raise EncdecError(f"cannot write {path}: it is a folder; name a file")
    if not path.parent.is_dir():
        raise EncdecError(f"cannot write {path}: folder {path.parent} does not exist")
    try:
        handle, temp_name = tempfile.mkstemp(
            dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"
        )
    except OSError as error:
        raise EncdecError(f"cannot write {path}: {error.strerror}") from None
    try:
        os.chmod(temp_name, _new_file_mode())  # mkstemp's files are private (0600)
        with os.fdopen(handle, "wb") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    _sync_directory(path.parent)


def remove_half_written(folder: Path) -> list[Path]:
    """Delete the temporary files that `atomic_file` leaves in `folder` when its process is
    killed mid-write (a half-written checkpoint each); the ones removed.

    Only for a folder no other process is writing into, such as a run folder being resumed.
    """
    half_written = sorted(folder.glob(".*.tmp"))
    for path in half_written:
        path.unlink(missing_ok=True)
    return half_written


def _new_file_mode() -> int:
    """The permissions `open` would give a new file under the current umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _sync_directory(folder: Path) -> None:
    """Make a rename in `folder` survive a power cut (POSIX only; Windows cannot open folders)."""
    if os.name != "posix":
        return
    try:
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
    except OSError:  # some file systems refuse to sync a folder; the file itself is synced
        pass


def save_checkpoint(state: dict, path: str | Path) -> None:
    """Write `state` so that `path` holds either the old file or the whole new one, never a part.

    Its tensors are saved on the CPU, wherever they were: any machine can read the file.
    """
    with atomic_file(path) as file:
        torch.save({"format_version": FORMAT_VERSION, **_on_cpu(state)}, file)


def _on_cpu(value):
    """`value` with every tensor in its dicts, lists and tuples moved to the CPU."""
    if isinstance(value, torch.Tensor):
        return value.cpu()
    if isinstance(value, dict):  # a state_dict's OrderedDict keeps its type and _metadata
        moved = type(value)((key, _on_cpu(item)) for key, item in value.items())
        if hasattr(value, "_metadata"):
            moved._metadata = value._metadata
        return moved
    if isinstance(value, list | tuple):
        return type(value)(_on_cpu(item) for item in value)
    return value


def resolve_checkpoint(path: str | Path) -> Path:
    """The checkpoint file `path` names: the file itself, or a run folder's best.pt."""
    path = Path(path)
    if path.is_dir():
        if not (path / "best.pt").is_file():
            raise EncdecError(
                f"{path} is a folder without a best.pt: give a checkpoint file, or the --out "
                "folder of a run that has finished an epoch"
            )
        return path / "best.pt"
    if not path.is_file():
        raise EncdecError(f"checkpoint not found: {path}")
    return path


def load_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint file, or a run folder's best.pt.

    A missing, corrupt, foreign or newer file is a clear one-line error.
    """
    path = resolve_checkpoint(path)
    try:
        with torch.serialization.safe_globals(NUMPY_ARRAY_GLOBALS):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise _refusal(path, error) from None
    except Exception as error:  # torch raises many kinds for a damaged file
        raise _unreadable(path, error) from None
    if not isinstance(state, dict) or "format_version" not in state:
        raise EncdecError(f"{path} is not an encdec checkpoint (it has no format_version)")
    # the version first: another format may name its keys differently
    if state["format_version"] not in READABLE_VERSIONS:
        readable = ", ".join(map(str, READABLE_VERSIONS))
        raise EncdecError(
            f"checkpoint {path} has format version {state['format_version']}, this encdec reads "
            f"version {readable}: use the encdec release that wrote it"
        )
    if any(key not in state for key in REQUIRED_KEYS):
        raise EncdecError(f"{path} is not an encdec checkpoint (missing model, config or vocab)")
    return state


def _refusal(path: Path, error: pickle.UnpicklingError) -> EncdecError:
    """The error for a file whose pickle asks for more than tensors and plain Python types."""
    named = re.search(r"GLOBAL (\S+)", str(error))
    if named is None:  # not a call it refused: random bytes, or a pickle cut short
        return _unreadable(path, error)
    return EncdecError(
        f"checkpoint {path} is refused: its pickle calls {named.group(1)}, which no checkpoint "
        "holds and which could run code on this machine (it was not run); use a checkpoint "
        "from a source you trust"
    )


def _unreadable(path: Path, error: Exception) -> EncdecError:
    return EncdecError(
        f"checkpoint {path} cannot be read: it is truncated or not a checkpoint "
        f"({_first_sentence(error)}); copy it again, or use another checkpoint"
    )


def _first_sentence(error: Exception) -> str:
    """The gist of a (maybe long, many-line) error message, on one line."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text.split(". ")[0].removesuffix(".")


def rng_states(data_order: random.Random) -> dict:
    """Every random number generator training draws from, as it stands now.

    Tensors and plain Python types only, so that torch.load(weights_only=True) reads them.
    """
    numpy_state = np.random.get_state(legacy=False)
    key, position = numpy_state["state"]["key"], numpy_state["state"]["pos"]
    return {
        "python": random.getstate(),
        "numpy": {**numpy_state, "state": {"key": key.tolist(), "pos": int(position)}},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "data_order": data_order.getstate(),
    }


def restore_rng_states(states: dict, data_order: random.Random) -> None:
    """Put every generator back where `rng_states` found it, so the next draws repeat."""
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])  # a dict, or an older last.pt's tuple with an array
    torch.set_rng_state(states["torch"])
    cuda_states = states.get("cuda", [])  # checkpoints from before GPUs were supported lack it
    if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda_states)
    data_order.setstate(states["data_order"])


# what must agree for checkpoints to tokenize alike, into the same vocabularies ...
TOKEN_SETTINGS = ("src_lang", "trg_lang", "tokenizer", "subwords", "lowercase")
TEXT_STATE_KEYS = ("src_vocab", "trg_vocab", "src_subwords", "trg_subwords")
# ... and, for an ensemble or an average, to read the source and write the target in one order
TEXT_SETTINGS = (*TOKEN_SETTINGS, "reverse_src", "reverse_trg")


def _data_setting(state: dict, key: str):
    """A checkpoint's data setting `key`; one older than the setting counts as its default."""
    return state["config"].get("data", {}).get(key, getattr(DataConfig(), key))


def check_same_text(
    first_path, first: dict, path, state: dict, refusal: str, settings=TEXT_SETTINGS
) -> None:
    """Two checkpoints must prepare text alike (data `settings`, vocabularies, subword models).

    A difference is an error naming both files and the key, ending with `refusal`. A setting
    that a checkpoint older than it lacks counts as its default.
    """
    for key in settings:
        value, first_value = _data_setting(state, key), _data_setting(first, key)
        if value != first_value:
            raise EncdecError(
                f"{path} was trained with data.{key} = {value!r}, {first_path} with "
                f"{first_value!r}: {refusal}"
            )
    for key in TEXT_STATE_KEYS:
        if state.get(key) != first.get(key):
            raise EncdecError(
                f"{path} has another {key.replace('_', ' ')} than {first_path}: {refusal}"
            )


def check_mirrored_text(first_path, first: dict, path, state: dict) -> None:
    """`path` must translate the other way from `first_path` (its source language is the
    target's) and split words alike (tokenizer, lowercase); it may have other vocabularies."""
    expected = {
        "src_lang": _data_setting(first, "trg_lang"),
        "trg_lang": _data_setting(first, "src_lang"),
        "tokenizer": _data_setting(first, "tokenizer"),
        "lowercase": _data_setting(first, "lowercase"),
    }
    for key, value in expected.items():
        found = _data_setting(state, key)
        if found != value:
            raise EncdecError(
                f"{path} was trained with data.{key} = {found!r}; a channel model for "
                f"{first_path} needs {value!r}: it translates the other way, from "
                f"{expected['src_lang']} to {expected['trg_lang']}, with the same tokenizer"
            )


def average_checkpoints(paths: list[str | Path]) -> dict:
    """One checkpoint whose weights are the mean of those of `paths` (same model and vocabularies).

    Averaging the last few epochs' weights often scores a little better than any one of them
    (Junczys-Dowmunt et al., 2016). Everything but the weights comes from the first checkpoint.
    """
    if not paths:
        raise EncdecError("averaging needs at least one checkpoint")
    first = load_checkpoint(paths[0])
    total = {name: tensor.double() for name, tensor in first["model"].items()}
    for path in paths[1:]:
        state = load_checkpoint(path)
        check_same_text(paths[0], first, path, state, "cannot average")
        if state["config"]["model"] != first["config"]["model"]:
            raise EncdecError(f"{path} has another model config than {paths[0]}: cannot average")
        for name, tensor in state["model"].items():
            total[name] += tensor.double()
    averaged = {
        name: (tensor / len(paths)).to(first["model"][name].dtype) for name, tensor in total.items()
    }
    translatable = {key: first[key] for key in first if key in TRANSLATION_KEYS}
    return {**translatable, "model": averaged, "averaged_from": [str(path) for path in paths]}


def checkpoint_state(model: Seq2Seq, corpus: Corpus, config: Config, **extra) -> dict:
    """What a checkpoint holds: enough to translate with it alone."""
    return {
        "model": model.state_dict(),
        "config": config.to_dict(),
        "src_vocab": corpus.src_vocab.itos,
        "trg_vocab": corpus.trg_vocab.itos,
        "src_subwords": _serialized_subwords(corpus.src_tokenizer),
        "trg_subwords": _serialized_subwords(corpus.trg_tokenizer),
        **extra,
    }


def _serialized_subwords(tokenizer: Tokenizer) -> str | None:
    return tokenizer.subwords.serialized if tokenizer.subwords is not None else None
