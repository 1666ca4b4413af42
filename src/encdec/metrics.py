"""Scores: the loss per token and its perplexity, BLEU in its two published flavours, and chrF."""

from __future__ import annotations

import math

import torch
from sacrebleu.metrics import BLEU, CHRF
from torch.nn import functional as F


def perplexity(loss: float) -> float:
    """exp(loss), the model's average branching factor; capped so huge losses stay printable."""
    return math.exp(min(loss, 100.0))


def _bleu() -> BLEU:
    return BLEU(lowercase=True)


def _bleu_tok() -> BLEU:
    return BLEU(tokenize="none", force=True)


def _chrf() -> CHRF:
    return CHRF(lowercase=True)


def bleu(hypotheses: list[str], references: list[str]) -> float:
    """sacreBLEU corpus BLEU, lowercased, of detokenized text against the raw references."""
    return _bleu().corpus_score(hypotheses, [references]).score


def bleu_tok(hypothesis_tokens: list[list[str]], reference_tokens: list[list[str]]) -> float:
    """BLEU on given tokens (no re-tokenization), the way the seq2seq tutorials score."""
    hypotheses = [" ".join(tokens) for tokens in hypothesis_tokens]
    references = [" ".join(tokens) for tokens in reference_tokens]
    return _bleu_tok().corpus_score(hypotheses, [references]).score


def chrf(hypotheses: list[str], references: list[str]) -> float:
    """sacreBLEU corpus chrF (character 6-grams), lowercased like `bleu`; kinder to near-misses."""
    return _chrf().corpus_score(hypotheses, [references]).score


def signatures() -> dict[str, str]:
    """sacreBLEU's signature of `bleu`, `bleu_tok` and `chrf` (one reference a sentence), the
    string that makes a published score comparable, keyed "bleu_signature" and so on."""
    made = {"bleu": _bleu(), "bleu_tok": _bleu_tok(), "chrf": _chrf()}
    for metric in made.values():
        metric.corpus_score(["a"], [["a"]])  # sacreBLEU counts the references before it signs
    return {f"{name}_signature": metric.get_signature().format() for name, metric in made.items()}


def token_losses(
    logits: torch.Tensor, targets: torch.Tensor, pad_idx: int, label_smoothing: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy over the non-padding targets: plain (reported), smoothed (trained).

    The smoothed loss is PyTorch's `label_smoothing`: (1 - e) * nll + e * mean over words of -log p,
    both from one log-softmax; padding is masked by multiplying, which never waits for the device
    (indexing with a boolean mask would, to learn the result's size).
    """
    log_probs = logits.flatten(0, 1).log_softmax(dim=-1)  # (N, V), N = (T-1)*B
    targets = targets.flatten()  # (N,)
    nll = F.nll_loss(log_probs, targets, ignore_index=pad_idx, reduction="sum")
    if label_smoothing == 0.0:
        return nll, nll
    uniform = -log_probs.mean(dim=-1) * (targets != pad_idx)  # (N,) cross-entropy to uniform
    return nll, (1 - label_smoothing) * nll + label_smoothing * uniform.sum()
