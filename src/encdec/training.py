"""Training: the epoch loop, validation with and without teacher forcing, checkpoints, logs.

A run survives being stopped: last.pt holds everything it needs to go on bit for bit
(`train(..., resume=True)`), SIGINT and SIGTERM save it first, and a non-finite loss stops
before the weights are spoilt.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import random
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import yaml
from torch import nn
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, ReduceLROnPlateau
from tqdm import tqdm

from encdec.batching import (
    Example,
    bucket_batches,
    collate,
    evaluation_batches,
    padding_fraction,
    shard,
    splittable,
)
from encdec.checkpoint import (
    atomic_file,
    load_checkpoint,
    restore_rng_states,
    rng_states,
    save_checkpoint,
)
from encdec.config import Config, TrainingConfig, from_dict
from encdec.corpus import Corpus, build_corpus
from encdec.distributed import (
    Processes,
    check_replicas_agree,
    from_main,
    gathered,
    job,
    run_on_main,
    sum_across,
)
from encdec.errors import EncdecError
from encdec.metrics import bleu, chrf, perplexity
from encdec.model import Seq2Seq, build_model, count_parameters
from encdec.progress import LogAboveBars, progress_bar, silence_bars
from encdec.search import decode_examples
from encdec.tokenize import Tokenizer

if TYPE_CHECKING:  # tensorboard is optional: `pip install encdec[tensorboard]`
    from torch.utils.tensorboard import SummaryWriter

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


class NonFiniteLoss(EncdecError):
    """The loss or its gradient is NaN or infinite; the weights were left as they were."""


def optimizer_step(
    model: nn.Module,
    loss: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    clip: float,
    scheduler: LRScheduler | None,
    scaler: torch.amp.GradScaler | None = None,
) -> None:
    """One optimizer step on `loss`, the gradient norm clipped to `clip`; then the lr schedule's.

    Raises NonFiniteLoss, before any weight changes, when the loss or gradient is not finite.
    With fp16's gradient `scaler`, an overflowing gradient is not an error: the scaler skips
    that step and lowers its scale.
    """
    optimizer.zero_grad()
    (loss if scaler is None else scaler.scale(loss)).backward()
    if scaler is not None:
        scaler.unscale_(optimizer)  # clip the true gradient, not the scaled one
    gradient_norm = nn.utils.clip_grad_norm_(model.parameters(), clip)
    if not torch.isfinite(loss) or scaler is None and not torch.isfinite(gradient_norm):
        raise NonFiniteLoss(
            f"the loss is {loss.item():.4g} and its gradient norm {gradient_norm.item():.4g}"
        )
    if scaler is None:
        optimizer.step()
    else:
        scaler.step(optimizer)
        scaler.update()
    if scheduler is not None:
        scheduler.step()


AUTOCAST_TYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def mixed_precision(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Autocast to `precision` (bf16 or fp16) on `device`; no change for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=AUTOCAST_TYPES[precision])


def batch_losses(
    model: nn.Module,
    examples: Sequence[Example],
    indices: list[int],
    pad_idx: int,
    teacher_forcing_ratio: float,
    label_smoothing: float = 0.0,
    precision: str = "fp32",
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """One batch through the model: summed plain and smoothed losses, and the target tokens."""
    batch = collate(examples, indices, pad_idx)
    device = next(model.parameters()).device
    src, trg = batch.src.to(device), batch.trg.to(device)
    with mixed_precision(device, precision):
        logits = model(src, batch.src_lengths, trg, teacher_forcing_ratio)
    # The shifted loss: the prediction at step t is scored against trg[t + 1].
    loss_sum, smoothed_sum = token_losses(logits.float(), trg[1:], pad_idx, label_smoothing)
    return loss_sum, smoothed_sum, batch.n_target_tokens


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
    bar = progress_bar(batches[:max_steps], desc=description, leave=False)
    with torch.set_grad_enabled(optimizer is not None):
        for indices in bar:
            loss_sum, smoothed_sum, n_tokens = batch_losses(
                model, examples, indices, pad_idx, teacher_forcing_ratio, label_smoothing
            )
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
        "src_subwords": _serialized_subwords(corpus.src_tokenizer),
        "trg_subwords": _serialized_subwords(corpus.trg_tokenizer),
        **extra,
    }


def _serialized_subwords(tokenizer: Tokenizer) -> str | None:
    return tokenizer.subwords.serialized if tokenizer.subwords is not None else None


def _setup_logging(out_dir: Path, quiet: bool, processes: Processes) -> None:
    """train.log (and stderr unless `quiet`) on rank 0; the other processes log only warnings."""
    log.handlers.clear()
    log.setLevel(logging.INFO if processes.is_main else logging.WARNING)
    if not processes.is_main:
        return
    file_handler = logging.FileHandler(out_dir / "train.log", encoding="utf-8")
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    log.addHandler(file_handler)
    if not quiet:
        log.addHandler(LogAboveBars())


def corpus_scores(model: Seq2Seq, corpus: Corpus, split: str, config: Config) -> dict:
    """sacreBLEU's BLEU and chrF of greedy translations of one split against its raw references."""
    greedy = dataclasses.replace(config.decoding, beam_size=1, temperature=0.0)
    hypotheses = decode_examples(model, corpus.examples[split], corpus.trg_vocab, greedy)
    hypotheses = [
        corpus.trg_tokenizer.detokenize(corpus.trg_vocab.decode(best.ids))
        for best, *_ in hypotheses
    ]
    references = [reference for _, reference in corpus.pairs[split]]
    return {"bleu": bleu(hypotheses, references), "chrf": chrf(hypotheses, references)}


def evaluate_split(model: Seq2Seq, corpus: Corpus, split: str, config: Config) -> dict:
    """Loss and perplexity with teacher forcing off (the textbook's) and on, BLEU and chrF."""
    examples, pad_idx = corpus.examples[split], corpus.trg_vocab.pad_idx
    batches = evaluation_batches(examples, config.training.batch_size)
    free = run_epoch(model, examples, batches, pad_idx, 0.0, description=f"{split} loss")
    forced = run_epoch(model, examples, batches, pad_idx, 1.0, description=f"{split} forced")
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


# TensorBoard tag -> metrics.jsonl key, written once per epoch
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


def tensorboard_writer(log_dir: Path, first_epoch: int) -> SummaryWriter | None:
    """A SummaryWriter into `log_dir` when tensorboard is installed, else None.

    Events from `first_epoch` on left by an earlier (interrupted) run are hidden: they are redone.
    """
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(log_dir), purge_step=first_epoch)


def _write_scalars(board: SummaryWriter, record: dict) -> None:
    """The epoch's losses, perplexities, BLEU, chrF and lr, at step = epoch; flushed at once."""
    for tag, key in TENSORBOARD_SCALARS.items():
        board.add_scalar(tag, record[key], global_step=record["epoch"])
    board.flush()


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


def _test_best(run: Run) -> dict:
    """Load best.pt into the model and score it on the test split (on rank 0; all get it)."""
    return run_on_main(partial(_test_checkpoint, run, run.out_dir / "best.pt"), run.processes)


def _test_checkpoint(run: Run, path: Path) -> dict:
    run.model.load_state_dict(load_checkpoint(path)["model"])
    test = evaluate_split(run.model, run.corpus, "test", run.config)
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
    if corpus.truncated:
        log.info("training pairs cut to max_len: %s", f"{corpus.truncated:,}")
    log.info(
        "vocabulary: source %s, target %s",
        f"{len(corpus.src_vocab):,}",
        f"{len(corpus.trg_vocab):,}",
    )
    log.info("model parameters: %s", f"{count_parameters(model):,}")


@dataclass
class Progress:
    """How far a run has got; with weights, optimizer, schedules and RNGs, all a resume needs."""

    epoch: int = 0  # the epoch being trained, or just finished when `validated`
    step: int = 0  # batches of `batches` done
    batches: list[list[int]] = field(default_factory=list)  # this epoch's batch order
    epoch_loss_sum: float = 0.0  # summed cross-entropy of this epoch's batches so far
    epoch_tokens: int = 0
    epoch_seconds: float = 0.0
    train_seconds_total: float = 0.0  # of the epochs before this one
    validated: bool = True  # the epoch's end (validation, best.pt, plateau) is done
    finished: bool = False  # no epoch is left: the last one is done or early stopping struck

    @property
    def epochs_done(self) -> int:
        """Epochs trained and validated; an epoch whose end was not reached does not count."""
        return self.epoch if self.validated else self.epoch - 1


@dataclass
class Run:
    """A training run in memory: what last.pt saves and a resume rebuilds."""

    config: Config
    corpus: Corpus
    model: Seq2Seq
    optimizer: torch.optim.Optimizer
    per_batch: LRScheduler | None  # warmup_decay, else None
    per_epoch: ReduceLROnPlateau | None  # plateau, else None
    selection: Selection
    data_order: random.Random  # draws each epoch's batch order
    progress: Progress
    out_dir: Path
    processes: Processes  # this process's rank among those of a torchrun job, and its device
    trainable: nn.Module  # the model, wrapped in DistributedDataParallel when there are several
    scaler: torch.amp.GradScaler | None = None  # fp16's gradient scaler
    board: SummaryWriter | None = None  # TensorBoard's writer while training, if installed


class TrainingStopped(KeyboardInterrupt):
    """Training stopped on SIGINT or SIGTERM after saving last.pt; exit with `exit_code`."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code  # 128 + the signal's number, as a shell reports it


class StopSignals:
    """SIGINT and SIGTERM ask training to stop after the current step; a second SIGINT at once."""

    def __init__(self) -> None:
        self.signal_number: int | None = None

    def handle(self, signal_number: int, frame: object) -> None:
        # no logging or printing here: a handler may interrupt the very stream it would write to
        if self.signal_number is not None and signal_number == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal_number = signal_number

    def requested(self, processes: Processes) -> bool:
        """Whether a signal came to any process: all of them stop at the same step."""
        (votes,) = sum_across([float(self.signal_number is not None)], processes)
        return votes > 0

    def raise_stopped(self, run: Run) -> None:
        """Raise TrainingStopped; last.pt must hold the current state."""
        number = self.signal_number or signal.SIGTERM  # the signal may have come to another rank
        progress, name = run.progress, signal.Signals(number).name
        message = (
            f"stopped by {name} at epoch {progress.epoch}, step {progress.step} of "
            f"{len(progress.batches)}; last.pt is saved: continue with "
            f"`encdec train --resume {run.out_dir}`"
        )
        log.info(message)
        raise TrainingStopped(message, 128 + number)


@contextlib.contextmanager
def _stop_signals() -> Iterator[StopSignals]:
    """Catch SIGINT and SIGTERM while training (only the main thread may), then restore them."""
    stop = StopSignals()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    numbers = (signal.SIGINT, signal.SIGTERM)
    previous = {number: signal.signal(number, stop.handle) for number in numbers}
    try:
        yield stop
    finally:
        for number, handler in previous.items():
            signal.signal(number, signal.SIG_DFL if handler is None else handler)


def _check_precision(precision: str, device: torch.device) -> None:
    if precision != "fp32" and device.type != "cuda":
        raise EncdecError(
            f"training.precision {precision} is mixed precision for CUDA GPUs; "
            f"on {device} use fp32 (the default)"
        )


def _parallel(model: Seq2Seq, processes: Processes) -> nn.Module:
    """The model as the training step calls it: one replica per process, gradients averaged."""
    if not processes.distributed:
        return model
    device_ids = [processes.device] if processes.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def _build_run(config: Config, out_dir: Path, processes: Processes) -> Run:
    """A fresh run of `config`: seeded, with corpus, model, optimizer and schedules."""
    settings = config.training
    _check_precision(settings.precision, processes.device)
    seed_everything(settings.seed)
    corpus = build_corpus(config.data)
    model = build_model(config.model, len(corpus.src_vocab), len(corpus.trg_vocab))
    model.to(processes.device)
    _describe(corpus, model)
    if processes.rank:  # same initial weights everywhere, but each process its own dropout
        torch.manual_seed(settings.seed + processes.rank)
    if settings.compile:
        model.encoder.compile(dynamic=True)
        model.decoder.compile(dynamic=True)
    optimizer = make_optimizer(model, settings.lr)
    return Run(
        config=config,
        corpus=corpus,
        model=model,
        optimizer=optimizer,
        per_batch=batch_scheduler(optimizer, settings),
        per_epoch=epoch_scheduler(optimizer, settings),
        selection=Selection(settings.select_by),
        data_order=random.Random(settings.seed),
        progress=Progress(),
        out_dir=out_dir,
        processes=processes,
        trainable=_parallel(model, processes),
        scaler=torch.amp.GradScaler(processes.device.type)
        if settings.precision == "fp16"
        else None,
    )


@contextlib.contextmanager
def _reporting(run: Run) -> Iterator[tqdm]:
    """While training: a bar over epochs, and TensorBoard's writer open."""
    done = run.progress.epochs_done
    if run.processes.is_main:
        run.board = tensorboard_writer(run.out_dir / "tensorboard", first_epoch=done + 1)
    total = run.config.training.epochs
    epoch_bar = progress_bar(total=total, initial=done, desc="epochs", unit="epoch")
    try:
        yield epoch_bar
    finally:
        epoch_bar.close()
        if run.board is not None:
            run.board.close()


def _new_run(config: Config, out_dir: Path, processes: Processes) -> Run:
    """Start a run in `out_dir`: its config.yaml written, any old metrics.jsonl removed."""
    run = _build_run(config, out_dir, processes)
    if processes.is_main:
        (out_dir / "config.yaml").write_text(
            yaml.safe_dump(config.to_dict(), sort_keys=False), encoding="utf-8"
        )
        (out_dir / "metrics.jsonl").unlink(missing_ok=True)
    return run


def _resume_state(run: Run) -> dict:
    """What last.pt holds: a translatable checkpoint plus every state the run goes on from.

    Every process must call it: with several, it gathers each one's random generators.
    """
    by_rank = gathered(rng_states(run.data_order), run.processes)
    return checkpoint_state(
        run.model,
        run.corpus,
        run.config,
        optimizer=run.optimizer.state_dict(),
        per_batch_scheduler=None if run.per_batch is None else run.per_batch.state_dict(),
        per_epoch_scheduler=None if run.per_epoch is None else run.per_epoch.state_dict(),
        rng=by_rank[0],
        rng_by_rank=by_rank,
        scaler=None if run.scaler is None else run.scaler.state_dict(),
        selection=dataclasses.asdict(run.selection),
        **dataclasses.asdict(run.progress),
    )


def _load_last(out_dir: Path) -> dict:
    """out_dir/last.pt, checked to hold the training state a resume needs."""
    path = out_dir / "last.pt"
    if not path.is_file():
        raise EncdecError(f"cannot resume: {path} does not exist (no run was saved there)")
    state = load_checkpoint(path)
    if "optimizer" not in state or "rng" not in state:
        raise EncdecError(f"cannot resume: {path} holds weights but no training state")
    return state


# the settings that only say when training stops: a resumed run may change them to go on longer
STOPPING_KEYS = (("training", "epochs"), ("training", "patience"))


def _resume_config(stored: Config, given: Config | None, epochs: int | None) -> Config:
    """The config last.pt was trained with, to train on until `epochs` if that is given.

    A given config must match the stored one but for data.data_dir and the STOPPING_KEYS.
    """
    if given is not None:
        stored_values, given_values = stored.to_dict(), given.to_dict()
        differences = [
            f"{section}.{key} ({stored_values[section][key]!r} in last.pt, {value!r} given)"
            for section, values in given_values.items()
            for key, value in values.items()
            if value != stored_values[section][key]
            and (section, key) not in (("data", "data_dir"), *STOPPING_KEYS)
        ]
        if differences:
            raise EncdecError(
                "a resumed run keeps the config it started with (but for training.epochs and "
                "training.patience); these differ: " + "; ".join(differences)
            )
    config = given or stored
    if epochs is not None:
        config.training.epochs = epochs
    return config


def _reconsider_finishing(run: Run) -> None:
    """After an epoch's end, decide again whether the run is over: its stopping keys may differ."""
    progress, settings, selection = run.progress, run.config.training, run.selection
    if not progress.validated:
        return
    if progress.epochs_done > settings.epochs:
        raise EncdecError(
            f"cannot resume with training.epochs {settings.epochs}: last.pt has already "
            f"trained {progress.epochs_done} epochs"
        )
    stalled = settings.patience is not None and selection.stalled_epochs >= settings.patience
    progress.finished = progress.epochs_done == settings.epochs or stalled


def _restore(run: Run, state: dict) -> None:
    """Put weights, optimizer, schedules, selection, progress and RNGs back as last.pt has them."""
    vocabularies = (run.corpus.src_vocab.itos, run.corpus.trg_vocab.itos)
    if vocabularies != (state["src_vocab"], state["trg_vocab"]):
        raise EncdecError("cannot resume: the data now gives other vocabularies than last.pt's")
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    if run.per_batch is not None:
        run.per_batch.load_state_dict(state["per_batch_scheduler"])
    if run.per_epoch is not None:
        run.per_epoch.load_state_dict(state["per_epoch_scheduler"])
    if run.scaler is not None and state.get("scaler") is not None:
        run.scaler.load_state_dict(state["scaler"])
    run.selection = Selection(**state["selection"])
    run.progress = Progress(**{key.name: state[key.name] for key in dataclasses.fields(Progress)})
    _restore_rng(run, state)


def _restore_rng(run: Run, state: dict) -> None:
    """Each process's generators as saved; rank 0's for all when the process count changed."""
    by_rank = state.get("rng_by_rank") or [state["rng"]]
    processes = run.processes
    if len(by_rank) == processes.world_size:
        restore_rng_states(by_rank[processes.rank], run.data_order)
        return
    restore_rng_states(state["rng"], run.data_order)
    log.warning(
        "last.pt was saved by %d process(es), resumed by %d: the data order goes on as saved, "
        "but dropout draws differ from an uninterrupted run",
        len(by_rank),
        processes.world_size,
    )


def _resumed_run(
    state: dict, config: Config | None, epochs: int | None, out_dir: Path, processes: Processes
) -> Run:
    """Rebuild the run last.pt describes; metrics.jsonl forgets the epochs it will redo."""
    stored = from_dict(state["config"])
    run = _build_run(_resume_config(stored, config, epochs), out_dir, processes)
    _restore(run, state)
    _reconsider_finishing(run)
    progress = run.progress
    if processes.is_main:
        _keep_records_through(out_dir / "metrics.jsonl", progress.epochs_done)
    log.info(
        "resuming from last.pt: epoch %d, step %d of %d%s",
        progress.epoch,
        progress.step,
        len(progress.batches),
        " (validated)" if progress.validated else "",
    )
    return run


def _epoch_of(line: str) -> int | None:
    """The epoch of one metrics.jsonl line; None for a line cut short by a crash."""
    try:
        return json.loads(line)["epoch"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return None


def _keep_records_through(metrics_path: Path, last_epoch: int) -> None:
    """Drop metrics.jsonl lines after `last_epoch`: the resumed run writes those epochs again."""
    if not metrics_path.is_file():
        return
    lines = metrics_path.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = [line for line in lines if (epoch := _epoch_of(line)) and epoch <= last_epoch]
    if kept != lines:
        with atomic_file(metrics_path) as file:
            file.write("".join(kept).encode("utf-8"))


def _begin_epoch(run: Run) -> None:
    """Move on to the next epoch and draw its batch order from the data_order generator."""
    settings, examples = run.config.training, run.corpus.examples["train"]
    batches = bucket_batches(
        examples, settings.batch_size, settings.bucket_pool, run.data_order, settings.batch_tokens
    )
    batches = splittable(batches, run.processes.world_size)
    epoch = run.progress.epoch + 1
    if epoch == 1:
        padding = padding_fraction(examples, batches)
        log.info("batches per epoch: %d, padding %.1f%%", len(batches), 100 * padding)
    run.progress = Progress(
        epoch=epoch,
        batches=batches[: settings.max_steps],
        train_seconds_total=run.progress.train_seconds_total,
        validated=False,
    )


def _train_step(run: Run, indices: list[int]) -> None:
    """One update on one batch; the epoch's loss, tokens, time and step move on with it.

    With several processes each one computes the loss of its share of the batch, and they all
    take the same step: the one a single process would take on the whole batch.
    """
    settings, progress, processes = run.config.training, run.progress, run.processes
    start = time.perf_counter()
    loss_sum, smoothed_sum, n_tokens = batch_losses(
        run.trainable,
        run.corpus.examples["train"],
        shard(indices, processes.rank, processes.world_size),
        run.corpus.trg_vocab.pad_idx,
        settings.teacher_forcing_ratio,
        settings.label_smoothing,
        settings.precision,
    )
    batch_loss_sum, batch_tokens = sum_across([loss_sum.item(), n_tokens], processes)
    # DDP averages the processes' gradients, so world_size / (the whole batch's tokens) turns
    # that average into the gradient of the whole batch's mean loss
    loss = smoothed_sum * processes.world_size / batch_tokens
    try:
        optimizer_step(run.trainable, loss, run.optimizer, settings.clip, run.per_batch, run.scaler)
    except NonFiniteLoss as error:
        last = run.out_dir / "last.pt"
        kept = f"{last} keeps the last good state" if last.is_file() else "no last.pt is saved yet"
        raise NonFiniteLoss(
            f"training stopped at epoch {progress.epoch}, step {progress.step + 1}: {error}; "
            f"the weights were not updated and {kept}. Try a lower training.lr or training.clip"
        ) from None
    progress.step += 1
    progress.epoch_loss_sum += batch_loss_sum
    progress.epoch_tokens += int(batch_tokens)
    progress.epoch_seconds += time.perf_counter() - start


def _train_epoch(run: Run, stop: StopSignals) -> None:
    """Train on the epoch's batches not yet done; last.pt every `save_every_steps` and on a stop."""
    if run.progress.validated:
        _begin_epoch(run)
    progress, every = run.progress, run.config.training.save_every_steps
    run.trainable.train()
    remaining = progress.batches[progress.step :]
    bar = progress_bar(
        remaining,
        desc=f"epoch {progress.epoch}",
        initial=progress.step,
        total=len(progress.batches),
        leave=False,
    )
    for indices in bar:
        _train_step(run, indices)
        bar.set_postfix(
            loss=f"{progress.epoch_loss_sum / progress.epoch_tokens:.3f}",
            tok_s=f"{progress.epoch_tokens / progress.epoch_seconds:.0f}",
        )
        stopping = stop.requested(run.processes)
        if stopping or (every and progress.step % every == 0):
            _save(_resume_state(run), run, "last.pt")
        if stopping:
            stop.raise_stopped(run)


def _save(state: dict, run: Run, name: str) -> None:
    """Write a checkpoint into the run directory: rank 0 does, the others have the same one."""
    if run.processes.is_main:
        save_checkpoint(state, run.out_dir / name)


def _epoch_record(run: Run) -> dict:
    """The finished epoch's line of metrics.jsonl: training loss, validation scores, lr, time."""
    progress = run.progress
    train_loss = progress.epoch_loss_sum / progress.epoch_tokens
    return {
        "epoch": progress.epoch,
        "train_loss": train_loss,
        "train_ppl": perplexity(train_loss),
        **evaluate_split(run.model, run.corpus, "valid", run.config),
        "lr": run.optimizer.param_groups[0]["lr"],  # after the epoch's updates
        "epoch_seconds": progress.epoch_seconds,
        "train_seconds_total": progress.train_seconds_total,
        "train_tokens_per_s": progress.epoch_tokens / progress.epoch_seconds,
    }


def _end_epoch(run: Run, stop: StopSignals) -> None:
    """Validate, log, keep best.pt, step the plateau schedule, decide to stop; save last.pt."""
    progress, settings, selection = run.progress, run.config.training, run.selection
    progress.train_seconds_total += progress.epoch_seconds
    record = run_on_main(partial(_epoch_record, run), run.processes)  # validation, once
    if run.processes.distributed:
        when = f"after epoch {progress.epoch}"
        record["parameters_sha256"] = check_replicas_agree(run.model, run.processes, when)
    if run.processes.is_main:
        _log_record(record, settings.epochs, run.out_dir / "metrics.jsonl")
    if run.board is not None:
        _write_scalars(run.board, record)
    is_best = selection.observe(record)
    if run.per_epoch is not None:
        run.per_epoch.step(record[selection.key])
    progress.validated = True
    progress.finished = progress.epoch >= settings.epochs or _stops_early(
        selection, settings.patience, progress.epoch
    )
    state = _resume_state(run)
    if is_best:  # best.pt before last.pt: a crash between them redoes this epoch's end
        _save({**state, selection.key: selection.best}, run, "best.pt")
    if settings.keep_checkpoints:
        _keep_epoch_weights(run, settings.keep_checkpoints)
    _save(state, run, "last.pt")
    if stop.requested(run.processes):
        stop.raise_stopped(run)


def _keep_epoch_weights(run: Run, keep: int) -> None:
    """epoch_NNN.pt: this epoch's translatable weights; only the last `keep` of them stay."""
    epoch = run.progress.epoch
    weights = checkpoint_state(run.model, run.corpus, run.config, epoch=epoch)
    _save(weights, run, f"epoch_{epoch:03d}.pt")
    if run.processes.is_main:
        for old in sorted(run.out_dir.glob("epoch_[0-9][0-9][0-9].pt"))[:-keep]:
            old.unlink()


def _writable_run_dir(out_dir: Path) -> None:
    """Create `out_dir` and prove a file can be written there, before any time is spent."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out_dir):
            pass
    except OSError as error:
        raise EncdecError(f"run directory {out_dir} cannot be written: {error}") from None


def _free_space_for_checkpoints(out_dir: Path, model: Seq2Seq) -> None:
    """Refuse to start unless out_dir has room for ~3 checkpoints (last, best, a temporary)."""
    # A checkpoint holds float32 weights and Adam's two moments: 3 x 4 bytes per parameter.
    needed = 3 * count_parameters(model) * 4 * 3
    free = shutil.disk_usage(out_dir).free
    if free < needed:
        raise EncdecError(
            f"run directory {out_dir} has {free / 1e6:,.1f} MB free but its checkpoints need "
            f"about {needed / 1e6:,.1f} MB; free some space or train into another --out"
        )


def train(
    config: Config | None,
    out_dir: str | Path | None = None,
    quiet: bool = False,
    resume: bool = False,
    device: str = "auto",
    epochs: int | None = None,
) -> dict:
    """Train the model `config` describes, or with `resume` go on from out_dir/last.pt.

    Writes last.pt, best.pt, metrics.jsonl, train.log (and tensorboard/, if it is installed)
    into `out_dir` (default: a new runs/YYYYmmdd-HHMMSS); `quiet` keeps logs and progress bars
    off stderr. `device` is auto, cpu, cuda or cuda:N. `epochs`, with `resume`, trains on until
    that many epochs, so a finished run can be extended. Under torchrun every process calls this;
    they train one model together. Returns the best model's test scores.
    """
    if out_dir is None and resume:
        raise EncdecError("resuming needs the run directory to go on from")
    if config is None and not resume:
        raise EncdecError("train needs a config, unless it resumes a run")
    with job(device) as processes:
        default_dir = Path("runs") / time.strftime("%Y%m%d-%H%M%S")
        out_dir = Path(out_dir or from_main(default_dir, processes))
        state = run_on_main(partial(_load_last, out_dir), processes) if resume else None
        run_on_main(partial(_writable_run_dir, out_dir), processes)
        _setup_logging(out_dir, quiet, processes)
        log.info("run directory: %s", out_dir)
        if processes.distributed:
            log.info(
                "processes: %d (%s), one per %s",
                processes.world_size,
                torch.distributed.get_backend(),
                processes.device.type,
            )
        if state is None:
            run = _new_run(config, out_dir, processes)
        else:
            run = _resumed_run(state, config, epochs, out_dir, processes)
        del state  # the saved tensors now live in the run
        run_on_main(partial(_free_space_for_checkpoints, out_dir, run.model), processes)
        with silence_bars(quiet or not processes.is_main):
            with _stop_signals() as stop, _reporting(run) as epoch_bar:
                while not run.progress.finished:
                    _train_epoch(run, stop)
                    _end_epoch(run, stop)
                    epoch_bar.update()
            return _test_best(run)
