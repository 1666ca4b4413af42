"""Training: the epoch loop, validation with and without teacher forcing, checkpoints, logs."""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import nn
from torch.nn import functional as F
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, ReduceLROnPlateau
from tqdm import tqdm

from encdec.batching import (
    Example,
    bucket_batches,
    collate,
    evaluation_batches,
    padding_fraction,
)
from encdec.checkpoint import load_checkpoint, save_checkpoint
from encdec.config import Config, TrainingConfig
from encdec.corpus import Corpus, build_corpus, tokenizers
from encdec.metrics import bleu, chrf, perplexity
from encdec.model import Seq2Seq, build_model, count_parameters
from encdec.search import decode_examples

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


def make_optimizer(model: Seq2Seq, lr: float) -> torch.optim.Adam:
    # The fused kernel updates all weights in one pass: ~5x faster than the default on CPU
    # (benchmarks/speed.py prints the three implementations side by side).
    return torch.optim.Adam(model.parameters(), lr=lr, fused=True)


def warmup_decay_factor(step: int, warmup_steps: int) -> float:
    """The lr multiplier for update `step` + 1: a linear rise to 1, then 1/sqrt decay."""
    update_number = step + 1  # LambdaLR passes the number of updates already made
    return min(update_number / warmup_steps, (warmup_steps / update_number) ** 0.5)


def batch_scheduler(
    optimizer: torch.optim.Optimizer, settings: TrainingConfig
) -> LRScheduler | None:
    """The per-batch schedule of `lr_schedule: warmup_decay`; None for the others."""
    if settings.lr_schedule != "warmup_decay":
        return None
    return LambdaLR(optimizer, partial(warmup_decay_factor, warmup_steps=settings.warmup_steps))


def epoch_scheduler(
    optimizer: torch.optim.Optimizer, settings: TrainingConfig
) -> ReduceLROnPlateau | None:
    """The per-epoch schedule of `lr_schedule: plateau`, fed the selection metric; else None."""
    if settings.lr_schedule != "plateau":
        return None
    return ReduceLROnPlateau(
        optimizer,
        mode="max" if settings.select_by == "bleu" else "min",
        factor=settings.lr_decay_factor,
        patience=settings.lr_patience,
        min_lr=settings.min_lr,
    )


def token_losses(
    logits: torch.Tensor, targets: torch.Tensor, pad_idx: int, label_smoothing: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy over the non-padding targets: plain (reported), smoothed (trained).

    The smoothed loss is PyTorch's `label_smoothing`: (1 - e) * nll + e * mean over words of -log p.
    """
    log_probs = logits.flatten(0, 1).log_softmax(dim=-1)  # (N, V), N = (T-1)*B
    targets = targets.flatten()  # (N,)
    nll = F.nll_loss(log_probs, targets, ignore_index=pad_idx, reduction="sum")
    if label_smoothing == 0.0:
        return nll, nll
    uniform = -log_probs.mean(dim=-1)[targets != pad_idx].sum()  # cross-entropy to uniform
    return nll, (1 - label_smoothing) * nll + label_smoothing * uniform


def optimizer_step(
    model: Seq2Seq,
    loss: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    clip: float,
    scheduler: LRScheduler | None,
) -> None:
    """One optimizer step on `loss`, the gradient norm clipped to `clip`; then the lr schedule's."""
    optimizer.zero_grad()
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), clip)
    optimizer.step()
    if scheduler is not None:
        scheduler.step()


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
    label_smoothing: float = 0.0,
    scheduler: LRScheduler | None = None,
) -> EpochResult:
    """One pass over `batches`; trains when an optimizer is given, else only measures the loss.

    The reported loss is the plain cross-entropy even when the update uses `label_smoothing`.
    """
    model.train(optimizer is not None)
    total_loss, total_tokens, start = 0.0, 0, time.perf_counter()
    bar = tqdm(batches[:max_steps], desc=description, leave=False, disable=None)
    with torch.set_grad_enabled(optimizer is not None):
        for indices in bar:
            batch = collate(examples, indices, pad_idx)
            logits = model(batch.src, batch.src_lengths, batch.trg, teacher_forcing_ratio)
            # The shifted loss: the prediction at step t is scored against trg[t + 1].
            loss_sum, smoothed_sum = token_losses(logits, batch.trg[1:], pad_idx, label_smoothing)
            n_tokens = batch.n_target_tokens
            if optimizer is not None:
                optimizer_step(model, smoothed_sum / n_tokens, optimizer, clip, scheduler)
            total_loss += loss_sum.item()
            total_tokens += n_tokens
            bar.set_postfix(
                loss=f"{total_loss / total_tokens:.3f}",
                tok_s=f"{total_tokens / (time.perf_counter() - start):.0f}",
            )
    return EpochResult(total_loss / total_tokens, total_tokens, time.perf_counter() - start)


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


def corpus_scores(model: Seq2Seq, corpus: Corpus, split: str, config: Config) -> dict:
    """sacreBLEU's BLEU and chrF of greedy translations of one split against its raw references."""
    greedy = dataclasses.replace(config.decoding, beam_size=1, temperature=0.0)
    hypotheses = decode_examples(model, corpus.examples[split], corpus.trg_vocab, greedy)
    _, trg_tokenizer = tokenizers(config.data)
    hypotheses = [
        trg_tokenizer.detokenize(corpus.trg_vocab.decode(best.ids)) for best, *_ in hypotheses
    ]
    references = [reference for _, reference in corpus.pairs[split]]
    return {"bleu": bleu(hypotheses, references), "chrf": chrf(hypotheses, references)}


def evaluate_split(model: Seq2Seq, corpus: Corpus, split: str, config: Config) -> dict:
    """Loss and perplexity with teacher forcing off (the textbook's) and on, BLEU and chrF."""
    examples, pad_idx = corpus.examples[split], corpus.trg_vocab.pad_idx
    batches = evaluation_batches(examples, config.training.batch_size)
    free = run_epoch(model, examples, batches, pad_idx, teacher_forcing_ratio=0.0)
    forced = run_epoch(model, examples, batches, pad_idx, teacher_forcing_ratio=1.0)
    scores = corpus_scores(model, corpus, split, config)
    return {
        f"{split}_loss": free.loss,
        f"{split}_ppl": free.ppl,
        f"{split}_teacher_forced_loss": forced.loss,
        f"{split}_teacher_forced_ppl": forced.ppl,
        f"{split}_bleu": scores["bleu"],
        f"{split}_chrf": scores["chrf"],
    }


def _format_epoch(record: dict, epochs: int) -> str:
    minutes, seconds = divmod(int(record["epoch_seconds"]), 60)
    return (
        f"epoch {record['epoch']:2d}/{epochs} | {minutes}m {seconds:02d}s | "
        f"train loss {record['train_loss']:.3f} ppl {record['train_ppl']:8.2f} | "
        f"valid (teacher forcing off) loss {record['valid_loss']:.3f} "
        f"ppl {record['valid_ppl']:8.2f} | "
        f"valid (teacher-forced) ppl {record['valid_teacher_forced_ppl']:7.2f} | "
        f"valid BLEU {record['valid_bleu']:5.2f} chrF {record['valid_chrf']:5.2f} | "
        f"lr {record['lr']:.2e} | {record['train_tokens_per_s']:,.0f} tok/s"
    )


def _log_record(record: dict, epochs: int, metrics_path: Path) -> None:
    """The epoch's line in train.log and its JSON line in metrics.jsonl."""
    log.info(_format_epoch(record, epochs))
    with metrics_path.open("a", encoding="utf-8") as file:
        file.write(json.dumps(record) + "\n")


@dataclass
class Selection:
    """The validation metric that picks best.pt (`select_by`): its best value and since when."""

    metric: str  # "loss" (lower is better) or "bleu" (higher is better)
    best: float | None = None
    best_epoch: int = 0
    stalled_epochs: int = 0  # epochs in a row without improvement

    @property
    def key(self) -> str:
        return f"valid_{self.metric}"

    def observe(self, record: dict) -> bool:
        """Take in one epoch's record; True when it is the new best."""
        value = record[self.key]
        higher_is_better = self.metric == "bleu"
        if self.best is None or (value > self.best if higher_is_better else value < self.best):
            self.best, self.best_epoch, self.stalled_epochs = value, record["epoch"], 0
            return True
        self.stalled_epochs += 1
        return False


def _stops_early(selection: Selection, patience: int | None, epoch: int) -> bool:
    """Whether `patience` epochs have passed without improvement; logs the stop."""
    if patience is None or selection.stalled_epochs < patience:
        return False
    log.info(
        "early stopping after epoch %d: valid %s has not improved for %d epochs "
        "(best %.3f at epoch %d)",
        epoch,
        selection.metric,
        selection.stalled_epochs,
        selection.best,
        selection.best_epoch,
    )
    return True


def _test_best(model: Seq2Seq, corpus: Corpus, config: Config, out_dir: Path) -> dict:
    """Load best.pt into `model` and score it on the test split."""
    model.load_state_dict(load_checkpoint(out_dir / "best.pt")["model"])
    test = evaluate_split(model, corpus, "test", config)
    log.info(
        "test (best checkpoint): teacher forcing off loss %.3f ppl %.2f | "
        "teacher-forced ppl %.2f | BLEU %.2f chrF %.2f",
        test["test_loss"],
        test["test_ppl"],
        test["test_teacher_forced_ppl"],
        test["test_bleu"],
        test["test_chrf"],
    )
    return test


def _describe(corpus: Corpus, model: Seq2Seq) -> None:
    log.info("data: %s", ", ".join(f"{s} {len(e):,}" for s, e in corpus.examples.items()))
    if corpus.skipped:
        log.info("skipped training pairs: %s", corpus.skipped)
    log.info(
        "vocabulary: source %s, target %s",
        f"{len(corpus.src_vocab):,}",
        f"{len(corpus.trg_vocab):,}",
    )
    log.info("model parameters: %s", f"{count_parameters(model):,}")


def train(config: Config, out_dir: str | Path, quiet: bool = False) -> dict:
    """Train the model `config` describes; writes best.pt, metrics.jsonl and train.log."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _setup_logging(out_dir, quiet)
    seed_everything(config.training.seed)
    corpus = build_corpus(config.data)
    model = build_model(config.model, len(corpus.src_vocab), len(corpus.trg_vocab))
    _describe(corpus, model)
    (out_dir / "config.yaml").write_text(
        yaml.safe_dump(config.to_dict(), sort_keys=False), encoding="utf-8"
    )
    settings, train_examples = config.training, corpus.examples["train"]
    optimizer = make_optimizer(model, settings.lr)
    per_batch = batch_scheduler(optimizer, settings)  # warmup_decay, else None
    per_epoch = epoch_scheduler(optimizer, settings)  # plateau, else None
    selection = Selection(settings.select_by)
    data_order = random.Random(settings.seed)
    train_seconds = 0.0
    metrics_path = out_dir / "metrics.jsonl"
    metrics_path.unlink(missing_ok=True)
    for epoch in range(1, settings.epochs + 1):
        batches = bucket_batches(
            train_examples,
            settings.batch_size,
            settings.bucket_pool,
            data_order,
            settings.batch_tokens,
        )
        if epoch == 1:
            padding = padding_fraction(train_examples, batches)
            log.info("batches per epoch: %d, padding %.1f%%", len(batches), 100 * padding)
        result = run_epoch(
            model,
            train_examples,
            batches,
            corpus.trg_vocab.pad_idx,
            settings.teacher_forcing_ratio,
            optimizer,
            settings.clip,
            settings.max_steps,
            f"epoch {epoch}",
            label_smoothing=settings.label_smoothing,
            scheduler=per_batch,
        )
        train_seconds += result.seconds
        record = {
            "epoch": epoch,
            "train_loss": result.loss,
            "train_ppl": result.ppl,
            **evaluate_split(model, corpus, "valid", config),
            "lr": optimizer.param_groups[0]["lr"],  # after the epoch's updates
            "epoch_seconds": result.seconds,
            "train_seconds_total": train_seconds,
            "train_tokens_per_s": result.tokens / result.seconds,
        }
        _log_record(record, settings.epochs, metrics_path)
        if selection.observe(record):
            best = {"epoch": epoch, selection.key: selection.best}
            save_checkpoint(checkpoint_state(model, corpus, config, **best), out_dir / "best.pt")
        if per_epoch is not None:
            per_epoch.step(record[selection.key])
        if _stops_early(selection, settings.patience, epoch):
            break
    return _test_best(model, corpus, config, out_dir)
