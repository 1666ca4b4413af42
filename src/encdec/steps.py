"""One training step: a batch's loss, the optimizer's update on it, its guard; the lr schedules."""

from __future__ import annotations

import contextlib
import random
from functools import partial

import numpy as np
import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, ReduceLROnPlateau

from encdec.batching import Batch
from encdec.config import TrainingConfig
from encdec.errors import EncdecError
from encdec.metrics import token_losses
from encdec.model import Seq2Seq
from encdec.pair_ids import PairIds
from encdec.vocab import PAD_IDX


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_optimizer(model: Seq2Seq, lr: float) -> torch.optim.Adam:
    # The fused kernel updates all weights in one pass: 2.4x faster than the default for-loop
    # on CPU (docs/performance.md; benchmarks/speed.py prints the three implementations).
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


class NonFiniteLoss(EncdecError):
    """The loss or its gradient is NaN or infinite; the weights were left as they were."""


class StepTally:
    """What training steps leave on the device until the host reads it: their summed loss, and
    a guard against a non-finite loss or gradient.

    From the first bad step on, every update is skipped on the device (the fused optimizer's
    `found_inf`), so the weights stay those from before it; `read`, called wherever the host reads
    the run anyway (log lines, validation, checkpoints), then raises NonFiniteLoss naming that
    step. A run so ends exactly where raising at the bad step itself would have ended it, and the
    host never waits for the device in between.
    """

    def __init__(self, device: torch.device):
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.tripped = torch.zeros((), dtype=torch.bool, device=device)
        self.steps = torch.zeros((), dtype=torch.float64, device=device)  # since the last read
        self.first = torch.zeros(3, dtype=torch.float64, device=device)  # bad step, loss, norm

    def add(self, loss_sum: torch.Tensor) -> None:
        """Count one step's summed plain loss."""
        self.loss_sum += loss_sum.detach().double()

    def observe(self, loss: torch.Tensor, gradient_norm: torch.Tensor | None) -> torch.Tensor:
        """Note one step's loss and gradient norm (None: the gradient is fp16's scaler's to
        judge); returns the float flag, 1 once any step was bad, that skips the updates."""
        norm = gradient_norm if gradient_norm is not None else torch.zeros_like(loss)
        bad = ~(torch.isfinite(loss) & torch.isfinite(norm))
        seen = torch.stack([self.steps, loss.detach().double(), norm.double()])
        self.first = torch.where(bad & ~self.tripped, seen, self.first)
        self.tripped |= bad
        self.steps += 1
        return self.tripped.float()

    def read(self, steps_done: int) -> float:
        """The loss summed since the last read (one read of the device); NonFiniteLoss if a
        step since then was bad, `steps_done` counting the steps so far."""
        flags = torch.stack([self.loss_sum, self.tripped.double(), self.steps])
        loss_sum, tripped, steps, step, loss, norm = torch.cat([flags, self.first]).tolist()
        if tripped:
            raise NonFiniteLoss(
                f"step {steps_done - int(steps) + int(step) + 1}: the loss is {loss:.4g} and its "
                f"gradient norm {norm:.4g}"
            )
        self.loss_sum.zero_()
        self.steps.zero_()
        return loss_sum


def optimizer_step(
    model: nn.Module,
    loss: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    clip: float,
    scheduler: LRScheduler | None,
    tally: StepTally,
    scaler: torch.amp.GradScaler | None = None,
) -> None:
    """One optimizer step on `loss`, the gradient norm clipped to `clip`; then the lr schedule's.

    A non-finite loss or gradient skips this update and every later one (see StepTally).
    With fp16's gradient `scaler`, an overflowing gradient is not an error: the scaler skips
    that step and lowers its scale.
    """
    optimizer.zero_grad()
    (loss if scaler is None else scaler.scale(loss)).backward()
    if scaler is None:
        gradient_norm = nn.utils.clip_grad_norm_(model.parameters(), clip)
        # the fused Adam reads this flag on the device and leaves weights and moments alone
        optimizer.found_inf = tally.observe(loss, gradient_norm)
        optimizer.step()
        del optimizer.found_inf
    else:
        skip = tally.observe(loss, None)
        # NaN gradients once tripped (x1 otherwise): the scaler skips the update itself
        gradients = [p.grad for p in model.parameters() if p.grad is not None]
        torch._foreach_mul_(gradients, torch.where(skip > 0, torch.nan, 1.0))
        scaler.unscale_(optimizer)  # clip the true gradient, not the scaled one
        nn.utils.clip_grad_norm_(model.parameters(), clip)
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


def teacher_forcing_coins(
    ratio: float,
    pairs: PairIds,
    indices: np.ndarray,
    generator: torch.Generator | None,
) -> torch.Tensor | None:
    """The teacher-forcing coins of batch `indices`: (T-2,) on the CPU, T its longest target.

    Drawn from `generator` only when 0 < `ratio` < 1; for 0 or 1 the coins could change nothing,
    so none are drawn (None). Any share of the batch reads the first coins it needs.
    """
    if not 0 < ratio < 1:
        return None
    if generator is None:
        raise EncdecError(f"teacher_forcing_ratio {ratio} needs a generator to draw its coins")
    longest = int(pairs.trg_lengths[indices].max())  # <sos> ... <eos>
    return torch.rand(longest - 2, generator=generator)


def batch_losses(
    model: nn.Module,
    batch: Batch,
    teacher_forcing_ratio: float,
    label_smoothing: float = 0.0,
    precision: str = "fp32",
    coins: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch through the model: its summed plain and smoothed losses, on the model's device.

    `coins` are the teacher-forcing coins (see Seq2Seq.forward), needed when 0 < ratio < 1.
    """
    device = next(model.parameters()).device
    # non_blocking: from pinned memory (see feeding.py) the copy overlaps the work before it
    src, trg = batch.src.to(device, non_blocking=True), batch.trg.to(device, non_blocking=True)
    with mixed_precision(device, precision):
        logits = model(src, batch.src_lengths, trg, teacher_forcing_ratio, coins)
    # The shifted loss: the prediction at step t is scored against trg[t + 1].
    return token_losses(logits.float(), trg[1:], PAD_IDX, label_smoothing)


def train_batch(
    model: nn.Module,
    batch: Batch,
    settings: TrainingConfig,
    optimizer: torch.optim.Optimizer,
    scheduler: LRScheduler | None,
    tally: StepTally,
    scaler: torch.amp.GradScaler | None = None,
    coins: torch.Tensor | None = None,
    step_tokens: int | None = None,
    world_size: int = 1,
) -> None:
    """The update `encdec train` makes on one batch; its summed plain loss goes to `tally`.

    With several processes, `batch` is this process's share and `step_tokens` the whole batch's
    target tokens: DDP averages the processes' gradients, so world_size / step_tokens turns
    that average into the gradient of the whole batch's mean loss.
    """
    ratio = settings.teacher_forcing_ratio
    loss_sum, smoothed_sum = batch_losses(
        model, batch, ratio, settings.label_smoothing, settings.precision, coins
    )
    loss = smoothed_sum * world_size / (step_tokens or batch.n_target_tokens)
    optimizer_step(model, loss, optimizer, settings.clip, scheduler, tally, scaler)
    tally.add(loss_sum)
