"""Translator: a checkpoint in, translations (and scores) out."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from torch import nn

from encdec import evaluation
from encdec.checkpoint import TOKEN_SETTINGS, check_mirrored_text, check_same_text, load_checkpoint
from encdec.config import Config, DecodingConfig, decoding_with, from_dict
from encdec.devices import resolve_device
from encdec.ensemble import Ensemble
from encdec.errors import EncdecError
from encdec.model import Seq2Seq, build_model
from encdec.pair_ids import PairIds
from encdec.rescoring import (
    CHANNEL_WEIGHT,
    RESCORE_WEIGHT,
    SecondOpinion,
    check_weights,
    rescore,
)
from encdec.search import Found, Hypothesis, decode_examples
from encdec.tokenize import Subwords, tokenizer_pair
from encdec.vocab import EOS, SOS, UNK, Vocab


def quantize_int8(model: Seq2Seq) -> Seq2Seq:
    """Dynamic int8 quantization of the recurrent and linear layers (weights int8, CPU only)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization is deprecated in favour of torchao
        return torch.ao.quantization.quantize_dynamic(
            model.eval(), {nn.LSTM, nn.GRU, nn.Linear}, dtype=torch.qint8
        )


@dataclass
class Translation:
    """One translation of one sentence, with what produced it."""

    text: str  # detokenized
    tokens: list[str]  # target tokens, specials stripped
    score: float  # the model's log-probability of the tokens and <eos> (mixed, with a rescorer)
    source_tokens: list[str]  # the source as the model read it, <sos> and <eos> included
    attention: torch.Tensor | None  # (len(tokens), len(source_tokens)); None unless asked for
    truncated: bool = False  # it reached the length limit (decoding.max_len_a, _b, max_len)


def answer_of(translations: list[Translation], with_attention: bool) -> dict:
    """One sentence's translations as JSON: the best one, the n-best list and maybe attention
    (what `encdec serve` answers and `encdec translate --json` writes)."""
    best = translations[0]
    result = {
        "text": best.text,
        "tokens": best.tokens,
        "score": best.score,
        "truncated": best.truncated,
        "n_best": [
            {"text": t.text, "tokens": t.tokens, "score": t.score, "truncated": t.truncated}
            for t in translations
        ],
        "source_tokens": best.source_tokens,
    }
    if with_attention and best.attention is not None:
        # (len(tokens), len(source_tokens)); 4 decimals are all a page or a plot can show
        result["attention"] = best.attention.float().round(decimals=4).tolist()
    return result


def _replace_unknowns(
    tokens: list[str], source_tokens: list[str], attention: torch.Tensor
) -> list[str]:
    """Each <unk> becomes the source word it attended to most (Luong et al., 2015)."""
    looked_at = attention.argmax(-1).tolist()  # (len(tokens),) source positions
    return [
        source_tokens[position]
        if token == UNK and source_tokens[position] not in (SOS, EOS)
        else token
        for token, position in zip(tokens, looked_at)
    ]


ENSEMBLE_REFUSAL = "an ensemble's checkpoints must be trained with the same data settings"
RESCORER_REFUSAL = "a rescorer must tokenize alike and share both vocabularies"


def hypotheses_of(found: Found) -> list[list[Hypothesis]]:
    """Each sentence's hypotheses, best first, from what a search found (on the host)."""
    ids, lengths, scores = found.ids.tolist(), found.lengths.tolist(), found.scores.tolist()
    coverages, truncated = found.coverage.tolist(), found.truncated.tolist()
    return [
        [
            Hypothesis(
                ids[b][j][: lengths[b][j]],
                scores[b][j],
                found.attention[b, j, : lengths[b][j]] if found.attention is not None else None,
                coverages[b][j],
                truncated[b][j],
            )
            for j in range(len(ids[b]))
            if scores[b][j] != float("-inf")  # a slot the search found nothing for
        ]
        for b in range(len(ids))
    ]


def _as_list(paths: str | Path | Sequence[str | Path]) -> list[str | Path]:
    return [paths] if isinstance(paths, (str, Path)) else list(paths)


def _model(state: dict, src_vocab_size: int, trg_vocab_size: int) -> Seq2Seq:
    """The model a checkpoint holds, with its weights."""
    model = build_model(from_dict(state["config"]).model, src_vocab_size, trg_vocab_size)
    model.load_state_dict(state["model"])
    return model


class Translator:
    """Everything needed to translate: the model, its config, vocabularies and tokenizers."""

    def __init__(
        self,
        model: Seq2Seq,
        config: Config,
        src_vocab: Vocab,
        trg_vocab: Vocab,
        subwords: tuple[Subwords | None, Subwords | None] = (None, None),
        int8: bool = False,
    ):
        # counted before int8 quantization packs the recurrent and linear weights away
        self.parameter_count = sum(parameter.numel() for parameter in model.parameters())
        self.model = quantize_int8(model) if int8 else model.eval()
        self.config = config
        self.src_vocab, self.trg_vocab = src_vocab, trg_vocab
        self.src_tokenizer, self.trg_tokenizer = tokenizer_pair(config.data, subwords)
        self.rescorer: SecondOpinion | None = None  # a second model that reranks the beam
        self.channel: SecondOpinion | None = None  # a target -> source model that reranks it

    @property
    def second_opinions(self) -> list[SecondOpinion]:
        """The models that rerank each sentence's beam: the rescorer, then the channel model."""
        return [opinion for opinion in (self.rescorer, self.channel) if opinion is not None]

    def rescore_with(self, rescorer: Translator, weight: float = RESCORE_WEIGHT) -> Translator:
        """Rank each sentence's beam by (1 - weight) * this model's + weight * `rescorer`'s
        log-probability (docs/results.md: a right-to-left rescorer)."""
        check_weights(weight, self.channel.weight if self.channel else 0.0)
        self.rescorer = SecondOpinion(rescorer, weight)
        return self

    def channel_with(self, channel: Translator, weight: float = CHANNEL_WEIGHT) -> Translator:
        """Add weight * `channel`'s log-probability of the source given each candidate to the
        ranking; `channel` translates this model's target language into its source language."""
        check_weights(self.rescorer.weight if self.rescorer else 0.0, weight)
        self.channel = SecondOpinion(channel, weight, channel=True)
        return self

    @classmethod
    def load(
        cls,
        path: str | Path | Sequence[str | Path],
        int8: bool = False,
        device: str = "auto",
        rescore_with: str | Path | Sequence[str | Path] | None = None,
        rescore_weight: float = RESCORE_WEIGHT,
        *,
        channel: str | Path | Sequence[str | Path] | None = None,
        channel_weight: float = CHANNEL_WEIGHT,
    ) -> Translator:
        """A translator from a checkpoint on `device` (auto, cpu, cuda, cuda:N).

        Several checkpoints make an ensemble: they must share their data settings and
        vocabularies, and the first one's decoding settings apply. `int8` quantizes the models
        for faster translation on the CPU. `rescore_with` names checkpoints (for example one
        trained with `data.reverse_trg`) that rerank each beam: see `rescore_with`. `channel`
        names checkpoints trained from the target language to the source: see `channel_with`.
        """
        check_weights(rescore_weight if rescore_with else 0.0, channel_weight if channel else 0.0)
        paths = _as_list(path)
        states = [load_checkpoint(one_path) for one_path in paths]
        translator = cls._from_states(paths, states, int8, device)
        if rescore_with is not None:
            check = partial(
                check_same_text,
                paths[0],
                states[0],
                refusal=RESCORER_REFUSAL,
                settings=TOKEN_SETTINGS,
            )
            rescorer = cls._load_checked(_as_list(rescore_with), check, int8, device)
            translator.rescore_with(rescorer, rescore_weight)
        if channel is not None:
            check = partial(check_mirrored_text, paths[0], states[0])
            channel_model = cls._load_checked(_as_list(channel), check, int8, device)
            translator.channel_with(channel_model, channel_weight)
        return translator

    @classmethod
    def _load_checked(
        cls,
        paths: list[str | Path],
        check: Callable[[str | Path, dict], None],
        int8: bool,
        device: str,
    ) -> Translator:
        """A translator from `paths` once each checkpoint has passed `check(path, state)`."""
        states = [load_checkpoint(one_path) for one_path in paths]
        for one_path, state in zip(paths, states):
            check(one_path, state)
        return cls._from_states(paths, states, int8, device)

    @classmethod
    def _from_states(
        cls, paths: list[str | Path], states: list[dict], int8: bool, device: str
    ) -> Translator:
        """A translator from the loaded checkpoints of `paths` (an ensemble if several)."""
        target = resolve_device("cpu" if int8 and device == "auto" else device)
        if int8 and target.type != "cpu":
            raise EncdecError(f"int8 translation runs on the CPU, not on {target}")
        for other_path, other in zip(paths[1:], states[1:]):
            check_same_text(paths[0], states[0], other_path, other, ENSEMBLE_REFUSAL)
        first = states[0]
        config = from_dict(first["config"])
        src_vocab, trg_vocab = Vocab(first["src_vocab"]), Vocab(first["trg_vocab"])
        models = [_model(state, len(src_vocab), len(trg_vocab)).to(target) for state in states]
        subwords = tuple(
            Subwords(first[key]) if first.get(key) else None
            for key in ("src_subwords", "trg_subwords")
        )
        model = models[0] if len(models) == 1 else Ensemble(models)
        return cls(model, config, src_vocab, trg_vocab, subwords, int8)

    def translations(
        self,
        sentences: Sequence[str],
        n_best: int = 1,
        seed: int | None = None,
        beam: int | None = None,
        with_attention: bool = True,
        **options,
    ) -> list[list[Translation]]:
        """The `n_best` translations of each sentence, with tokens, scores and attention.

        `beam=5` is short for `beam_size=5`. Without `with_attention` the translations carry
        no attention (it is not kept while searching).

        `options` override the checkpoint's decoding settings (docs/config.md): beam_size,
        max_len_a, max_len_b, max_len, temperature, top_k, length_penalty, coverage_penalty,
        unk_replace. Inputs are batched by length; results come back in input order. A blank
        sentence (empty, or only whitespace) is not translated: it gets one empty translation,
        scored 0.
        """
        if isinstance(sentences, str):  # it would translate each of its characters
            raise TypeError(
                f"sentences must be a list of strings, not one string: put it in a list, "
                f"[{sentences!r}]"
            )
        source_tokens = self.src_tokenizer.tokenize_many(sentences)
        return self.translations_of(
            sentences, source_tokens, n_best, seed, beam, with_attention, **options
        )

    def translations_of(
        self,
        sentences: Sequence[str],
        source_tokens: list[list[str]],
        n_best: int = 1,
        seed: int | None = None,
        beam: int | None = None,
        with_attention: bool = True,
        **options,
    ) -> list[list[Translation]]:
        """`translations` of `sentences`, which `src_tokenizer` made into `source_tokens`."""
        decoding = self._decoding(n_best, {"beam_size": beam, **options})
        attending = self.model.decoder.attention is not None
        keeping_attention = attending and (with_attention or decoding.unk_replace)
        kept = [index for index, sentence in enumerate(sentences) if sentence.strip()]
        kept_tokens = [source_tokens[index] for index in kept]
        hypotheses = self._hypotheses(kept_tokens, decoding, n_best, seed, keeping_attention)
        if self.second_opinions:
            ranking = (decoding.length_penalty, decoding.coverage_penalty)
            hypotheses = rescore(self, hypotheses, kept_tokens, ranking)
        blank = Translation("", [], 0.0, [], torch.zeros(0, 0) if keeping_attention else None)
        results = [[blank] for _ in sentences]
        for index, tokens, sentence_hypotheses in zip(kept, kept_tokens, hypotheses):
            results[index] = [
                self._translation(tokens, hypothesis, decoding.unk_replace)
                for hypothesis in sentence_hypotheses[:n_best]
            ]
        return results

    def _hypotheses(
        self,
        source_tokens: list[list[str]],
        decoding: DecodingConfig,
        n_best: int,
        seed: int | None,
        with_attention: bool,
    ) -> list[list[Hypothesis]]:
        """Each source's hypotheses, best first: `n_best`, or with second opinions the whole
        beam they rerank. A batch's tensors come to the host once."""
        examples = self.examples(source_tokens, [[] for _ in source_tokens])
        hypotheses: list[list[Hypothesis]] = [[] for _ in source_tokens]
        for indices, found in decode_examples(
            self.model,
            examples,
            decoding,
            decoding.beam_size if self.second_opinions else n_best,
            seed,
            src_pad_idx=self.src_vocab.pad_idx,
            with_attention=with_attention,
        ):
            for index, sentence_hypotheses in zip(indices.tolist(), hypotheses_of(found.to("cpu"))):
                hypotheses[index] = sentence_hypotheses
        return hypotheses

    def examples(
        self, source_tokens: list[list[str]], target_tokens: list[list[str]]
    ) -> PairIds:
        """Token lists as the model's ids, either side reversed if the model was so trained."""
        data = self.config.data
        return PairIds.from_token_lists(
            source_tokens,
            target_tokens,
            self.src_vocab,
            self.trg_vocab,
            data.reverse_src,
            data.reverse_trg,
        )

    def translate(self, sentences: Sequence[str], **options) -> list[str]:
        """Translations as text, one per input sentence (an empty sentence gives '').

        Takes the options of `translations`, e.g. `beam_size=5` or `temperature=0.8, seed=1`.
        """
        return [best.text for best, *_ in self.translations(sentences, **options)]

    def _decoding(self, n_best: int, options: dict) -> DecodingConfig:
        """The checkpoint's decoding settings with `options` applied and checked."""
        decoding = decoding_with(self.config.decoding, options)
        if n_best > decoding.beam_size:
            raise EncdecError(f"n_best ({n_best}) cannot exceed beam_size ({decoding.beam_size})")
        if self.second_opinions and decoding.beam_size == 1:
            raise EncdecError(
                "a rescorer or channel model reranks the translations of a beam: "
                "ask for a beam above 1 too"
            )
        if self.model.decoder.attention is None:
            for needs_attention in ("unk_replace", "coverage_penalty"):
                if getattr(decoding, needs_attention):
                    raise EncdecError(
                        f"{needs_attention} needs a model with attention (model.attention)"
                    )
        return decoding

    def reading_order(self, ids: list[int]) -> list[str]:
        """A hypothesis's target ids as tokens in reading order (a right-to-left model's turned)."""
        tokens = self.trg_vocab.decode(ids)
        return tokens[::-1] if self.config.data.reverse_trg else tokens

    def _translation(
        self, source_tokens: list[str], hypothesis: Hypothesis, unk_replace: bool
    ) -> Translation:
        tokens, attention = self.reading_order(hypothesis.ids), hypothesis.attention
        if self.config.data.reverse_trg and attention is not None:  # rows follow the tokens
            attention = attention.flip(0)
        # what the model read: <sos>, the (maybe reversed) source, <eos>
        read = [SOS, *(source_tokens[::-1] if self.config.data.reverse_src else source_tokens), EOS]
        if attention is not None:
            attention = attention[:, : len(read)]  # a batch pads sources; padding gets no weight
        if unk_replace and attention is not None:
            tokens = _replace_unknowns(tokens, read, attention)
        text = self.trg_tokenizer.detokenize(tokens)
        return Translation(text, tokens, hypothesis.score, read, attention, hypothesis.truncated)

    def evaluate(
        self,
        pairs: Sequence[tuple[str, str]],
        seed: int | None = None,
        beam: int | None = None,
        **options,
    ) -> dict:
        """Loss and perplexity (teacher forcing off, like validation), BLEU and chrF on pairs.

        `seed`, `beam` and `options` are decoding settings, as for `translations`.
        """
        return evaluation.evaluate(self, pairs, seed=seed, beam=beam, **options)
