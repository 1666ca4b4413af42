"""Training: the epoch loop, validation with and without teacher forcing, best.pt, early stopping.

A run survives being stopped: last.pt holds everything it needs to go on bit for bit
(`train(..., resume=True)`, see run_state.py), SIGINT and SIGTERM save it first
(stop_signals.py), and a non-finite loss stops before the weights are spoilt (steps.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import random
import shutil
import tempfile
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from encdec import evaluation
from encdec.batching import bucket_batches, padding_fraction, shard, splittable
from encdec.checkpoint import checkpoint_state, load_checkpoint, save_checkpoint
from encdec.config import Config, check_every_key_counts, from_dict
from encdec.corpus import Corpus, build_corpus, check_data_config
from encdec.distributed import (
    Processes,
    check_replicas_agree,
    from_main,
    job,
    run_on_main,
    sum_across,
)
from encdec.errors import EncdecError
from encdec.metrics import perplexity
from encdec.model import Seq2Seq, build_model, count_parameters
from encdec.prepared import with_prepared_settings
from encdec.progress import progress_bar, silence_bars
from encdec.reporting import (
    describe,
    log_record,
    logging_for_run,
    tensorboard_writer,
    write_scalars,
)
from encdec.run_state import (
    Progress,
    Run,
    Selection,
    keep_records_through,
    load_last,
    reconsider_finishing,
    restore,
    resume_config,
    resume_state,
)
from encdec.steps import (
    NonFiniteLoss,
    batch_losses,
    batch_scheduler,
    epoch_scheduler,
    make_optimizer,
    optimizer_step,
    seed_everything,
    teacher_forcing_coins,
)
from encdec.stop_signals import StopSignals, catching_stop_signals
from encdec.translator import Translator

log = logging.getLogger("encdec")


def evaluate_split(model: Seq2Seq, corpus: Corpus, split: str, config: Config) -> dict:
    """Loss and perplexity with teacher forcing off (the textbook's) and on; greedy BLEU and chrF.

    The scores are those of `encdec evaluate` with greedy decoding (evaluation.py).
    """
    subwords = (corpus.src_tokenizer.subwords, corpus.trg_tokenizer.subwords)
    translator = Translator(model, config, corpus.src_vocab, corpus.trg_vocab, subwords)
    greedy = {"beam_size": 1, "temperature": 0.0, "unk_replace": False}
    scores = evaluation.evaluate(translator, corpus.pairs[split], description=split, **greedy)
    forced_loss = evaluation.corpus_loss(
        model,
        corpus.ids[split],
        corpus.trg_vocab.pad_idx,
        config.training.batch_size,
        teacher_forcing_ratio=1.0,
        description=f"{split} forced",
    )
    return {f"{split}_{key}": value for key, value in scores.items()} | {
        f"{split}_teacher_forced_loss": forced_loss,
        f"{split}_teacher_forced_ppl": perplexity(forced_loss),
    }


def _stops_early(selection: Selection, patience: int | None, epoch: int) -> bool:
    """Whether `patience` epochs have passed without improvement; logs the stop."""
    if not selection.out_of_patience(patience):
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


def _check_precision(precision: str, device: torch.device) -> None:
    if precision != "fp32" and device.type != "cuda":
        raise EncdecError(
            f"training.precision {precision} is mixed precision for CUDA GPUs; "
            f"on {device} use fp32 (the default)"
        )


@contextlib.contextmanager
def deterministic_kernels(on: bool) -> Iterator[None]:
    """With `on` (training.deterministic), GPU kernels that give the same bits every time.

    cuBLAS reads CUBLAS_WORKSPACE_CONFIG when it starts, at the process's first GPU matrix product.
    """
    if not on:
        yield
        return
    previous = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )
    os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = previous[2:]


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
    describe(corpus, model)
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
        teacher_forcing=torch.Generator().manual_seed(settings.seed),
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


def _resumed_run(
    state: dict, config: Config | None, epochs: int | None, out_dir: Path, processes: Processes
) -> Run:
    """Rebuild the run last.pt describes; metrics.jsonl forgets the epochs it will redo."""
    stored = from_dict(state["config"])
    run = _build_run(resume_config(stored, config, epochs), out_dir, processes)
    restore(run, state)
    reconsider_finishing(run)
    progress = run.progress
    if processes.is_main:
        keep_records_through(out_dir / "metrics.jsonl", progress.epochs_done)
    log.info(
        "resuming from last.pt: epoch %d, step %d of %d%s",
        progress.epoch,
        progress.step,
        len(progress.batches),
        " (validated)" if progress.validated else "",
    )
    return run


def _begin_epoch(run: Run) -> None:
    """Move on to the next epoch and draw its batch order from the data_order generator."""
    settings, pairs = run.config.training, run.corpus.ids["train"]
    # one draw of the run's generator seeds numpy's, which shuffles millions of pairs at once
    epoch_order = np.random.default_rng(run.data_order.getrandbits(64))
    batches = bucket_batches(
        pairs, settings.batch_size, settings.bucket_pool, epoch_order, settings.batch_tokens
    )
    batches = splittable(batches, run.processes.world_size)
    epoch = run.progress.epoch + 1
    if epoch == 1:
        padding = padding_fraction(pairs, batches)
        log.info("batches per epoch: %d, padding %.1f%%", len(batches), 100 * padding)
    run.progress = Progress(
        epoch=epoch,
        batches=batches[: settings.max_steps],
        train_seconds_total=run.progress.train_seconds_total,
        validated=False,
    )


def _train_step(run: Run, indices: np.ndarray, stop: StopSignals) -> bool:
    """One update on one batch; the epoch's loss, tokens, time and step move on with it.

    With several processes each one computes the loss of its share of the batch, and they all
    take the same step: the one a single process would take on the whole batch. Returns whether
    a stop signal came to any process; all of them learn it in the same step.
    """
    settings, progress, processes = run.config.training, run.progress, run.processes
    start = time.perf_counter()
    pairs, ratio = run.corpus.ids["train"], settings.teacher_forcing_ratio
    # drawn for the whole batch, so every process reads the same coins for its share
    coins = teacher_forcing_coins(ratio, pairs, indices, run.teacher_forcing)
    loss_sum, smoothed_sum, n_tokens = batch_losses(
        run.trainable,
        pairs,
        shard(indices, processes.rank, processes.world_size),
        run.corpus.trg_vocab.pad_idx,
        ratio,
        settings.label_smoothing,
        settings.precision,
        coins,
    )
    # one all-reduce carries the losses, the token counts and the processes' stop signals
    batch_loss_sum, batch_tokens, stop_votes = sum_across(
        [loss_sum.item(), n_tokens, stop.vote()], processes
    )
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
    return stop_votes > 0


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
        stopping = _train_step(run, indices, stop)
        bar.set_postfix(
            loss=f"{progress.epoch_loss_sum / progress.epoch_tokens:.3f}",
            tok_s=f"{progress.epoch_tokens / progress.epoch_seconds:.0f}",
        )
        if stopping or (every and progress.step % every == 0):
            _save(resume_state(run), run, "last.pt")
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
        log_record(record, settings.epochs, run.out_dir / "metrics.jsonl")
    if run.board is not None:
        write_scalars(run.board, record)
    is_best = selection.observe(record)
    if run.per_epoch is not None:
        run.per_epoch.step(record[selection.key])
    progress.validated = True
    progress.finished = progress.epoch >= settings.epochs or _stops_early(
        selection, settings.patience, progress.epoch
    )
    if is_best:  # best.pt before last.pt: a crash between them redoes this epoch's end
        best = {"epoch": progress.epoch, selection.key: selection.best}
        _save(checkpoint_state(run.model, run.corpus, run.config, **best), run, "best.pt")
    if settings.keep_checkpoints:
        _keep_epoch_weights(run, settings.keep_checkpoints)
    _save(resume_state(run), run, "last.pt")
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
    if not resume:  # the whole config, before the run directory or its log is made
        config = dataclasses.replace(config, data=with_prepared_settings(config.data))
        check_every_key_counts(config)
        check_data_config(config.data)
    with job(device) as processes, contextlib.ExitStack() as closing:
        default_dir = Path("runs") / time.strftime("%Y%m%d-%H%M%S")
        out_dir = Path(out_dir or from_main(default_dir, processes))
        state = run_on_main(partial(load_last, out_dir), processes) if resume else None
        run_on_main(partial(_writable_run_dir, out_dir), processes)
        closing.enter_context(logging_for_run(out_dir, quiet, processes))
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
        deterministic = deterministic_kernels(run.config.training.deterministic)
        with deterministic, silence_bars(quiet or not processes.is_main):
            with catching_stop_signals() as stop, _reporting(run) as epoch_bar:
                while not run.progress.finished:
                    _train_epoch(run, stop)
                    _end_epoch(run, stop)
                    epoch_bar.update()
            return _test_best(run)
