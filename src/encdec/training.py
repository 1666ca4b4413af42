"""Training: the epoch loop, validation with and without teacher forcing, best.pt, early stopping.

Runs count epochs and updates (optimizer steps): training.max_updates ends a run mid-epoch,
validate_every_updates validates between epoch ends too, log_every_updates logs progress.

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
from encdec.batching import Batch, bucket_batches, collate, padding_fraction, shard, splittable
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
from encdec.feeding import fed_ahead, pin_batches
from encdec.metrics import perplexity
from encdec.model import Seq2Seq, build_model
from encdec.prepared import with_prepared_settings
from encdec.progress import progress_bar, silence_bars
from encdec.reporting import (
    describe,
    format_updates,
    log_record,
    logging_for_run,
    tensorboard_writer,
    write_scalars,
)
from encdec.run_folder import (
    check_free_space,
    check_it_can_be_made,
    clear_run,
    make_writable,
    refuse_an_existing_run,
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
    updates_spent,
)
from encdec.steps import (
    NonFiniteLoss,
    StepTally,
    batch_scheduler,
    epoch_scheduler,
    make_optimizer,
    seed_everything,
    teacher_forcing_coins,
    train_batch,
)
from encdec.stop_signals import StopSignals, catching_stop_signals
from encdec.translator import Translator
from encdec.vocab import PAD_IDX

log = logging.getLogger("encdec")


def evaluate_split(model: Seq2Seq, corpus: Corpus, split: str, config: Config) -> dict:
    """Loss and perplexity with teacher forcing off (the textbook's) and on; greedy BLEU and chrF.

    The scores are those of `encdec evaluate` with greedy decoding (evaluation.py).
    """
    subwords = (corpus.src_tokenizer.subwords, corpus.trg_tokenizer.subwords)
    translator = Translator(model, config, corpus.src_vocab, corpus.trg_vocab, subwords)
    greedy = {"beam_size": 1, "temperature": 0.0, "unk_replace": False}
    scores = evaluation.evaluate(translator, corpus.pairs[split], description=split, **greedy)
    return {f"{split}_{key}": value for key, value in scores.items()}


def _stops_early(run: Run) -> bool:
    """Whether `patience` validations have passed without improvement; logs the stop."""
    selection, progress = run.selection, run.progress
    if not selection.out_of_patience(run.config.training.patience):
        return False
    if run.config.training.validate_every_updates:
        where, best_at = f"at update {progress.updates}", f"update {selection.best_update}"
        stalled = f"{selection.stalled_validations} validations"
    else:  # each validation is an epoch's end
        where, best_at = f"after epoch {progress.epoch}", f"epoch {selection.best_epoch}"
        stalled = f"{selection.stalled_validations} epochs"
    log.info(
        "early stopping %s: valid %s has not improved for %s (best %.3f at %s)",
        where,
        selection.metric,
        stalled,
        selection.best,
        best_at,
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
    """Refuse mixed precision off a CUDA GPU, before anything is built or made."""
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
    """A fresh run of `config`: seeded, with corpus, model, optimizer and schedules.

    It makes nothing in `out_dir`: data that cannot be read fails here, before the folder exists.
    """
    settings = config.training
    _check_precision(settings.precision, processes.device)
    seed_everything(settings.seed)
    corpus = build_corpus(config.data)
    model = build_model(config.model, len(corpus.src_vocab), len(corpus.trg_vocab))
    model.to(processes.device)
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
        per_validation=epoch_scheduler(optimizer, settings),
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
        tally=StepTally(processes.device),
    )


@contextlib.contextmanager
def _reporting(run: Run) -> Iterator[tqdm]:
    """While training: a bar over epochs, and TensorBoard's writer open."""
    done = run.progress.epochs_done
    if run.processes.is_main:
        first_step = _board_step(run, done + 1, run.progress.validated_update + 1)
        run.board = tensorboard_writer(run.out_dir / "tensorboard", first_step=first_step)
    total = run.config.training.epochs
    epoch_bar = progress_bar(total=total, initial=done, desc="epochs", unit="epoch")
    try:
        yield epoch_bar
    finally:
        epoch_bar.close()
        if run.board is not None:
            run.board.close()


def _board_step(run: Run, epoch: int, update: int) -> int:
    """TensorBoard's step: the update count when validating by updates, else the epoch."""
    return update if run.config.training.validate_every_updates else epoch


def _start_new(run: Run) -> None:
    """Start a run in its folder: its config.yaml written."""
    if run.processes.is_main:
        (run.out_dir / "config.yaml").write_text(
            yaml.safe_dump(run.config.to_dict(), sort_keys=False), encoding="utf-8"
        )


def _go_on_from(run: Run, state: dict) -> None:
    """Put the run back where last.pt has it; metrics.jsonl forgets the validations it redoes."""
    restore(run, state)
    reconsider_finishing(run)
    progress = run.progress
    if run.processes.is_main:
        keep_records_through(run.out_dir / "metrics.jsonl", progress)
    log.info(
        "resuming from last.pt: epoch %d, step %d of %d, update %d%s",
        progress.epoch,
        progress.step,
        len(progress.batches),
        progress.updates,
        " (validated)" if progress.validated else "",
    )


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
        _warn_of_an_unreachable_budget(settings, len(batches[: settings.max_steps]))
    run.progress = Progress(
        epoch=epoch,
        batches=batches[: settings.max_steps],
        train_seconds_total=run.progress.train_seconds_total,
        validated=False,
        updates=run.progress.updates,
        validated_update=run.progress.validated_update,
    )


def _warn_of_an_unreachable_budget(settings, batches_per_epoch: int) -> None:
    """training.epochs ends a run before training.max_updates when it comes first: say so."""
    most = settings.epochs * batches_per_epoch
    if settings.max_updates is not None and most < settings.max_updates:
        log.warning(
            "training.max_updates %d will not be reached: training.epochs %d of %d batches "
            "are %d updates; raise training.epochs to train for the whole budget",
            settings.max_updates,
            settings.epochs,
            batches_per_epoch,
            most,
        )


def _train_step(run: Run, indices: np.ndarray, batch: Batch, stop: StopSignals) -> bool:
    """One update on one batch (`batch`: this process's share of `indices`); the epoch's tokens,
    time and step move on with it, its loss waits on the device (see `_settle`).

    With several processes each one computes the loss of its share of the batch, and they all
    take the same step: the one a single process would take on the whole batch. Returns whether
    a stop signal came to any process; all of them learn it in the same step.
    """
    settings, progress, processes = run.config.training, run.progress, run.processes
    start = time.perf_counter()
    pairs = run.corpus.ids["train"]
    # drawn for the whole batch, so every process reads the same coins for its share
    coins = teacher_forcing_coins(
        settings.teacher_forcing_ratio, pairs, indices, run.teacher_forcing
    )
    step_tokens = int(pairs.trg_lengths[indices].sum()) - len(indices)  # the whole batch's
    train_batch(
        run.trainable,
        batch,
        settings,
        run.optimizer,
        run.per_batch,
        run.tally,
        run.scaler,
        coins,
        step_tokens,
        processes.world_size,
    )
    progress.step += 1
    progress.epoch_tokens += step_tokens
    progress.epoch_seconds += time.perf_counter() - start
    return stop.requested(processes)


def _settle(run: Run) -> None:
    """Read what the steps left on the device: their loss joins the epoch's, and a non-finite
    one stops the run. Every process calls it at the same points, before anything is saved."""
    progress = run.progress
    try:
        loss_sum = run.tally.read(progress.step)
    except NonFiniteLoss as error:
        last = run.out_dir / "last.pt"
        kept = f"{last} keeps the last good state" if last.is_file() else "no last.pt is saved yet"
        raise NonFiniteLoss(
            f"training stopped at epoch {progress.epoch}, {error}; the weights were not updated "
            f"from it on and {kept}. Try a lower training.lr or training.clip"
        ) from None
    (progress_loss,) = sum_across([loss_sum], run.processes)
    progress.epoch_loss_sum += progress_loss


def _save_last(run: Run) -> None:
    """last.pt, after the steps' device-side loss is read (and checked)."""
    _settle(run)
    _save(resume_state(run), run, "last.pt")


def _train_epoch(run: Run, stop: StopSignals) -> None:
    """Train on the epoch's batches not yet done, until they or training.max_updates run out.

    Validates every `validate_every_updates` and logs every `log_every_updates` updates; writes
    last.pt every `save_every_steps` batches, at each validation and on a stop.
    """
    if run.progress.validated:
        _begin_epoch(run)
    progress, settings = run.progress, run.config.training
    run.trainable.train()
    _validate_if_due(run, stop)  # one that last.pt was saved just before, by a stop signal
    bar = progress_bar(
        desc=f"epoch {progress.epoch}",
        initial=progress.step,
        total=len(progress.batches),
        leave=False,
    )
    shown = {}  # the bar's loss, as of the last log line (it is read from the device then)
    with bar, contextlib.closing(_fed_batches(run)) as batches:
        for indices, batch in batches:
            if progress.finished or updates_spent(progress, settings.max_updates):
                break
            stopping = _train_step(run, indices, batch, stop)
            progress.updates += 1
            if stopping:
                _save_last(run)
                stop.raise_stopped(run)
            if _log_if_due(run):
                shown["loss"] = f"{progress.epoch_loss_sum / progress.epoch_tokens:.3f}"
            bar.update()
            bar.set_postfix(
                shown | {"tok_s": f"{progress.epoch_tokens / progress.epoch_seconds:.0f}"}
            )
            validated = _validate_if_due(run, stop)
            every = settings.save_every_steps
            if not validated and every and progress.step % every == 0:
                _save_last(run)


def _fed_batches(run: Run) -> Iterator[tuple[np.ndarray, Batch]]:
    """The epoch's batches not yet done, each this process's share, padded (and pinned for a
    GPU) ahead of the step by a background thread."""
    pairs, processes, progress = run.corpus.ids["train"], run.processes, run.progress

    def share(indices: np.ndarray) -> Batch:
        return collate(pairs, shard(indices, processes.rank, processes.world_size), PAD_IDX)

    remaining = progress.batches[progress.step :]
    return fed_ahead(remaining, share, pin_batches(processes.device))


def _log_if_due(run: Run) -> bool:
    """Every `log_every_updates` updates, a line in train.log and on stderr (a terminal or not);
    whether it was due (the steps' loss is then read from the device)."""
    progress, settings = run.progress, run.config.training
    every = settings.log_every_updates
    if not every or progress.updates % every:
        return False
    _settle(run)
    train_loss = progress.epoch_loss_sum / progress.epoch_tokens
    line = {
        "epoch": progress.epoch,
        "update": progress.updates,
        "train_loss": train_loss,
        "train_ppl": perplexity(train_loss),
        "lr": run.optimizer.param_groups[0]["lr"],
        "train_tokens_per_s": progress.epoch_tokens / progress.epoch_seconds,
    }
    log.info(format_updates(line, settings))
    return True


def _validate_if_due(run: Run, stop: StopSignals) -> bool:
    """Validate between epoch ends when `validate_every_updates` says so; whether it did."""
    progress, every = run.progress, run.config.training.validate_every_updates
    due = every and progress.updates % every == 0 and progress.validated_update < progress.updates
    if not due or _epoch_ends_here(run):  # the epoch's end validates then
        return False
    _validate(run)
    progress.finished = _stops_early(run)
    _save_last(run)
    if stop.requested(run.processes):
        stop.raise_stopped(run)
    return True


def _epoch_ends_here(run: Run) -> bool:
    """Whether the epoch ends where the run stands: its batches or training.max_updates ran out."""
    progress = run.progress
    done = progress.step == len(progress.batches)
    return done or updates_spent(progress, run.config.training.max_updates)


def _save(state: dict, run: Run, name: str) -> None:
    """Write a checkpoint into the run directory: rank 0 does, the others have the same one."""
    if run.processes.is_main:
        save_checkpoint(state, run.out_dir / name)


def _validation_record(run: Run) -> dict:
    """A validation's line of metrics.jsonl: training loss of the epoch so far, validation
    scores, lr, time; `update` counts the run's updates and `epoch_end` says where it stands."""
    progress = run.progress
    train_loss = progress.epoch_loss_sum / progress.epoch_tokens
    return {
        "epoch": progress.epoch,
        "update": progress.updates,
        "epoch_end": _epoch_ends_here(run),
        "train_loss": train_loss,
        "train_ppl": perplexity(train_loss),
        **evaluate_split(run.model, run.corpus, "valid", run.config),
        "lr": run.optimizer.param_groups[0]["lr"],  # after the epoch's updates so far
        "epoch_seconds": progress.epoch_seconds,
        "train_seconds_total": progress.train_seconds_total + progress.epoch_seconds,
        "train_tokens_per_s": progress.epoch_tokens / progress.epoch_seconds,
    }


def _validate(run: Run) -> None:
    """Validate, log and record it, keep best.pt if it is the best, step the plateau schedule."""
    progress, selection = run.progress, run.selection
    _settle(run)
    record = run_on_main(partial(_validation_record, run), run.processes)  # validation, once
    run.trainable.train()  # evaluation switched dropout off; the epoch may go on after this
    if run.processes.distributed:
        when = f"after update {progress.updates}"
        record["parameters_sha256"] = check_replicas_agree(run.model, run.processes, when)
    if run.processes.is_main:
        log_record(record, run.config.training, run.out_dir / "metrics.jsonl")
    if run.board is not None:
        write_scalars(run.board, record, _board_step(run, progress.epoch, progress.updates))
    is_best = selection.observe(record)
    if run.per_validation is not None:
        run.per_validation.step(record[selection.key])
    progress.validated_update = progress.updates
    if is_best:  # best.pt before last.pt: a crash between them redoes this validation
        best = {"epoch": progress.epoch, "update": progress.updates, selection.key: selection.best}
        _save(checkpoint_state(run.model, run.corpus, run.config, **best), run, "best.pt")


def _end_epoch(run: Run, stop: StopSignals) -> None:
    """Validate, keep best.pt, step the plateau schedule, decide to stop; save last.pt.

    An epoch ends when its batches or training.max_updates run out.
    """
    progress, settings = run.progress, run.config.training
    _validate(run)
    progress.train_seconds_total += progress.epoch_seconds
    progress.validated = True
    if updates_spent(progress, settings.max_updates):
        log.info("training.max_updates %d reached in epoch %d", progress.updates, progress.epoch)
    progress.finished = (
        progress.epoch >= settings.epochs
        or updates_spent(progress, settings.max_updates)
        or _stops_early(run)
    )
    if settings.keep_checkpoints:
        _keep_epoch_weights(run, settings.keep_checkpoints)
    _save_last(run)
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


def _check_arguments(config: Config | None, out_dir, resume: bool, overwrite: bool) -> None:
    """train()'s arguments that go together, or not at all."""
    if out_dir is None and resume:
        raise EncdecError("resuming needs the run directory to go on from")
    if config is None and not resume:
        raise EncdecError("train needs a config, unless it resumes a run")
    if resume and overwrite:
        raise EncdecError("a run is either resumed or overwritten, not both")


def _prepare_folder(out_dir: Path, resume: bool, overwrite: bool, processes: Processes) -> None:
    """Before the run is built: last.pt to resume from, or a folder free of any other run."""
    if not resume:
        run_on_main(partial(refuse_an_existing_run, out_dir, overwrite), processes)
    run_on_main(partial(check_it_can_be_made, out_dir), processes)


def _make_folder(run: Run, overwrite: bool) -> None:
    """Once the run can start: room for its checkpoints, an old run cleared, the folder made."""
    out_dir, processes = run.out_dir, run.processes
    run_on_main(partial(check_free_space, out_dir, run.model), processes)
    if overwrite:
        run_on_main(partial(clear_run, out_dir), processes)
    run_on_main(partial(make_writable, out_dir), processes)


def train(
    config: Config | None,
    out_dir: str | Path | None = None,
    quiet: bool = False,
    resume: bool = False,
    device: str = "auto",
    epochs: int | None = None,
    overwrite: bool = False,
    max_updates: int | None = None,
) -> dict:
    """Train the model `config` describes, or with `resume` go on from out_dir/last.pt.

    Writes last.pt, best.pt, metrics.jsonl, train.log (and tensorboard/, if it is installed)
    into `out_dir` (default: a new runs/YYYYmmdd-HHMMSS), which must not hold another run unless
    `overwrite` deletes it; nothing is made there until the run can start. `quiet` keeps logs and
    progress bars off stderr. `device` is auto, cpu, cuda or cuda:N. `epochs` and `max_updates`,
    with `resume`, train on until that many, so a finished run can be extended. Under torchrun
    every process calls this; they train one model together. Returns the best model's test scores.
    """
    _check_arguments(config, out_dir, resume, overwrite)
    if not resume:  # the whole config, before the run directory or its log is made
        config = dataclasses.replace(config, data=with_prepared_settings(config.data))
        check_every_key_counts(config)
        check_data_config(config.data)
    with job(device) as processes, contextlib.ExitStack() as closing:
        closing.enter_context(silence_bars(quiet or not processes.is_main))  # preparing's too
        default_dir = Path("runs") / time.strftime("%Y%m%d-%H%M%S")
        out_dir = Path(out_dir or from_main(default_dir, processes))
        _prepare_folder(out_dir, resume, overwrite, processes)
        state = run_on_main(partial(load_last, out_dir), processes) if resume else None
        if state is not None:
            stored = from_dict(state["config"])
            config = resume_config(stored, config, epochs=epochs, max_updates=max_updates)
        run = _build_run(config, out_dir, processes)
        _make_folder(run, overwrite)
        closing.enter_context(logging_for_run(out_dir, quiet, processes))
        log.info("run directory: %s", out_dir)
        if processes.distributed:
            log.info(
                "processes: %d (%s), one per %s",
                processes.world_size,
                torch.distributed.get_backend(),
                processes.device.type,
            )
        describe(run.corpus, run.model)
        if state is None:
            _start_new(run)
        else:
            _go_on_from(run, state)
        del state  # the saved tensors now live in the run
        deterministic = deterministic_kernels(run.config.training.deterministic)
        with deterministic:
            with catching_stop_signals() as stop, _reporting(run) as epoch_bar:
                while not run.progress.finished:
                    _train_epoch(run, stop)
                    if not run.progress.finished:  # early stopping may strike between epoch ends
                        _end_epoch(run, stop)
                    epoch_bar.update()
            return _test_best(run)
