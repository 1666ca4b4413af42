"""Rescoring n-best lists with a second model, such as one that writes the target right to left.

A left-to-right decoder commits to the start of a sentence before it sees the end, and its
translations tend to go wrong towards the end; a model trained with `data.reverse_trg` makes the
opposite mistakes. Scoring each of beam search's candidates with both models and ranking them by
a weighted sum of the two log-probabilities picks the candidate both find likely (Liu et al.,
2016; Sennrich et al., 2016, whose WMT systems rescored this way).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from encdec.errors import EncdecError
from encdec.evaluation import target_log_probs
from encdec.search import Hypothesis, normalised_score
from encdec.vocab import Vocab

if TYPE_CHECKING:
    from encdec.translator import Translator


def check_weight(weight: float) -> None:
    if not 0 <= weight <= 1:
        raise EncdecError(f"rescore_weight must be from 0 to 1, not {weight}")


def rescore(
    hypotheses: list[list[Hypothesis]],
    source_tokens: list[list[str]],
    trg_vocab: Vocab,
    rescorer: Translator,
    weight: float,
    ranking: tuple[float, float],
) -> list[list[Hypothesis]]:
    """Each sentence's candidates rescored and ranked again, best first.

    A candidate's new score is (1 - weight) * its score + weight * the rescorer's log-probability
    of it; candidates are ranked as beam search ranks them, by `search.normalised_score` with
    `ranking` = (length_penalty, coverage_penalty).
    """
    candidates = [(index, one) for index, sentence in enumerate(hypotheses) for one in sentence]
    examples = rescorer.examples(
        [source_tokens[index] for index, _ in candidates],
        [trg_vocab.decode(hypothesis.ids) for _, hypothesis in candidates],
    )
    second_opinions = target_log_probs(
        rescorer.model, examples, rescorer.trg_vocab.pad_idx, rescorer.config.decoding.batch_size
    )
    rescored: list[list[Hypothesis]] = [[] for _ in hypotheses]
    for (index, hypothesis), second_opinion in zip(candidates, second_opinions):
        score = (1 - weight) * hypothesis.score + weight * second_opinion
        rescored[index].append(replace(hypothesis, score=score))
    return [
        sorted(sentence, key=lambda h: normalised_score(h, *ranking), reverse=True)
        for sentence in rescored
    ]
