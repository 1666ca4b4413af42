"""A training run in memory, and last.pt: what it saves of a run and how a resume restores it."""

from __future__ import annotations

import dataclasses
import json
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from encdec.checkpoint import (
    atomic_file,
    checkpoint_state,
    load_checkpoint,
    remove_half_written,
    restore_rng_states,
    rng_states,
)
from encdec.config import Config
from encdec.corpus import Corpus
from encdec.distributed import Processes, gathered
from encdec.errors import EncdecError
from encdec.model import Seq2Seq
from encdec.steps import StepTally

if TYPE_CHECKING:  # tensorboard is optional: `pip install encdec[tensorboard]`
    from torch.utils.tensorboard import SummaryWriter

log = logging.getLogger("encdec")


@dataclass
class Selection:
    """The validation metric that picks best.pt (`select_by`): its best value and since when."""

    metric: str  # "loss" (lower is better) or "bleu" (higher is better)
    best: float | None = None
    best_epoch: int = 0
    best_update: int = 0
    stalled_validations: int = 0  # validations in a row without improvement

    @property
    def key(self) -> str:
        return f"valid_{self.metric}"

    def observe(self, record: dict) -> bool:
        """Take in one validation's record; True when it is the new best."""
        value = record[self.key]
        higher_is_better = self.metric == "bleu"
        if self.best is None or (value > self.best if higher_is_better else value < self.best):
            self.best, self.best_epoch, self.stalled_validations = value, record["epoch"], 0
            self.best_update = record["update"]
            return True
        self.stalled_validations += 1
        return False

    def out_of_patience(self, patience: int | None) -> bool:
        """Whether `patience` validations have passed without improvement (None: never)."""
        return patience is not None and self.stalled_validations >= patience


@dataclass
class Progress:
    """How far a run has got; with weights, optimizer, schedules and RNGs, all a resume needs."""

    epoch: int = 0  # the epoch being trained, or just finished when `validated`
    step: int = 0  # batches of `batches` done
    batches: list[np.ndarray] = field(default_factory=list)  # this epoch's batches, in order
    epoch_loss_sum: float = 0.0  # summed cross-entropy of this epoch's batches so far
    epoch_tokens: int = 0
    epoch_seconds: float = 0.0
    train_seconds_total: float = 0.0  # of the epochs before this one
    validated: bool = True  # the epoch's end (validation, best.pt, plateau) is done
    finished: bool = False  # nothing is left: epochs or max_updates reached, or early stopping
    updates: int = 0  # optimizer updates of the whole run, every epoch's
    validated_update: int = 0  # `updates` at the last validation; metrics.jsonl holds it

    @property
    def at_validation(self) -> bool:
        """Whether the run stands where it was last validated (so it may stop here)."""
        return self.validated or self.validated_update == self.updates

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
    per_validation: ReduceLROnPlateau | None  # plateau (steps at each validation), else None
    selection: Selection
    data_order: random.Random  # draws each epoch's batch order
    teacher_forcing: torch.Generator  # draws the teacher-forcing coins, the same on every process
    progress: Progress
    out_dir: Path
    processes: Processes  # this process's rank among those of a torchrun job, and its device
    trainable: nn.Module  # the model, wrapped in DistributedDataParallel when there are several
    scaler: torch.amp.GradScaler | None = None  # fp16's gradient scaler
    board: SummaryWriter | None = None  # TensorBoard's writer while training, if installed
    tally: StepTally | None = None  # the steps' loss and non-finite guard, until the host reads


def resume_state(run: Run) -> dict:
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
        per_epoch_scheduler=None if run.per_validation is None else run.per_validation.state_dict(),
        rng_by_rank=by_rank,
        teacher_forcing_coins=run.teacher_forcing.get_state(),
        scaler=None if run.scaler is None else run.scaler.state_dict(),
        selection=dataclasses.asdict(run.selection),
        **dataclasses.asdict(run.progress) | {"batches": _batches_saved(run.progress.batches)},
    )


def _batches_saved(batches: list[np.ndarray]) -> dict[str, torch.Tensor]:
    """An epoch's batches as two tensors: every pair index in batch order, and batch sizes."""
    return {
        "indices": torch.from_numpy(np.concatenate([np.zeros(0, np.int64), *batches])),
        "sizes": torch.tensor([len(batch) for batch in batches], dtype=torch.int64),
    }


def _batches_loaded(saved: dict | list) -> list[np.ndarray]:
    """The epoch's batches as `_batches_saved` stores them, or as lists (last.pt before it)."""
    if isinstance(saved, list):
        return [np.asarray(batch, dtype=np.int64) for batch in saved]
    sizes = saved["sizes"].tolist()
    return np.split(saved["indices"].numpy(), np.cumsum(sizes)[:-1]) if sizes else []


def load_last(out_dir: Path) -> dict:
    """out_dir/last.pt, checked to hold the training state a resume needs."""
    path = out_dir / "last.pt"
    if not path.is_file():
        raise EncdecError(f"cannot resume: {path} does not exist (no run was saved there)")
    state = load_checkpoint(path)
    if "optimizer" not in state or not ("rng_by_rank" in state or "rng" in state):
        raise EncdecError(f"cannot resume: {path} holds weights but no training state")
    remove_half_written(out_dir)  # a killed run's; this run writes them anew
    return state


# the settings that only say when training stops: a resumed run may change them to go on longer
STOPPING_KEYS = (("training", "epochs"), ("training", "max_updates"), ("training", "patience"))


def resume_config(stored: Config, given: Config | None, **stopping: int | None) -> Config:
    """The config last.pt was trained with, to train on until `epochs` or `max_updates` if given.

    A given config must match the stored one but for data.data_dir and the STOPPING_KEYS.
    """
    if given is not None:
        stored_values, given_values = stored.to_dict(), given.to_dict()
        differences = [
            f"{section}.{key} ({stored_values[section][key]!r} in last.pt, {value!r} given)"
            for section, values in given_values.items()
            for key, value in values.items()
            if value != stored_values[section][key]
            and (section, key) not in (("data", "data_dir"), ("data", "prepared"), *STOPPING_KEYS)
        ]
        if differences:
            raise EncdecError(
                "a resumed run keeps the config it started with (but for training.epochs, "
                "training.max_updates and training.patience); these differ: "
                + "; ".join(differences)
            )
    config = given or stored
    extended = {key: value for key, value in stopping.items() if value is not None}
    return dataclasses.replace(config, training=dataclasses.replace(config.training, **extended))


def reconsider_finishing(run: Run) -> None:
    """Where last.pt was validated, decide again whether the run is over: its stopping keys may
    differ. Fewer epochs or updates than it has begun or done are refused."""
    progress, settings, selection = run.progress, run.config.training, run.selection
    if progress.epoch > settings.epochs:  # an epoch begun cannot be undone, only finished
        where = (
            f"has already trained {progress.epochs_done} epochs"
            if progress.validated
            else f"is partway through epoch {progress.epoch}"
        )
        raise EncdecError(
            f"cannot resume with training.epochs {settings.epochs}: last.pt {where} in "
            f"{run.out_dir}; give --epochs {progress.epoch} or more"
        )
    if settings.max_updates is not None and progress.updates > settings.max_updates:
        raise EncdecError(
            f"cannot resume with training.max_updates {settings.max_updates}: last.pt has "
            f"already made {progress.updates} updates in {run.out_dir}; give --max-updates "
            f"{progress.updates} or more"
        )
    if not progress.at_validation:
        return
    progress.finished = (
        (progress.validated and progress.epochs_done == settings.epochs)
        or updates_spent(progress, settings.max_updates)
        or selection.out_of_patience(settings.patience)
    )


def updates_spent(progress: Progress, max_updates: int | None) -> bool:
    """Whether the run has made its `training.max_updates` updates (None: no such budget)."""
    return max_updates is not None and progress.updates >= max_updates


def restore(run: Run, state: dict) -> None:
    """Put weights, optimizer, schedules, selection, progress and RNGs back as last.pt has them."""
    vocabularies = (run.corpus.src_vocab.itos, run.corpus.trg_vocab.itos)
    if vocabularies != (state["src_vocab"], state["trg_vocab"]):
        raise EncdecError("cannot resume: the data now gives other vocabularies than last.pt's")
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    if run.per_batch is not None:
        run.per_batch.load_state_dict(state["per_batch_scheduler"])
    if run.per_validation is not None:
        run.per_validation.load_state_dict(state["per_epoch_scheduler"])
    if run.scaler is not None and state.get("scaler") is not None:
        run.scaler.load_state_dict(state["scaler"])
    run.selection = _selection_loaded(state["selection"])
    run.progress = _progress_loaded(state)
    _restore_rng(run, state)
    _restore_coins(run, state)


def _selection_loaded(saved: dict) -> Selection:
    """The Selection last.pt holds; one from before validations by updates counted epochs."""
    saved = dict(saved)
    if "stalled_epochs" in saved:
        saved["stalled_validations"] = saved.pop("stalled_epochs")
    return Selection(**saved)


def _progress_loaded(state: dict) -> Progress:
    """The Progress last.pt holds; one from before update counting gets its updates from Adam."""
    saved = {key.name: state[key.name] for key in dataclasses.fields(Progress) if key.name in state}
    if "updates" not in saved:
        adam_steps = [int(param["step"]) for param in state["optimizer"]["state"].values()]
        saved["updates"] = max(adam_steps, default=0)
        saved["validated_update"] = saved["updates"] if saved["validated"] else 0
    return Progress(**saved | {"batches": _batches_loaded(state["batches"])})


def _restore_rng(run: Run, state: dict) -> None:
    """Each process's generators as saved; rank 0's for all when the process count changed."""
    by_rank = state.get("rng_by_rank") or [state["rng"]]  # "rng": one process's, before torchrun
    processes = run.processes
    if len(by_rank) == processes.world_size:
        restore_rng_states(by_rank[processes.rank], run.data_order)
        return
    restore_rng_states(by_rank[0], run.data_order)
    log.warning(
        "last.pt was saved by %d process(es), resumed by %d: the data order goes on as saved, "
        "but dropout draws differ from an uninterrupted run",
        len(by_rank),
        processes.world_size,
    )


def _restore_coins(run: Run, state: dict) -> None:
    """The teacher-forcing coins go on as saved; a last.pt older than their generator lacks it."""
    if "teacher_forcing_coins" in state:
        run.teacher_forcing.set_state(state["teacher_forcing_coins"])
    elif 0 < run.config.training.teacher_forcing_ratio < 1:
        log.warning(
            "last.pt has no teacher-forcing generator (it predates it): the coins start again "
            "from training.seed, so the run goes on but differs from an uninterrupted one"
        )


def _is_kept(line: str, progress: Progress) -> bool:
    """Whether a metrics.jsonl line tells of a validation last.pt includes; not one cut short."""
    try:
        record = json.loads(line)
        if "update" in record:
            return record["update"] <= progress.validated_update
        return record["epoch"] <= progress.epochs_done  # a line from before update counting
    except (json.JSONDecodeError, KeyError, TypeError):
        return False


def keep_records_through(metrics_path: Path, progress: Progress) -> None:
    """Drop metrics.jsonl lines of validations after last.pt's: the resumed run does them again."""
    if not metrics_path.is_file():
        return
    lines = metrics_path.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = [line for line in lines if _is_kept(line, progress)]
    if kept != lines:
        with atomic_file(metrics_path) as file:
            file.write("".join(kept).encode("utf-8"))
