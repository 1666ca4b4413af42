"""Scores: the loss per token and its perplexity, BLEU in its two published flavours, and chrF."""

from __future__ import annotations

import math

import sacrebleu
import torch
from sacrebleu.metrics import CHRF
from torch.nn import functional as F


def perplexity(loss: float) -> float:
    """exp(loss), the model's average branching factor; capped so huge losses stay printable."""
    return math.exp(min(loss, 100.0))


def bleu(hypotheses: list[str], references: list[str]) -> float:
    """sacreBLEU corpus BLEU, lowercased, of detokenized text against the raw references."""
    return sacrebleu.corpus_bleu(hypotheses, [references], lowercase=True).score


def bleu_tok(hypothesis_tokens: list[list[str]], reference_tokens: list[list[str]]) -> float:
    """BLEU on given tokens (no re-tokenization), the way the seq2seq tutorials score."""
    hypotheses = [" ".join(tokens) for tokens in hypothesis_tokens]
    references = [" ".join(tokens) for tokens in reference_tokens]
    return sacrebleu.corpus_bleu(hypotheses, [references], tokenize="none", force=True).score


def chrf(hypotheses: list[str], references: list[str]) -> float:
    """sacreBLEU corpus chrF (character 6-grams), lowercased like `bleu`; kinder to near-misses."""
    return CHRF(lowercase=True).corpus_score(hypotheses, [references]).score


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
