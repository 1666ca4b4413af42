"""Training: the epoch loop, validation with and without teacher forcing, checkpoints, logs."""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import nn
from tqdm import tqdm

from encdec.batching import Example, bucket_batches, collate, padding_fraction
from encdec.checkpoint import load_checkpoint, save_checkpoint
from encdec.config import Config
from encdec.corpus import Corpus, build_corpus
from encdec.metrics import perplexity
from encdec.model import Seq2Seq, build_model, count_parameters

log = logging.getLogger("encdec")


@dataclass
class EpochResult:
    loss: float  # mean cross-entropy per target token
    tokens: int
    seconds: float

    @property
    def ppl(self) -> float:
        return perplexity(self.loss)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def run_epoch(
    model: Seq2Seq,
    examples: Sequence[Example],
    batches: list[list[int]],
    pad_idx: int,
    teacher_forcing_ratio: float,
    optimizer: torch.optim.Optimizer | None = None,
    clip: float = 1.0,
    max_steps: int | None = None,
    description: str = "",
) -> EpochResult:
    """One pass over `batches`; trains when an optimizer is given, else only measures the loss."""
    criterion = nn.CrossEntropyLoss(ignore_index=pad_idx, reduction="sum")
    model.train(optimizer is not None)
    total_loss, total_tokens, start = 0.0, 0, time.perf_counter()
    bar = tqdm(batches[:max_steps], desc=description, leave=False, disable=None)
    with torch.set_grad_enabled(optimizer is not None):
        for indices in bar:
            batch = collate(examples, indices, pad_idx)
            logits = model(batch.src, batch.src_lengths, batch.trg, teacher_forcing_ratio)
            # The shifted loss: the prediction at step t is scored against trg[t + 1].
            loss_sum = criterion(logits.flatten(0, 1), batch.trg[1:].flatten())  # (T-1)*B rows
            if optimizer is not None:
                optimizer.zero_grad()
                (loss_sum / batch.n_target_tokens).backward()
                nn.utils.clip_grad_norm_(model.parameters(), clip)
                optimizer.step()
            total_loss += loss_sum.item()
            total_tokens += batch.n_target_tokens
            bar.set_postfix(
                loss=f"{total_loss / total_tokens:.3f}",
                tok_s=f"{total_tokens / (time.perf_counter() - start):.0f}",
            )
    return EpochResult(total_loss / total_tokens, total_tokens, time.perf_counter() - start)


def evaluation_batches(examples: Sequence[Example], batch_size: int) -> list[list[int]]:
    """Length-sorted batches in a fixed order, for validation and test."""
    return bucket_batches(examples, batch_size, pool_batches=len(examples), rng=None)


def checkpoint_state(model: Seq2Seq, corpus: Corpus, config: Config, **extra) -> dict:
    """What a checkpoint holds: enough to translate with it alone."""
    return {
        "model": model.state_dict(),
        "config": config.to_dict(),
        "src_vocab": corpus.src_vocab.itos,
        "trg_vocab": corpus.trg_vocab.itos,
        **extra,
    }


def _setup_logging(out_dir: Path, quiet: bool) -> None:
    log.setLevel(logging.INFO)
    log.handlers.clear()
    file_handler = logging.FileHandler(out_dir / "train.log", encoding="utf-8")
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    log.addHandler(file_handler)
    if not quiet:
        log.addHandler(logging.StreamHandler())


def _format_epoch(
    epoch: int, epochs: int, train: EpochResult, valid: EpochResult, valid_forced: EpochResult
) -> str:
    minutes, seconds = divmod(int(train.seconds), 60)
    return (
        f"epoch {epoch:2d}/{epochs} | {minutes}m {seconds:02d}s | "
        f"train loss {train.loss:.3f} ppl {train.ppl:8.2f} | "
        f"valid (teacher forcing off) loss {valid.loss:.3f} ppl {valid.ppl:8.2f} | "
        f"valid (teacher-forced) ppl {valid_forced.ppl:7.2f} | "
        f"{train.tokens / train.seconds:,.0f} tok/s"
    )


def train(config: Config, out_dir: str | Path, quiet: bool = False) -> dict:
    """Train the model `config` describes; writes best.pt, metrics.jsonl and train.log."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _setup_logging(out_dir, quiet)
    seed_everything(config.training.seed)
    corpus = build_corpus(config.data)
    log.info("data: %s", ", ".join(f"{s} {len(e):,}" for s, e in corpus.examples.items()))
    if corpus.skipped:
        log.info("skipped training pairs: %s", corpus.skipped)
    log.info(
        "vocabulary: source %s, target %s",
        f"{len(corpus.src_vocab):,}",
        f"{len(corpus.trg_vocab):,}",
    )
    model = build_model(config.model, len(corpus.src_vocab), len(corpus.trg_vocab))
    log.info("model parameters: %s", f"{count_parameters(model):,}")
    (out_dir / "config.yaml").write_text(
        yaml.safe_dump(config.to_dict(), sort_keys=False), encoding="utf-8"
    )

    settings, pad_idx = config.training, corpus.trg_vocab.pad_idx
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr)
    data_order = random.Random(settings.seed)
    valid_batches = evaluation_batches(corpus.examples["valid"], settings.batch_size)
    best_valid_loss = float("inf")
    metrics_path = out_dir / "metrics.jsonl"
    metrics_path.unlink(missing_ok=True)
    for epoch in range(1, settings.epochs + 1):
        batches = bucket_batches(
            corpus.examples["train"], settings.batch_size, settings.bucket_pool, data_order
        )
        if epoch == 1:
            padding = padding_fraction(corpus.examples["train"], batches)
            log.info("batches per epoch: %d, padding %.1f%%", len(batches), 100 * padding)
        train_result = run_epoch(
            model,
            corpus.examples["train"],
            batches,
            pad_idx,
            settings.teacher_forcing_ratio,
            optimizer,
            settings.clip,
            settings.max_steps,
            f"epoch {epoch}",
        )
        valid = run_epoch(model, corpus.examples["valid"], valid_batches, pad_idx, 0.0)
        valid_forced = run_epoch(model, corpus.examples["valid"], valid_batches, pad_idx, 1.0)
        log.info(_format_epoch(epoch, settings.epochs, train_result, valid, valid_forced))
        record = {
            "epoch": epoch,
            "train_loss": train_result.loss,
            "train_ppl": train_result.ppl,
            "valid_loss": valid.loss,
            "valid_ppl": valid.ppl,
            "valid_teacher_forced_loss": valid_forced.loss,
            "valid_teacher_forced_ppl": valid_forced.ppl,
            "epoch_seconds": train_result.seconds,
            "train_tokens_per_s": train_result.tokens / train_result.seconds,
        }
        with metrics_path.open("a", encoding="utf-8") as file:
            file.write(json.dumps(record) + "\n")
        if valid.loss < best_valid_loss:
            best_valid_loss = valid.loss
            save_checkpoint(
                checkpoint_state(model, corpus, config, epoch=epoch, valid_loss=valid.loss),
                out_dir / "best.pt",
            )
    return _test_best(model, corpus, config, out_dir)


def _test_best(model: Seq2Seq, corpus: Corpus, config: Config, out_dir: Path) -> dict:
    """Reload the best checkpoint and report its test loss and perplexity."""
    model.load_state_dict(load_checkpoint(out_dir / "best.pt")["model"])
    test_batches = evaluation_batches(corpus.examples["test"], config.training.batch_size)
    pad_idx = corpus.trg_vocab.pad_idx
    test = run_epoch(model, corpus.examples["test"], test_batches, pad_idx, 0.0)
    test_forced = run_epoch(model, corpus.examples["test"], test_batches, pad_idx, 1.0)
    log.info(
        "test (best checkpoint): teacher forcing off loss %.3f ppl %.2f | teacher-forced ppl %.2f",
        test.loss,
        test.ppl,
        test_forced.ppl,
    )
    return {
        "test_loss": test.loss,
        "test_ppl": test.ppl,
        "test_teacher_forced_ppl": test_forced.ppl,
        "out_dir": str(out_dir),
    }
