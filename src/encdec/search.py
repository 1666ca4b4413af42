"""Decoding: from a source batch to target ids, greedily, by sampling, or by beam search.

All three run a whole batch at once and call the decoder one step at a time, exactly as in
training; they differ only in which next tokens they keep. They hand back tensors for the whole
batch (`Found`); the translator makes them into hypotheses and text. Each sentence may write at
most `length_limits` tokens, a number that grows with its source; a translation that reaches
it is ended there, paying for <eos>, and marked as truncated.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, fields

import numpy as np
import torch

from encdec.batching import collate, evaluation_batches
from encdec.config import DecodingConfig
from encdec.model import Seq2Seq
from encdec.pair_ids import PairIds
from encdec.progress import progress_bar
from encdec.vocab import EOS_IDX, PAD_IDX, SOS_IDX

NEVER_CHOSEN = (PAD_IDX, SOS_IDX)  # tokens no translation may contain (fairseq's rule too)
READ_EVERY = 8  # greedy decoding asks the device which sentences have ended every 8 steps


@dataclass
class Hypothesis:
    """One translation: its ids, how likely the model finds it, and where it looked."""

    ids: list[int]  # target ids, without <sos> and <eos>
    score: float  # sum of the log-probabilities of its tokens, <eos> included
    attention: torch.Tensor | None = None  # (len(ids), S) weights over the source per token
    coverage: float = 0.0  # how fully its attention covered the source (`coverage`); 0 is fully
    truncated: bool = False  # it reached its length limit and was ended there


@dataclass
class Found:
    """What a search found for a batch of B sentences, n translations each, best first.

    A translation's ids are ids[b, j, :lengths[b, j]]; the rest is <pad>. A slot that found
    nothing (fewer than n distinct translations) has the score -inf.
    """

    ids: torch.Tensor  # (B, n, T) target ids, without <sos> and <eos>
    lengths: torch.Tensor  # (B, n) tokens before <eos>
    scores: torch.Tensor  # (B, n) log-probability of the tokens and <eos>
    coverage: torch.Tensor  # (B, n) `coverage` of the source; 0 without attention
    truncated: torch.Tensor  # (B, n) bool: ended at the length limit, not by choosing <eos>
    attention: torch.Tensor | None = None  # (B, n, T, S) per token, when asked for

    def to(self, device: torch.device | str) -> Found:
        """Every tensor on `device` (one copy each, e.g. to the host once per batch)."""
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        return Found(**{k: v.to(device) if v is not None else None for k, v in moved.items()})


def length_limits(src_lengths: torch.Tensor, decoding: DecodingConfig) -> torch.Tensor:
    """(B,) most target tokens per sentence: max_len_a * source tokens + max_len_b, at most
    max_len (when set) and at least 1. `src_lengths` count <sos> and <eos>, which are left out."""
    source_tokens = (src_lengths - 2).double()
    limits = (decoding.max_len_a * source_tokens + decoding.max_len_b).floor().long()
    return limits.clamp(min=1, max=decoding.max_len)


def allowed_log_probs(scores: torch.Tensor) -> torch.Tensor:
    """log_softmax of (rows, V) scores, with <pad> and <sos> at -inf so no search picks them.

    They are masked after the normalisation, so the other tokens keep the model's own
    log-probabilities (what `evaluation.target_log_probs` scores) and sampling's distribution
    is the model's renormalised over the tokens it may choose.
    """
    log_probs = torch.log_softmax(scores.float(), dim=-1)
    log_probs[:, NEVER_CHOSEN] = float("-inf")
    return log_probs


def coverage(received: torch.Tensor, src_lengths: torch.Tensor) -> torch.Tensor:
    """Sum over the source words of log(min(attention they received, 1)) (Wu et al., 2016).

    `received` (..., S) is the attention each source position received over a translation's
    tokens; `src_lengths` (...,) count <sos> and <eos>, which are left out, as is padding. A word
    attended to for a whole step or more adds 0; one overlooked adds a large negative number,
    so ranking by `coverage_penalty` times this favours translations that leave nothing out.
    """
    positions = torch.arange(received.shape[-1], device=received.device)  # (S,)
    words = (positions >= 1) & (positions < src_lengths.unsqueeze(-1) - 1)  # (..., S)
    return received.clamp(min=1e-10, max=1.0).log().masked_fill(~words, 0.0).sum(-1)


# Sampling draws Gumbel noise from a hash of (sentence key, step, token) instead of a random
# generator shared by the batch, so a sentence's sample never depends on its batch.
_MASK = 0xFFFFFFFF


def _mix(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash of each element of an int64 tensor in [0, 2**32)."""
    for _ in range(2):  # products stay below 2**63: 32-bit values times a 27-bit constant
        x = ((x ^ (x >> 16)) * 0x45D9F3B) & _MASK
    return x ^ (x >> 16)


def sampling_keys(src: torch.Tensor, src_lengths: torch.Tensor, seed: int | None) -> torch.Tensor:
    """(B,) one key per sentence from `seed` and its source ids (S, B); random without a seed.

    With a seed, a sentence samples the same translation wherever it is decoded: alone, in any
    batch, in any position, on the command line or in the server.
    """
    if seed is None:
        return torch.randint(0, _MASK, (src.shape[1],), device=src.device)
    positions = torch.arange(src.shape[0], device=src.device).unsqueeze(1)  # (S, 1)
    inside = positions < src_lengths.to(src.device).unsqueeze(0)  # (S, B)
    words = _mix((src.long() + (positions << 20)) & _MASK).masked_fill(~inside, 0)  # (S, B)
    return _mix((words.sum(0) & _MASK) ^ _mix(torch.tensor(seed & _MASK, device=src.device)))


def gumbel_noise(keys: torch.Tensor, step: int, vocab_size: int) -> torch.Tensor:
    """(rows, V) Gumbel(0, 1) noise of the rows' `keys` (rows,) at decoder step `step`."""
    row = _mix(keys ^ _mix(torch.tensor(step + 1, device=keys.device)))  # (rows,)
    tokens = _mix(torch.arange(vocab_size, device=keys.device) + 0x9E3779B9 & _MASK)  # (V,)
    bits = _mix(row.unsqueeze(1) ^ tokens)  # (rows, V)
    uniform = ((bits >> 8).float() + 0.5) / 2**24  # in (0, 1)
    return -torch.log(-torch.log(uniform))


def choose_next(
    log_probs: torch.Tensor,
    temperature: float,
    top_k: int | None = None,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Next token per row of (rows, V) log-probabilities: the argmax, or at a temperature above
    0 a sample from softmax(log_probs / temperature) (the argmax after adding Gumbel `noise`)."""
    if temperature == 0:
        return log_probs.argmax(-1)
    if top_k is not None and top_k < log_probs.shape[-1]:
        threshold = log_probs.topk(top_k, dim=-1).values[:, -1:]  # (rows, 1): the k-th largest
        log_probs = log_probs.masked_fill(log_probs < threshold, float("-inf"))
    return (log_probs / temperature + noise).argmax(-1)


@torch.no_grad()
def decode(
    model: Seq2Seq,
    src: torch.Tensor,
    src_lengths: torch.Tensor,
    limits: torch.Tensor,
    temperature: float = 0.0,
    top_k: int | None = None,
    keys: torch.Tensor | None = None,
    with_attention: bool = False,
) -> Found:
    """Decode a batch one token at a time until <eos> or each sentence's limit (B,) on the host.

    temperature 0 takes the argmax (greedy decoding); above 0 it samples from
    softmax(logits / temperature), among the `top_k` likeliest tokens when given, with the
    noise of each sentence's key (`sampling_keys`). Every READ_EVERY steps the sentences that
    have ended leave the batch: the only time the loop waits for the device.
    """
    state = model.encode(src, src_lengths)
    batch_size, device = src.shape[1], src.device
    steps = int(limits.max()) + 1  # the step after the limit only ends a sentence
    ids = torch.full((steps, batch_size), PAD_IDX, dtype=torch.long, device=device)
    lengths = limits.to(device).clone()  # (B,) where a forced <eos> puts it, until one is chosen
    scores = torch.zeros(batch_size, device=device)
    truncated = torch.zeros(batch_size, dtype=torch.bool, device=device)
    attending = model.decoder.attention is not None
    received = torch.zeros(batch_size, src.shape[0], device=device) if attending else None
    weights = None  # (steps, B, S) per token, when asked for
    if with_attention and attending:
        weights = torch.zeros(steps, batch_size, src.shape[0], device=device)
    if temperature > 0 and keys is None:
        keys = sampling_keys(src, src_lengths, None)
    active = torch.arange(batch_size, device=device)  # batch positions still decoding
    row_limits, ended = lengths.clone(), torch.zeros(batch_size, dtype=torch.bool, device=device)
    tokens = torch.full((1, batch_size), SOS_IDX, dtype=torch.long, device=device)
    for step in range(steps):
        logits, state = model.decoder(tokens, state)  # (1, rows, V)
        log_probs = allowed_log_probs(logits[0])  # (rows, V)
        noise = gumbel_noise(keys[active], step, log_probs.shape[-1]) if temperature > 0 else None
        chosen = choose_next(log_probs, temperature, top_k, noise)  # (rows,)
        at_limit = (row_limits == step) & ~ended  # such a sentence must end now
        truncated[active] |= at_limit & (chosen != EOS_IDX)  # it would have gone on
        chosen = torch.where(at_limit, EOS_IDX, chosen)
        taken = log_probs.gather(1, chosen.unsqueeze(1)).squeeze(1).masked_fill(ended, 0.0)
        scores[active] += taken
        ending = (chosen == EOS_IDX) & ~ended
        lengths[active] = torch.where(ending, step, lengths[active])
        ids[step, active] = chosen.masked_fill(ended | ending, PAD_IDX)
        if received is not None:
            writing = ~(ended | ending)  # a token shown, with its attention row
            received[active] += state.attention[0] * writing.unsqueeze(1)
            if weights is not None:
                weights[step, active] = state.attention[0]
        ended |= ending
        tokens = chosen.unsqueeze(0)
        if step % READ_EVERY == READ_EVERY - 1 and step + 1 < steps:
            still = (~ended).tolist()  # the loop's one read of the device, every READ_EVERY steps
            if not any(still):
                break
            if not all(still):
                kept = _on(device, [i for i, on in enumerate(still) if on])
                active, row_limits, ended, tokens = (
                    active[kept],
                    row_limits[kept],
                    ended[kept],
                    tokens[:, kept],
                )
                state = state.select(kept)
    attention = None
    if weights is not None:
        attention = weights.permute(1, 0, 2).unsqueeze(1)  # (B, 1, T, S)
    covered = coverage(received, src_lengths.to(device)) if received is not None else scores * 0
    return Found(
        ids.T.unsqueeze(1),
        lengths.unsqueeze(1),
        scores.unsqueeze(1),
        covered.unsqueeze(1),
        truncated.unsqueeze(1),
        attention,
    )


@torch.no_grad()
def beam_search(
    model: Seq2Seq,
    src: torch.Tensor,
    src_lengths: torch.Tensor,
    limits: torch.Tensor,
    beam_size: int,
    length_penalty: float = 1.0,
    n_best: int = 1,
    coverage_penalty: float = 0.0,
    with_attention: bool = False,
) -> Found:
    """The `n_best` translations of each sentence with the best normalised score found by beams.

    Each sentence keeps `beam_size` live partial translations, rows of one (B * beam) batch. A
    step looks at the best 2 * beam_size extensions: those that end with <eos> among the first
    beam_size join the sentence's n best finished ones if they rank among them, and the best
    beam_size others live on. A sentence is done, and its rows leave the batch, once its n best
    finished translations can be beaten by no live one; at its limit (B,), on the host, only
    <eos> may extend a live one. Translations are ranked by `normalised_score`. The tokens and
    attention of the live rows are kept in buffers preallocated for the longest limit, with
    each row's parent, and followed back once at the end.
    """
    batch_size, device, beam = src.shape[1], src.device, beam_size
    rows = batch_size * beam
    state = model.encode(src, src_lengths)
    state = state.select(torch.arange(batch_size, device=device).repeat_interleave(beam))
    limit_steps = set(limits.tolist())  # the steps where some sentence must end
    steps = max(limit_steps) + 1
    sentence_limits, sentence_lengths = limits.to(device), src_lengths.to(device)
    # the live rows, by their place in the batch (rows leave as their sentences are done)
    scores = torch.full((batch_size, beam), float("-inf"), device=device)
    scores[:, 0] = 0.0  # all beams start equal: keep one so the first step has no duplicates
    tokens = torch.full((1, rows), SOS_IDX, dtype=torch.long, device=device)
    row_ids = torch.arange(rows, device=device)  # each live row's place in the buffers
    attending = model.decoder.attention is not None
    received = torch.zeros(rows, src.shape[0], device=device) if attending else None
    # the history of every row: its token and the row it extended, per step
    history = torch.full((steps, rows), PAD_IDX, dtype=torch.long, device=device)
    parents = torch.zeros((steps, rows), dtype=torch.long, device=device)
    weights = None  # (steps, rows, S)
    if with_attention and attending:
        weights = torch.zeros(steps, rows, src.shape[0], device=device)
    best = _Finished.empty(batch_size, n_best, device)
    searching = torch.arange(batch_size, device=device)  # the sentences with live rows
    ranking = (length_penalty, coverage_penalty)
    for step in range(steps):
        logits, state = model.decoder(tokens, state)  # (1, n * beam, V)
        log_probs = allowed_log_probs(logits[0])  # (n * beam, V)
        n, vocab_size = scores.shape[0], log_probs.shape[-1]
        wanted_more = torch.zeros(n * beam, dtype=torch.bool, device=device)
        if step in limit_steps:  # known on the host: most steps skip this
            at_limit = (sentence_limits[searching] == step).repeat_interleave(beam)  # (n * beam,)
            wanted_more = at_limit & (log_probs.argmax(-1) != EOS_IDX)
            only_eos = torch.full_like(log_probs, float("-inf"))
            only_eos[:, EOS_IDX] = log_probs[:, EOS_IDX]
            log_probs = torch.where(at_limit.unsqueeze(1), only_eos, log_probs)
        candidates = (scores.view(-1, 1) + log_probs).view(n, -1)  # (n, beam * V)
        top_scores, top = candidates.topk(2 * beam, dim=-1)  # (n, 2 * beam), best first
        first_row = torch.arange(n, device=device).unsqueeze(1) * beam  # (n, 1)
        top_parents = first_row + top // vocab_size  # (n, 2 * beam) the rows they extend
        ends = top % vocab_size == EOS_IDX  # (n, 2 * beam)
        src_of_rows = sentence_lengths[searching].repeat_interleave(beam)  # (n * beam,)
        covered = coverage(received, src_of_rows) if received is not None else None
        ending = ends[:, :beam] & top_scores[:, :beam].isfinite()  # (n, beam)
        ending_parents = top_parents[:, :beam]  # (n, beam)
        candidate = _Finished(
            rank=torch.zeros(n, beam, dtype=torch.float64, device=device),
            score=top_scores[:, :beam],
            length=torch.full((n, beam), step, dtype=torch.long, device=device),
            row=row_ids[ending_parents],  # the row holding its last token, at step - 1
            coverage=covered[ending_parents] if covered is not None else top_scores[:, :beam] * 0,
            truncated=wanted_more[ending_parents],
        )
        candidate.rank = normalised_scores(candidate.score, step, candidate.coverage, *ranking)
        candidate.rank = candidate.rank.masked_fill(~ending, float("-inf"))
        best.merge(searching, candidate)
        # at most beam_size candidates end with <eos> (one per row), so beam_size others live on
        live = top_scores.masked_fill(ends, float("-inf")).topk(beam, dim=-1).indices
        scores = top_scores.gather(1, live)  # (n, beam)
        chosen_rows = top_parents.gather(1, live).view(-1)  # (n * beam,)
        tokens = (top.gather(1, live) % vocab_size).view(1, -1)  # (1, n * beam)
        history[step, row_ids] = tokens[0]
        parents[step, row_ids] = row_ids[chosen_rows]
        if received is not None:
            looked = state.attention[0, chosen_rows]  # (n * beam, S) the new token's weights
            received = received[chosen_rows] + looked
            if weights is not None:
                weights[step, row_ids] = looked
        state = state.select(chosen_rows)
        limit = sentence_limits[searching]
        reachable = _best_reachable(scores, step + 1, limit, length_penalty)  # (n,)
        done = (best.rank[searching, -1] >= reachable).tolist()  # the step's one read
        if all(done):
            break
        if any(done):
            kept = _on(device, [i for i, d in enumerate(done) if not d])
            kept_rows = (kept.unsqueeze(1) * beam + torch.arange(beam, device=device)).view(-1)
            scores, tokens, row_ids = scores[kept], tokens[:, kept_rows], row_ids[kept_rows]
            received = received[kept_rows] if received is not None else None
            state = state.select(kept_rows)
            searching = searching[kept]
    return best.found(history, parents, weights)


def _on(device: torch.device, indices: list[int]) -> torch.Tensor:
    """Host indices as a tensor on `device`, copied without waiting for the device."""
    return torch.tensor(indices).to(device, non_blocking=True)


def normalised_scores(
    scores: torch.Tensor,
    lengths: torch.Tensor | int,
    coverages: torch.Tensor,
    length_penalty: float,
    coverage_penalty: float = 0.0,
) -> torch.Tensor:
    """What beam search ranks by: score / (tokens + 1) ** length_penalty (<eos> counted) plus
    coverage_penalty * coverage, elementwise."""
    if isinstance(lengths, int):
        lengths = torch.tensor(lengths, device=scores.device)
    scores, coverages = scores.double(), coverages.double()  # as `normalised_score` ranks
    return scores / (lengths + 1).double() ** length_penalty + coverage_penalty * coverages


def normalised_score(
    hypothesis: Hypothesis, length_penalty: float, coverage_penalty: float = 0.0
) -> float:
    """`normalised_scores` of one hypothesis."""
    length_normalised = hypothesis.score / (len(hypothesis.ids) + 1) ** length_penalty
    return length_normalised + coverage_penalty * hypothesis.coverage


def _best_reachable(
    scores: torch.Tensor, length: int, limits: torch.Tensor, length_penalty: float
) -> torch.Tensor:
    """(n,) per sentence, the best normalised score its live rows (n, beam) of `length` tokens
    can reach.

    A live score (<= 0) only falls, and a row ends with `length` to `limits` tokens; the
    normalised score is monotonic in the length, so its best lies at one of the two ends. The
    coverage term is at most 0, so leaving it out keeps this a bound.
    """
    best_live = scores.max(dim=1).values  # (n,)
    ending_next = float(length + 1) ** length_penalty
    ending_at_limit = (limits + 1).to(scores.dtype) ** length_penalty
    reachable = torch.maximum(best_live / ending_next, best_live / ending_at_limit)
    return reachable.nan_to_num(nan=float("-inf"))  # rows with no live candidate left


@dataclass
class _Finished:
    """Each sentence's n best finished translations so far (B, n), best first, as pointers into
    beam search's history: the row that holds a translation's last token and its length."""

    rank: torch.Tensor  # (B, n) normalised score (float64); -inf for an empty slot
    score: torch.Tensor
    length: torch.Tensor
    row: torch.Tensor
    coverage: torch.Tensor
    truncated: torch.Tensor

    @classmethod
    def empty(cls, batch_size: int, n: int, device: torch.device) -> _Finished:
        zeros = torch.zeros(batch_size, n, device=device)
        return cls(
            torch.full((batch_size, n), float("-inf"), dtype=torch.float64, device=device),
            torch.full((batch_size, n), float("-inf"), device=device),
            torch.zeros(batch_size, n, dtype=torch.long, device=device),
            torch.zeros(batch_size, n, dtype=torch.long, device=device),
            zeros,
            torch.zeros(batch_size, n, dtype=torch.bool, device=device),
        )

    def merge(self, sentences: torch.Tensor, candidates: _Finished) -> None:
        """Keep the n best of sentences' (n,) finished ones and `candidates` (n, beam)."""
        n = self.rank.shape[1]
        names = [f.name for f in fields(self)]
        joined = {
            name: torch.cat([getattr(self, name)[sentences], getattr(candidates, name)], 1)
            for name in names
        }
        order = joined["rank"].topk(n, dim=1).indices  # (sentences, n), best first
        for name in names:
            getattr(self, name)[sentences] = joined[name].gather(1, order)

    def found(
        self, history: torch.Tensor, parents: torch.Tensor, weights: torch.Tensor | None
    ) -> Found:
        """The translations, followed back from their last rows through `parents`."""
        steps = history.shape[0]
        ids = torch.full((*self.row.shape, steps), PAD_IDX, dtype=torch.long, device=history.device)
        attention = None
        if weights is not None:
            attention = torch.zeros(
                *self.row.shape, steps, weights.shape[-1], device=weights.device
            )
        row = self.row.clone()  # (B, n)
        for step in reversed(range(steps)):
            inside = step < self.length  # (B, n)
            ids[:, :, step] = torch.where(inside, history[step, row], PAD_IDX)
            if attention is not None:
                attention[:, :, step] = weights[step, row] * inside.unsqueeze(-1)
            row = torch.where(inside, parents[step, row], row)
        scores = self.score.masked_fill(self.rank == float("-inf"), float("-inf"))
        return Found(ids, self.length, scores, self.coverage, self.truncated, attention)


def decode_examples(
    model: Seq2Seq,
    examples: PairIds,
    decoding: DecodingConfig,
    n_best: int = 1,
    seed: int | None = None,
    *,
    src_pad_idx: int,
    with_attention: bool = False,
) -> Iterator[tuple[np.ndarray, Found]]:
    """Decode the sources of many examples in length-sorted batches: each batch's positions in
    `examples` and what its search found (`n_best` translations each, one unless beam search is
    asked for more). The sources are padded with `src_pad_idx`, the source vocabulary's <pad>.
    """
    model.eval()
    device = next(model.parameters()).device
    batches = evaluation_batches(examples, decoding.batch_size, decoding.batch_tokens)
    for indices in progress_bar(batches, desc="translating", unit="batch", leave=False):
        batch = collate(examples, indices, src_pad_idx)  # only its source is read
        src, limits = batch.src.to(device), length_limits(batch.src_lengths, decoding)
        if decoding.beam_size > 1:
            found = beam_search(
                model,
                src,
                batch.src_lengths,
                limits,
                decoding.beam_size,
                decoding.length_penalty,
                n_best,
                decoding.coverage_penalty,
                with_attention,
            )
        else:
            keys = sampling_keys(src, batch.src_lengths, seed) if decoding.temperature > 0 else None
            found = decode(
                model,
                src,
                batch.src_lengths,
                limits,
                decoding.temperature,
                decoding.top_k,
                keys,
                with_attention,
            )
        yield indices, found
