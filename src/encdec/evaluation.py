"""Scoring a model on sentence pairs: loss and perplexity, BLEU, tokenized BLEU and chrF.

Validation while training and `encdec evaluate` both score here, so their numbers agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from encdec.batching import collate, evaluation_batches
from encdec.metrics import bleu, bleu_tok, chrf, perplexity, signatures, token_losses
from encdec.model import Seq2Seq
from encdec.pair_ids import PairIds
from encdec.progress import progress_bar

if TYPE_CHECKING:
    from encdec.translator import Translator


@torch.no_grad()
def corpus_loss(
    model: Seq2Seq,
    pairs: PairIds,
    pad_idx: int,
    batch_size: int,
    teacher_forcing_ratio: float = 0.0,
    description: str = "",
) -> float:
    """Mean cross-entropy per target token of `pairs`, dropout off.

    With `teacher_forcing_ratio` 0 (the textbook's validation) the decoder reads its own guesses.
    """
    model.eval()
    device = next(model.parameters()).device
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    n_tokens = 0
    batches = evaluation_batches(pairs, batch_size)
    for indices in progress_bar(batches, desc=description, leave=False):
        batch = collate(pairs, indices, pad_idx)
        trg = batch.trg.to(device)  # (T, B)
        logits = model(batch.src.to(device), batch.src_lengths, trg, teacher_forcing_ratio)
        # the prediction at step t is scored against trg[t + 1]: logits (T-1, B, V)
        loss_sum += token_losses(logits.float(), trg[1:], pad_idx)[0].double()
        n_tokens += batch.n_target_tokens
    return loss_sum.item() / n_tokens


@torch.no_grad()
def target_log_probs(model: Seq2Seq, pairs: PairIds, pad_idx: int, batch_size: int) -> list[float]:
    """Each pair's log-probability of its target, <eos> included, reading the true prefix."""
    model.eval()
    device = next(model.parameters()).device
    scores = [0.0] * len(pairs)
    for indices in evaluation_batches(pairs, batch_size):
        batch = collate(pairs, indices, pad_idx)
        trg = batch.trg.to(device)  # (T, B)
        logits = model(batch.src.to(device), batch.src_lengths, trg, teacher_forcing_ratio=1.0)
        # the prediction at step t is of trg[t + 1]: (T-1, B, V) -> (T-1, B) -> (B,)
        log_probs = torch.log_softmax(logits.float(), -1).gather(-1, trg[1:].unsqueeze(-1))
        log_probs = log_probs.squeeze(-1).masked_fill(trg[1:] == pad_idx, 0.0).sum(0)
        for index, score in zip(indices, log_probs.tolist()):
            scores[index] = score
    return scores


def evaluate(
    translator: Translator,
    pairs: Sequence[tuple[str, str]],
    seed: int | None = None,
    description: str = "",
    with_translations: bool = False,
    **options,
) -> dict:
    """Loss and perplexity with teacher forcing off and teacher-forced, BLEU, tokenized BLEU and
    chrF on `pairs`, with sacreBLEU's signatures.

    `seed` and `options` are decoding settings, as for `Translator.translations`. With
    `with_translations`, "translations" holds the strings scored, one per pair.
    """
    sources = [source for source, _ in pairs]
    references = [reference for _, reference in pairs]
    source_tokens = translator.src_tokenizer.tokenize_many(sources)
    reference_tokens = translator.trg_tokenizer.tokenize_many(references)
    examples = translator.examples(source_tokens, reference_tokens)
    loss = corpus_loss(
        translator.model,
        examples,
        translator.trg_vocab.pad_idx,
        translator.config.training.batch_size,
        description=f"{description} loss".strip(),
    )
    forced_loss = corpus_loss(
        translator.model,
        examples,
        translator.trg_vocab.pad_idx,
        translator.config.training.batch_size,
        teacher_forcing_ratio=1.0,
        description=f"{description} forced".strip(),
    )
    translations = translator.translations_of(
        sources, source_tokens, seed=seed, with_attention=False, **options
    )
    best = [sentence_translations[0] for sentence_translations in translations]
    to_words = translator.trg_tokenizer.to_words
    hypotheses = [translation.text for translation in best]
    scores = {
        "loss": loss,
        "ppl": perplexity(loss),
        "teacher_forced_loss": forced_loss,
        "teacher_forced_ppl": perplexity(forced_loss),
        "bleu": bleu(hypotheses, references),
        "bleu_tok": bleu_tok(
            [to_words(translation.tokens) for translation in best],
            [to_words(tokens) for tokens in reference_tokens],
        ),
        "chrf": chrf(hypotheses, references),
        "truncated": sum(translation.truncated for translation in best),  # cut at the limit
        **signatures(),
    }
    return scores | {"translations": hypotheses} if with_translations else scores
