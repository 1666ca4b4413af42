"""What a training run tells: train.log and stderr, metrics.jsonl lines, TensorBoard scalars."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from encdec.config import TrainingConfig
from encdec.corpus import Corpus
from encdec.distributed import Processes
from encdec.model import Seq2Seq, count_parameters
from encdec.progress import LogAboveBars

if TYPE_CHECKING:  # tensorboard is optional: `pip install encdec[tensorboard]`
    from torch.utils.tensorboard import SummaryWriter

log = logging.getLogger("encdec")
# a log record with this attribute set goes to train.log only (its news reaches stderr otherwise)
FILE_ONLY = "file_only"


def setup_logging(out_dir: Path, quiet: bool, processes: Processes) -> None:
    """train.log (and stderr unless `quiet`) on rank 0; the other processes log only warnings."""
    log.handlers.clear()
    log.setLevel(logging.INFO if processes.is_main else logging.WARNING)
    if not processes.is_main:
        return
    file_handler = logging.FileHandler(out_dir / "train.log", encoding="utf-8")
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    log.addHandler(file_handler)
    if not quiet:
        on_stderr = LogAboveBars()
        on_stderr.addFilter(lambda record: not getattr(record, FILE_ONLY, False))
        log.addHandler(on_stderr)


@contextlib.contextmanager
def logging_for_run(out_dir: Path, quiet: bool, processes: Processes) -> Iterator[None]:
    """setup_logging while a run trains; then train.log is closed and the logger put back, so
    that later lines of the process (a server's, another run's) do not land in this run's log."""
    previous_handlers, previous_level = log.handlers[:], log.level
    setup_logging(out_dir, quiet, processes)
    try:
        yield
    finally:
        for handler in log.handlers[:]:
            log.removeHandler(handler)
            handler.close()
        log.handlers[:] = previous_handlers
        log.setLevel(previous_level)


def describe(corpus: Corpus, model: Seq2Seq) -> None:
    log.info("data: %s", ", ".join(f"{s} {len(e):,}" for s, e in corpus.ids.items()))
    if corpus.skipped:
        log.info("skipped training pairs: %s", corpus.skipped)
    if corpus.truncated:
        log.info("training pairs cut to max_len: %s", f"{corpus.truncated:,}")
    log.info(
        "vocabulary: source %s, target %s",
        f"{len(corpus.src_vocab):,}",
        f"{len(corpus.trg_vocab):,}",
    )
    log.info("model parameters: %s", f"{count_parameters(model):,}")


def _position(line: dict, settings: TrainingConfig) -> str:
    """'epoch  2/10 | update 300/5000': where a run stands, out of how far it goes."""
    budget = f"/{settings.max_updates}" if settings.max_updates else ""
    return f"epoch {line['epoch']:2d}/{settings.epochs} | update {line['update']}{budget}"


def format_updates(line: dict, settings: TrainingConfig) -> str:
    """The line logged every training.log_every_updates updates."""
    return (
        f"{_position(line, settings)} | train loss {line['train_loss']:.3f} "
        f"ppl {line['train_ppl']:8.2f} (epoch so far) | lr {line['lr']:.2e} | "
        f"{line['train_tokens_per_s']:,.0f} tok/s"
    )


def format_validation(record: dict, settings: TrainingConfig) -> str:
    """A validation's line: at an epoch's end, or between them (validate_every_updates)."""
    minutes, seconds = divmod(int(record["epoch_seconds"]), 60)
    return (
        f"{_position(record, settings)} | {minutes}m {seconds:02d}s | "
        f"train loss {record['train_loss']:.3f} ppl {record['train_ppl']:8.2f} | "
        f"valid (teacher forcing off) loss {record['valid_loss']:.3f} "
        f"ppl {record['valid_ppl']:8.2f} | "
        f"valid (teacher-forced) ppl {record['valid_teacher_forced_ppl']:7.2f} | "
        f"valid BLEU {record['valid_bleu']:5.2f} chrF {record['valid_chrf']:5.2f} | "
        f"lr {record['lr']:.2e} | {record['train_tokens_per_s']:,.0f} tok/s"
    )


def log_record(record: dict, settings: TrainingConfig, metrics_path: Path) -> None:
    """A validation's line in train.log and its JSON line in metrics.jsonl."""
    log.info(format_validation(record, settings))
    with metrics_path.open("a", encoding="utf-8") as file:
        file.write(json.dumps(record) + "\n")


# TensorBoard tag -> metrics.jsonl key, written at each validation
TENSORBOARD_SCALARS = {
    "train/loss": "train_loss",
    "train/ppl": "train_ppl",
    "valid/loss": "valid_loss",
    "valid/ppl": "valid_ppl",
    "valid/teacher_forced_ppl": "valid_teacher_forced_ppl",
    "valid/bleu": "valid_bleu",
    "valid/chrf": "valid_chrf",
    "lr": "lr",
}


def tensorboard_writer(log_dir: Path, first_step: int) -> SummaryWriter | None:
    """A SummaryWriter into `log_dir` when tensorboard is installed, else None.

    Events from `first_step` on left by an earlier (interrupted) run are hidden: they are redone.
    """
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(log_dir), purge_step=first_step)


def write_scalars(board: SummaryWriter, record: dict, step: int) -> None:
    """A validation's losses, perplexities, BLEU, chrF and lr at `step`; flushed at once."""
    for tag, key in TENSORBOARD_SCALARS.items():
        board.add_scalar(tag, record[key], global_step=step)
    board.flush()
