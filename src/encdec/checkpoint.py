"""Checkpoints: written atomically, self-describing, checked on load."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from encdec.errors import EncdecError

FORMAT_VERSION = 1
REQUIRED_KEYS = ("format_version", "model", "config", "src_vocab", "trg_vocab")


def save_checkpoint(state: dict, path: str | Path) -> None:
    """Write `state` so that `path` holds either the old file or the whole new one, never a part."""
    path = Path(path)
    handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save({"format_version": FORMAT_VERSION, **state}, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint, with a clear error for a missing, corrupt, foreign or newer file."""
    path = Path(path)
    if not path.is_file():
        raise EncdecError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # torch raises many kinds for a damaged file
        raise EncdecError(
            f"checkpoint {path} cannot be read (truncated or not a checkpoint): {error}"
        ) from None
    if not isinstance(state, dict) or "format_version" not in state:
        raise EncdecError(f"{path} is not an encdec checkpoint (it has no format_version)")
    # the version first: another format may name its keys differently
    if state["format_version"] != FORMAT_VERSION:
        raise EncdecError(
            f"checkpoint {path} has format version {state['format_version']}, this encdec reads "
            f"version {FORMAT_VERSION}: use the encdec release that wrote it"
        )
    if any(key not in state for key in REQUIRED_KEYS):
        raise EncdecError(f"{path} is not an encdec checkpoint (missing model, config or vocab)")
    return state
