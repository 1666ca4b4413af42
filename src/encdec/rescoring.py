"""Rescoring n-best lists with second opinions: a right-to-left model, a channel model.

A left-to-right decoder commits to the start of a sentence before it sees the end, and its
translations tend to go wrong towards the end; a model trained with `data.reverse_trg` makes the
opposite mistakes. Scoring each of beam search's candidates with both models and ranking them by
a weighted sum of the two log-probabilities picks the candidate both find likely (Liu et al.,
2016; Sennrich et al., 2016, whose WMT systems rescored this way).

A channel model, trained the other way (target to source), asks the opposite question: how
likely is the source, given the candidate? A fluent candidate that leaves out part of the source
explains it badly (the noisy channel of Yu et al., 2017, and Yee et al., 2019).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from encdec.errors import EncdecError
from encdec.evaluation import target_log_probs
from encdec.search import Hypothesis, normalised_score

if TYPE_CHECKING:
    from encdec.translator import Translator


# The weights a second opinion gets unless told otherwise (`encdec --rescore-weight` and
# `--channel-weight` default to the same). A channel model's log-probability sums over the whole
# source, so a small weight is its best on Multi30k (docs/results.md).
RESCORE_WEIGHT = 0.5
CHANNEL_WEIGHT = 0.05


@dataclass
class SecondOpinion:
    """A model that scores each candidate again, and the weight its log-probability gets."""

    translator: Translator
    weight: float
    channel: bool = False  # trained target -> source: scores log p(source | candidate)


def check_weights(rescore_weight: float, channel_weight: float = 0.0) -> None:
    """Each weight from 0 to 1, and together at most 1: the model's own score keeps the rest."""
    for name, weight in (("rescore_weight", rescore_weight), ("channel_weight", channel_weight)):
        if not 0 <= weight <= 1:
            raise EncdecError(f"{name} must be from 0 to 1, not {weight}")
    if rescore_weight + channel_weight > 1:
        raise EncdecError(
            f"rescore_weight + channel_weight must be at most 1, not "
            f"{rescore_weight} + {channel_weight}: the model's own score gets 1 minus their sum"
        )


def _log_probs(
    opinion: SecondOpinion,
    translator: Translator,
    source_tokens: list[list[str]],
    candidate_tokens: list[list[str]],
) -> list[float]:
    """The second opinion's log-probability of each (source, candidate) pair, <eos> included.

    A rescorer shares `translator`'s tokens and reads them as they are; a channel model reads
    the candidate as its source and writes the source, each split into words and then into its
    own subwords.
    """
    judge = opinion.translator
    if opinion.channel:
        source_words = map(translator.src_tokenizer.to_words, source_tokens)
        candidate_words = map(translator.trg_tokenizer.to_words, candidate_tokens)
        examples = judge.examples(
            judge.src_tokenizer.pieces_many(list(candidate_words)),
            judge.trg_tokenizer.pieces_many(list(source_words)),
        )
    else:
        examples = judge.examples(source_tokens, candidate_tokens)
    return target_log_probs(
        judge.model, examples, judge.trg_vocab.pad_idx, judge.config.decoding.batch_size
    )


def rescore(
    translator: Translator,
    hypotheses: list[list[Hypothesis]],
    source_tokens: list[list[str]],
    ranking: tuple[float, float],
) -> list[list[Hypothesis]]:
    """Each sentence's candidates rescored by `translator.second_opinions` and ranked again.

    A candidate's new score is (1 - the opinions' summed weight) * its score + the sum of each
    opinion's weight * its log-probability; candidates are ranked as beam search ranks them, by
    `search.normalised_score` with `ranking` = (length_penalty, coverage_penalty).
    """
    candidates = [(index, one) for index, sentence in enumerate(hypotheses) for one in sentence]
    candidate_sources = [source_tokens[index] for index, _ in candidates]
    candidate_tokens = [translator.reading_order(hypothesis.ids) for _, hypothesis in candidates]
    opinions = translator.second_opinions
    own_weight = 1 - sum(opinion.weight for opinion in opinions)
    scores = [own_weight * hypothesis.score for _, hypothesis in candidates]
    for opinion in opinions:
        log_probs = _log_probs(opinion, translator, candidate_sources, candidate_tokens)
        scores = [score + opinion.weight * log_prob for score, log_prob in zip(scores, log_probs)]
    rescored: list[list[Hypothesis]] = [[] for _ in hypotheses]
    for (index, hypothesis), score in zip(candidates, scores):
        rescored[index].append(replace(hypothesis, score=score))
    return [
        sorted(sentence, key=lambda h: normalised_score(h, *ranking), reverse=True)
        for sentence in rescored
    ]
