"""Decoding: from a source batch to target ids, greedily, by sampling, or by beam search.

All three run a whole batch at once and call the decoder one step at a time, exactly as in
training; they differ only in which next tokens they keep.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from encdec.batching import collate, evaluation_batches
from encdec.config import DecodingConfig
from encdec.model import Seq2Seq
from encdec.pair_ids import PairIds
from encdec.progress import progress_bar
from encdec.vocab import PAD_IDX, SOS_IDX, Vocab

NEVER_CHOSEN = (PAD_IDX, SOS_IDX)  # tokens no translation may contain (fairseq's rule too)


def allowed_log_probs(scores: torch.Tensor) -> torch.Tensor:
    """log_softmax of (rows, V) scores, with <pad> and <sos> at -inf so no search picks them.

    They are masked after the normalisation, so the other tokens keep the model's own
    log-probabilities (what `evaluation.target_log_probs` scores) and sampling's distribution
    is the model's renormalised over the tokens it may choose.
    """
    log_probs = torch.log_softmax(scores, dim=-1)
    log_probs[:, NEVER_CHOSEN] = float("-inf")
    return log_probs


@dataclass
class Hypothesis:
    """One translation: its ids, how likely the model finds it, and where it looked."""

    ids: list[int]  # target ids, without <sos> and <eos>
    score: float  # sum of the log-probabilities of its tokens, <eos> included
    attention: torch.Tensor | None = None  # (len(ids), S) weights over the source per token
    coverage: float = 0.0  # how fully its attention covered the source (`coverage`); 0 is fully


def coverage(attention: torch.Tensor | None, src_length: int) -> float:
    """Sum over the source words of log(min(attention they received, 1)) (Wu et al., 2016).

    `attention` (steps, S) holds one translation's weights over a source of `src_length`
    positions, <sos> and <eos> included, which are left out here. A word that the translation
    attended to for a whole step or more adds 0; one it overlooked adds a large negative number,
    so ranking by `coverage_penalty` times this favours translations that leave nothing out.
    """
    if attention is None:
        return 0.0
    received = attention[:, 1 : src_length - 1].sum(dim=0)  # (source words,)
    return received.clamp(min=1e-10, max=1.0).log().sum().item()


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
    batch_size, device = src.shape[1], src.device
    # the buffers stay on the model's device; one read at the end brings them to the host
    generated = torch.full((max_len, batch_size), eos_idx, dtype=torch.long, device=device)
    scores = torch.zeros(batch_size, device=device)
    attention = None  # (max_len, B, S) weights per step, for a model with attention
    if model.decoder.attention is not None:
        attention = torch.zeros(max_len, batch_size, src.shape[0], device=device)
    active = torch.arange(batch_size, device=device)  # batch positions still decoding
    tokens = torch.full((1, batch_size), sos_idx, dtype=torch.long, device=device)
    for step in range(max_len):
        logits, state = model.decoder(tokens, state)  # (1, active, V)
        log_probs = allowed_log_probs(logits[0])  # (active, V)
        tokens = choose_next(log_probs, temperature, top_k, generator).unsqueeze(0)  # (1, active)
        scores[active] += log_probs.gather(1, tokens.T).squeeze(1)
        generated[step, active] = tokens[0]
        if attention is not None:
            attention[step, active] = state.attention[0]
        unfinished = tokens[0] != eos_idx
        still_decoding = int(unfinished.sum())  # the step's one read on the host
        if still_decoding == 0:
            break
        if still_decoding < len(active):
            active, tokens = active[unfinished], tokens[:, unfinished]
            state = state.select(unfinished)
    generated, scores = generated.cpu(), scores.tolist()
    attention = attention.cpu() if attention is not None else None
    lengths = src_lengths.tolist()
    return [
        _hypothesis(
            generated[:, i],
            scores[i],
            attention[:, i] if attention is not None else None,
            eos_idx,
            lengths[i],
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
    coverage_penalty: float = 0.0,
) -> list[list[Hypothesis]]:
    """The `n_best` translations of each sentence with the best normalised score found by beams.

    Each sentence keeps `beam_size` live partial translations, rows of one (B * beam) batch. A
    step looks at the best 2 * beam_size extensions: those that end with <eos> among the first
    beam_size are set aside as finished, and the best beam_size others live on. A sentence is
    done, and its rows leave the batch, once it has `n_best` finished translations that no live
    one can still beat; at `max_len` the live ones finish as they stand. Translations are ranked
    by score / (len(ids) + 1) ** `length_penalty` (0 ranks by the raw log-probability), plus
    `coverage_penalty` times their `coverage` of the source (0 leaves it out).
    """
    batch_size, device = src.shape[1], src.device
    state = model.encode(src, src_lengths)
    state = state.select(torch.arange(batch_size, device=device).repeat_interleave(beam_size))
    scores = torch.full((batch_size, beam_size), float("-inf"), device=device)
    scores[:, 0] = 0.0  # all beams start equal: keep one so the first step has no duplicates
    tokens = torch.full((1, batch_size * beam_size), sos_idx, dtype=torch.long, device=device)
    history = tokens[:0]  # (steps, rows) the live rows' tokens
    attention = None  # (steps, rows, S) the live rows' attention, for a model with attention
    if model.decoder.attention is not None:
        attention = torch.zeros(0, batch_size * beam_size, src.shape[0], device=device)
    searching = list(range(batch_size))  # the sentences whose rows are in the batch, in order
    src_length = src_lengths.tolist()  # per sentence of the batch
    finished: list[list[Hypothesis]] = [[] for _ in range(batch_size)]
    ranking = (length_penalty, coverage_penalty)  # what normalised_score ranks by
    for _ in range(max_len):
        logits, state = model.decoder(tokens, state)  # (1, rows, V)
        log_probs = allowed_log_probs(logits[0])  # (rows, V)
        vocab_size = log_probs.shape[-1]
        candidates = (scores.view(-1, 1) + log_probs).view(len(searching), -1)  # (n, beam * V)
        top_scores, top = candidates.topk(2 * beam_size, dim=-1)  # (n, 2 * beam), best first
        first_row = torch.arange(len(searching), device=device).unsqueeze(1) * beam_size  # (n, 1)
        parents = first_row + top // vocab_size  # (n, 2 * beam) the rows they extend
        ends = top % vocab_size == eos_idx  # (n, 2 * beam)
        setting_aside = ends[:, :beam_size] & top_scores[:, :beam_size].isfinite()  # (n, beam)
        if setting_aside.any():
            _set_aside(
                finished,
                searching,
                src_length,
                setting_aside,
                top_scores,
                parents,
                history,
                attention,
            )
        # at most beam_size candidates end with <eos> (one per row), so beam_size others live on
        live = top_scores.masked_fill(ends, float("-inf")).topk(beam_size, dim=-1).indices
        scores = top_scores.gather(1, live)  # (n, beam)
        rows = parents.gather(1, live).view(-1)  # (n * beam,)
        tokens = (top.gather(1, live) % vocab_size).view(1, -1)  # (1, n * beam)
        history = torch.cat([history[:, rows], tokens])
        if attention is not None:
            attention = torch.cat([attention[:, rows], state.attention[:, rows]])
        state = state.select(rows)
        reachable = _best_reachable(scores, history.shape[0], max_len, length_penalty)
        staying = [
            index
            for index, sentence in enumerate(searching)
            if not _is_done(finished[sentence], reachable[index], n_best, ranking)
        ]
        if len(staying) < len(searching):
            if not staying:
                return _best_finished(finished, ranking, n_best)
            kept = torch.tensor(staying, device=device)
            rows = (kept.unsqueeze(1) * beam_size + torch.arange(beam_size, device=device)).view(-1)
            scores, tokens, history = scores[kept], tokens[:, rows], history[:, rows]
            attention = attention[:, rows] if attention is not None else None
            state = state.select(rows)
            searching = [searching[index] for index in staying]
    _finish_live(finished, searching, src_length, scores, history, attention)
    return _best_finished(finished, ranking, n_best)


def normalised_score(
    hypothesis: Hypothesis, length_penalty: float, coverage_penalty: float = 0.0
) -> float:
    """What beam search ranks by: score / (tokens + 1) ** length_penalty (<eos> counted) plus
    coverage_penalty * the hypothesis's coverage of the source."""
    length_normalised = hypothesis.score / (len(hypothesis.ids) + 1) ** length_penalty
    return length_normalised + coverage_penalty * hypothesis.coverage


def _best_reachable(
    scores: torch.Tensor, length: int, max_len: int, length_penalty: float
) -> list[float]:
    """Per sentence, the best normalised score its live rows (n, beam) of `length` tokens can reach.

    A live score (<= 0) only falls, and a row ends with `length` to `max_len` tokens; the
    normalised score is monotonic in the length, so its best lies at one of the two ends. The
    coverage term is at most 0, so leaving it out keeps this a bound.
    """
    best_live = scores.max(dim=1).values  # (n,)
    ending_next, ending_at_max_len = (length + 1) ** length_penalty, (max_len + 1) ** length_penalty
    return torch.maximum(best_live / ending_next, best_live / ending_at_max_len).tolist()


def _is_done(
    finished: list[Hypothesis], reachable: float, n_best: int, ranking: tuple[float, float]
) -> bool:
    """Whether `n_best` finished translations are kept that no live one can beat any more."""
    if len(finished) < n_best:
        return False
    kept = sorted((normalised_score(h, *ranking) for h in finished), reverse=True)
    return reachable <= kept[n_best - 1]


def _set_aside(
    finished: list[list[Hypothesis]],
    searching: list[int],
    src_length: list[int],
    setting_aside: torch.Tensor,
    top_scores: torch.Tensor,
    parents: torch.Tensor,
    history: torch.Tensor,
    attention: torch.Tensor | None,
) -> None:
    """Add the candidates that end with <eos> to their sentences' finished translations."""
    beam_size = setting_aside.shape[1]
    rows = parents[:, :beam_size][setting_aside]  # (m,) the live rows they end
    scores = top_scores[:, :beam_size][setting_aside].tolist()
    ids = history[:, rows].T.tolist()  # m lists of tokens, <eos> left out
    weights = attention[:, rows].cpu() if attention is not None else None  # (steps, m, S)
    sentences = setting_aside.nonzero()[:, 0].tolist()
    for index, (sentence, score) in enumerate(zip(sentences, scores)):
        looked = weights[:, index] if weights is not None else None
        original = searching[sentence]
        covered = coverage(looked, src_length[original])
        finished[original].append(Hypothesis(ids[index], score, looked, covered))


def _finish_live(
    finished: list[list[Hypothesis]],
    searching: list[int],
    src_length: list[int],
    scores: torch.Tensor,
    history: torch.Tensor,
    attention: torch.Tensor | None,
) -> None:
    """At max_len: the live rows, cut off without <eos>, join their sentences' finished ones."""
    beam_size = scores.shape[1]
    flat_scores, ids = scores.view(-1).tolist(), history.T.tolist()
    weights = attention.cpu() if attention is not None else None  # (max_len, rows, S)
    for row, score in enumerate(flat_scores):
        if score != float("-inf"):  # a row that never had a real candidate to extend
            looked = weights[:, row] if weights is not None else None
            original = searching[row // beam_size]
            covered = coverage(looked, src_length[original])
            finished[original].append(Hypothesis(ids[row], score, looked, covered))


def _best_finished(
    finished: list[list[Hypothesis]], ranking: tuple[float, float], n_best: int
) -> list[list[Hypothesis]]:
    """Each sentence's `n_best` finished translations, best first by normalised score."""
    return [
        sorted(hypotheses, key=lambda h: normalised_score(h, *ranking), reverse=True)[:n_best]
        for hypotheses in finished
    ]


def _hypothesis(
    tokens: torch.Tensor,
    score: float,
    attention: torch.Tensor | None,
    eos_idx: int,
    src_length: int,
) -> Hypothesis:
    """A hypothesis from one column of generated tokens (steps,), cut at its first <eos>."""
    ids = tokens.tolist()
    length = ids.index(eos_idx) if eos_idx in ids else len(ids)
    looked = attention[:length] if attention is not None else None
    return Hypothesis(ids[:length], score, looked, coverage(looked, src_length))


def decode_examples(
    model: Seq2Seq,
    examples: PairIds,
    trg_vocab: Vocab,
    decoding: DecodingConfig,
    n_best: int = 1,
    generator: torch.Generator | None = None,
    *,
    src_pad_idx: int,
) -> list[list[Hypothesis]]:
    """Decode the sources of many examples in length-sorted batches; results in input order.

    Each example gets its `n_best` hypotheses (one, unless beam search is asked for more). The
    sources are padded with `src_pad_idx`, the source vocabulary's <pad>.
    """
    model.eval()
    device = next(model.parameters()).device
    outputs: list[list[Hypothesis]] = [[] for _ in range(len(examples))]
    batches = evaluation_batches(examples, decoding.batch_size)
    for indices in progress_bar(batches, desc="translating", unit="batch", leave=False):
        batch = collate(examples, indices, src_pad_idx)  # only its source is read
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
                decoding.coverage_penalty,
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
