"""Scores: perplexity from loss, BLEU in its two published flavours, and chrF."""

from __future__ import annotations

import math

import sacrebleu
from sacrebleu.metrics import CHRF


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
