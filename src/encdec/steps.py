"""One batch's loss, one optimizer step on it, a pass over many batches, the lr schedules."""

from __future__ import annotations

import contextlib
import random
import time
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, ReduceLROnPlateau

from encdec.batching import collate
from encdec.config import TrainingConfig
from encdec.errors import EncdecError
from encdec.metrics import perplexity, token_losses
from encdec.model import Seq2Seq
from encdec.pair_ids import PairIds
from encdec.progress import progress_bar


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
    pairs: PairIds,
    indices: np.ndarray,
    pad_idx: int,
    teacher_forcing_ratio: float,
    label_smoothing: float = 0.0,
    precision: str = "fp32",
    coins: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """One batch through the model: summed plain and smoothed losses, and the target tokens.

    `coins` are the teacher-forcing coins (see Seq2Seq.forward), needed when 0 < ratio < 1.
    """
    batch = collate(pairs, indices, pad_idx)
    device = next(model.parameters()).device
    src, trg = batch.src.to(device), batch.trg.to(device)
    with mixed_precision(device, precision):
        logits = model(src, batch.src_lengths, trg, teacher_forcing_ratio, coins)
    # The shifted loss: the prediction at step t is scored against trg[t + 1].
    loss_sum, smoothed_sum = token_losses(logits.float(), trg[1:], pad_idx, label_smoothing)
    return loss_sum, smoothed_sum, batch.n_target_tokens


def run_epoch(
    model: Seq2Seq,
    pairs: PairIds,
    batches: list[np.ndarray],
    pad_idx: int,
    teacher_forcing_ratio: float,
    optimizer: torch.optim.Optimizer | None = None,
    clip: float = 1.0,
    max_steps: int | None = None,
    description: str = "",
    label_smoothing: float = 0.0,
    scheduler: LRScheduler | None = None,
    coin_generator: torch.Generator | None = None,
) -> EpochResult:
    """One pass over `batches`; trains when an optimizer is given, else only measures the loss.

    The reported loss is the plain cross-entropy even when the update uses `label_smoothing`.
    A `teacher_forcing_ratio` strictly between 0 and 1 draws its coins from `coin_generator`.
    """
    model.train(optimizer is not None)
    total_loss, total_tokens, start = 0.0, 0, time.perf_counter()
    bar = progress_bar(batches[:max_steps], desc=description, leave=False)
    with torch.set_grad_enabled(optimizer is not None):
        for indices in bar:
            coins = teacher_forcing_coins(teacher_forcing_ratio, pairs, indices, coin_generator)
            loss_sum, smoothed_sum, n_tokens = batch_losses(
                model,
                pairs,
                indices,
                pad_idx,
                teacher_forcing_ratio,
                label_smoothing,
                coins=coins,
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
