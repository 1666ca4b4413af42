"""Decoding: from a source batch to target ids, greedily, by sampling, or by beam search.

All three run a whole batch at once and call the decoder one step at a time, exactly as in
training; they differ only in which next tokens they keep.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from encdec.batching import Example, collate, evaluation_batches
from encdec.config import DecodingConfig
from encdec.model import Seq2Seq
from encdec.progress import progress_bar
from encdec.vocab import Vocab


@dataclass
class Hypothesis:
    """One translation: its ids, how likely the model finds it, and where it looked."""

    ids: list[int]  # target ids, without <sos> and <eos>
    score: float  # sum of the log-probabilities of its tokens, <eos> included
    attention: torch.Tensor | None = None  # (len(ids), S) weights over the source per token


@torch.no_grad()
def decode(
    model: Seq2Seq,
    src: torch.Tensor,
    src_lengths: torch.Tensor,
    sos_idx: int,
    eos_idx: int,
    max_len: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
) -> list[Hypothesis]:
    """Decode a batch one token at a time until <eos> or `max_len` tokens.

    temperature 0 takes the argmax (greedy decoding); above 0 it samples from
    softmax(logits / temperature), among the `top_k` likeliest tokens when given. Finished
    sentences leave the batch, so the work shrinks as they end.
    """
    state = model.encode(src, src_lengths)
    batch_size = src.shape[1]
    generated = torch.full((max_len, batch_size), eos_idx, dtype=torch.long)
    scores = torch.zeros(batch_size)
    attention = None  # (max_len, B, S) weights per step, for a model with attention
    if model.decoder.attention is not None:
        attention = torch.zeros(max_len, batch_size, src.shape[0])
    active = torch.arange(batch_size)  # batch positions still decoding
    tokens = torch.full((1, batch_size), sos_idx, dtype=torch.long, device=src.device)
    for step in range(max_len):
        logits, state = model.decoder(tokens, state)  # (1, active, V)
        tokens = choose_next(logits[0], temperature, top_k, generator).unsqueeze(0)  # (1, active)
        log_probs = torch.log_softmax(logits[0], dim=-1)  # (active, V)
        scores[active] += log_probs.gather(1, tokens.T).squeeze(1).cpu()
        generated[step, active] = tokens[0].cpu()
        if attention is not None:
            attention[step, active] = state.attention[0].cpu()
        unfinished = tokens[0] != eos_idx
        if not unfinished.any():
            break
        if not unfinished.all():
            active, tokens = active[unfinished.cpu()], tokens[:, unfinished]
            state = state.select(unfinished)
    return [
        _hypothesis(
            generated[:, i],
            scores[i].item(),
            attention[:, i] if attention is not None else None,
            eos_idx,
        )
        for i in range(batch_size)
    ]


def choose_next(
    logits: torch.Tensor,
    temperature: float,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Next token per row of (B, V) logits: argmax, or a sample at the given temperature."""
    if temperature == 0:
        return logits.argmax(-1)
    if top_k is not None and top_k < logits.shape[-1]:
        threshold = logits.topk(top_k, dim=-1).values[:, -1:]  # (B, 1): the k-th largest
        logits = logits.masked_fill(logits < threshold, float("-inf"))
    probabilities = torch.softmax(logits / temperature, dim=-1)
    return torch.multinomial(probabilities, 1, generator=generator).squeeze(1)


@torch.no_grad()
def beam_search(
    model: Seq2Seq,
    src: torch.Tensor,
    src_lengths: torch.Tensor,
    sos_idx: int,
    eos_idx: int,
    max_len: int,
    beam_size: int,
    length_penalty: float = 1.0,
    n_best: int = 1,
) -> list[list[Hypothesis]]:
    """The `n_best` likeliest translations of each sentence found with `beam_size` beams.

    Every sentence keeps `beam_size` partial translations, rows of one (B * beam_size) batch.
    A finished beam can only be extended by <eos> at no cost, so it keeps its score and its
    place until better beams push it out. Finished translations are ranked by their score
    divided by length ** `length_penalty` (0 ranks by the raw log-probability).
    """
    batch_size, device = src.shape[1], src.device
    state = model.encode(src, src_lengths)
    state = state.select(torch.arange(batch_size, device=device).repeat_interleave(beam_size))
    scores = torch.full((batch_size, beam_size), float("-inf"), device=device)
    scores[:, 0] = 0.0  # all beams start equal: keep one so the first step has no duplicates
    tokens = torch.full((1, batch_size * beam_size), sos_idx, dtype=torch.long, device=device)
    history = tokens[:0]  # (steps, B * beam) chosen tokens
    attention = torch.zeros(0, batch_size * beam_size, src.shape[0], device=device)
    finished = torch.zeros(batch_size * beam_size, dtype=torch.bool, device=device)
    first_beam = torch.arange(batch_size, device=device).unsqueeze(1) * beam_size  # (B, 1)
    for _ in range(max_len):
        logits, state = model.decoder(tokens, state)  # (1, B * beam, V)
        log_probs = torch.log_softmax(logits[0], dim=-1)  # (B * beam, V)
        log_probs[finished] = float("-inf")
        log_probs[finished, eos_idx] = 0.0
        vocab_size = log_probs.shape[-1]
        candidates = (scores.view(-1, 1) + log_probs).view(batch_size, -1)  # (B, beam * V)
        scores, chosen = candidates.topk(beam_size, dim=-1)  # (B, beam)
        parents = (first_beam + chosen // vocab_size).view(-1)  # (B * beam,) beam each extends
        tokens = (chosen % vocab_size).view(1, -1)  # (1, B * beam)
        history = torch.cat([history[:, parents], tokens])
        if state.attention is not None:
            attention = torch.cat([attention[:, parents], state.attention[:, parents]])
        finished = finished[parents] | (tokens[0] == eos_idx)
        state = state.select(parents)
        if finished.all():
            break
    return _best_of_beams(
        history.cpu(),
        scores.cpu(),
        attention.cpu() if attention.shape[0] else None,
        eos_idx,
        length_penalty,
        n_best,
    )


def _best_of_beams(
    history: torch.Tensor,
    scores: torch.Tensor,
    attention: torch.Tensor | None,
    eos_idx: int,
    length_penalty: float,
    n_best: int,
) -> list[list[Hypothesis]]:
    """Each sentence's beams as hypotheses, best first by length-normalised score."""
    batch_size, beam_size = scores.shape
    results = []
    for sentence in range(batch_size):
        beams = []
        for beam in range(beam_size):
            row = sentence * beam_size + beam
            beam_attention = attention[:, row] if attention is not None else None
            beams.append(
                _hypothesis(history[:, row], scores[sentence, beam].item(), beam_attention, eos_idx)
            )
        beams.sort(key=lambda h: h.score / (len(h.ids) + 1) ** length_penalty, reverse=True)
        results.append(beams[:n_best])
    return results


def _hypothesis(
    tokens: torch.Tensor, score: float, attention: torch.Tensor | None, eos_idx: int
) -> Hypothesis:
    """A hypothesis from one column of generated tokens (steps,), cut at its first <eos>."""
    ids = tokens.tolist()
    length = ids.index(eos_idx) if eos_idx in ids else len(ids)
    return Hypothesis(ids[:length], score, attention[:length] if attention is not None else None)


def decode_examples(
    model: Seq2Seq,
    examples: Sequence[Example],
    trg_vocab: Vocab,
    decoding: DecodingConfig,
    n_best: int = 1,
    generator: torch.Generator | None = None,
) -> list[list[Hypothesis]]:
    """Decode the sources of many examples in length-sorted batches; results in input order.

    Each example gets its `n_best` hypotheses (one, unless beam search is asked for more).
    """
    model.eval()
    device = next(model.parameters()).device
    outputs: list[list[Hypothesis]] = [[] for _ in examples]
    batches = evaluation_batches(examples, decoding.batch_size)
    for indices in progress_bar(batches, desc="translating", unit="batch", leave=False):
        batch = collate(examples, indices, trg_vocab.pad_idx)
        src = batch.src.to(device)
        ends = (trg_vocab.sos_idx, trg_vocab.eos_idx, decoding.max_len)
        if decoding.beam_size > 1:
            hypotheses = beam_search(
                model,
                src,
                batch.src_lengths,
                *ends,
                decoding.beam_size,
                decoding.length_penalty,
                n_best,
            )
        else:
            hypotheses = [
                [hypothesis]
                for hypothesis in decode(
                    model,
                    src,
                    batch.src_lengths,
                    *ends,
                    decoding.temperature,
                    decoding.top_k,
                    generator,
                )
            ]
        for index, sentence_hypotheses in zip(indices, hypotheses):
            outputs[index] = sentence_hypotheses
    return outputs
