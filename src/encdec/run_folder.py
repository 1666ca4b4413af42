"""The run folder (`--out`): refused when it holds a run, cleared by `--overwrite`, and checked
writable with room for checkpoints before a run makes anything in it."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from encdec.errors import EncdecError
from encdec.model import Seq2Seq, count_parameters

# what a run writes into its folder; the first ones say that a run has been there
RUN_MARKERS = ("last.pt", "best.pt", "train.log", "metrics.jsonl", "tensorboard")
RUN_FILES = (*RUN_MARKERS, "config.yaml")
KEPT_WEIGHTS = "epoch_[0-9][0-9][0-9].pt"  # training.keep_checkpoints


def run_files(out_dir: Path) -> list[Path]:
    """The files and folders an earlier run left in `out_dir`, if any."""
    if not out_dir.is_dir():
        return []
    marked = [out_dir / name for name in RUN_MARKERS if (out_dir / name).exists()]
    return marked + sorted(out_dir.glob(KEPT_WEIGHTS))


def refuse_an_existing_run(out_dir: Path, overwrite: bool) -> None:
    """A new run may not go into a folder holding another, unless `overwrite` says to clear it."""
    found = run_files(out_dir)
    if found and not overwrite:
        names = ", ".join(path.name for path in found[:4]) + (", ..." if len(found) > 4 else "")
        raise EncdecError(
            f"run folder {out_dir} already holds a run ({names}); go on with it with "
            f"`encdec train --resume {out_dir}` (resume=True), or start afresh with --overwrite "
            "(overwrite=True), which deletes that run's files"
        )


def clear_run(out_dir: Path) -> None:
    """Delete what an earlier run wrote into `out_dir` (--overwrite); other files stay."""
    for path in [*run_files(out_dir), out_dir / "config.yaml"]:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def _nearest_existing(folder: Path) -> Path:
    return next(path for path in (folder, *folder.absolute().parents) if path.exists())


def check_it_can_be_made(out_dir: Path) -> None:
    """Refuse at once a run folder that could not be made or written, before any time is spent."""
    existing = _nearest_existing(out_dir)
    if not existing.is_dir():
        problem = f"{existing} is a file, not a folder"
    elif not os.access(existing, os.W_OK | os.X_OK):
        problem = f"{existing} is not writable"
    else:
        return
    raise EncdecError(f"run directory {out_dir} cannot be written: {problem}")


def make_writable(out_dir: Path) -> None:
    """Create `out_dir` and prove a file can be written there: the first thing a run makes."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out_dir):
            pass
    except OSError as error:
        raise EncdecError(f"run directory {out_dir} cannot be written: {error}") from None


def check_free_space(out_dir: Path, model: Seq2Seq) -> None:
    """Refuse to start unless out_dir has room for ~3 checkpoints (last, best, a temporary)."""
    # A checkpoint holds float32 weights and Adam's two moments: 3 x 4 bytes per parameter.
    needed = 3 * count_parameters(model) * 4 * 3
    free = shutil.disk_usage(_nearest_existing(out_dir)).free
    if free < needed:
        raise EncdecError(
            f"run directory {out_dir} has {free / 1e6:,.1f} MB free but its checkpoints need "
            f"about {needed / 1e6:,.1f} MB; free some space or train into another --out"
        )
