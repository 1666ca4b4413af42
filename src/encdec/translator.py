"""Translator: a checkpoint in, translations (and scores) out."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from encdec.batching import evaluation_batches, numericalize
from encdec.checkpoint import load_checkpoint
from encdec.config import Config, from_dict
from encdec.corpus import tokenizers
from encdec.metrics import bleu, bleu_tok, chrf, perplexity
from encdec.model import Seq2Seq, build_model
from encdec.search import decode_examples
from encdec.training import run_epoch
from encdec.vocab import Vocab


def quantize_int8(model: Seq2Seq) -> Seq2Seq:
    """Dynamic int8 quantization of the recurrent and linear layers (weights int8, CPU only)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization is deprecated in favour of torchao
        return torch.ao.quantization.quantize_dynamic(
            model.eval(), {nn.LSTM, nn.GRU, nn.Linear}, dtype=torch.qint8
        )


class Translator:
    """Everything needed to translate: the model, its config, vocabularies and tokenizers."""

    def __init__(self, model: Seq2Seq, config: Config, src_vocab: Vocab, trg_vocab: Vocab):
        self.model, self.config = model.eval(), config
        self.src_vocab, self.trg_vocab = src_vocab, trg_vocab
        self.src_tokenizer, self.trg_tokenizer = tokenizers(config.data)

    @classmethod
    def load(cls, path: str | Path, int8: bool = False) -> Translator:
        """A translator from a checkpoint; `int8` quantizes it for faster CPU translation."""
        state = load_checkpoint(path)
        config = from_dict(state["config"])
        src_vocab, trg_vocab = Vocab(state["src_vocab"]), Vocab(state["trg_vocab"])
        model = build_model(config.model, len(src_vocab), len(trg_vocab))
        model.load_state_dict(state["model"])
        return cls(quantize_int8(model) if int8 else model, config, src_vocab, trg_vocab)

    def translate_tokens(
        self,
        sentences: Sequence[str],
        max_len: int | None = None,
        temperature: float | None = None,
        seed: int | None = None,
    ) -> list[list[str]]:
        """Target tokens for each sentence; batched by length, returned in input order."""
        decoding = self.config.decoding
        max_len = decoding.max_len if max_len is None else max_len
        temperature = decoding.temperature if temperature is None else temperature
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        source_tokens = self.src_tokenizer.tokenize_many(sentences)
        examples = [
            numericalize(tokens, [], self.src_vocab, self.trg_vocab, self.config.data.reverse_src)
            for tokens in source_tokens
        ]
        vocab = self.trg_vocab
        ids = decode_examples(
            self.model,
            examples,
            vocab.pad_idx,
            vocab.sos_idx,
            vocab.eos_idx,
            max_len,
            decoding.batch_size,
            temperature,
            generator,
        )
        return [vocab.decode(sentence_ids) for sentence_ids in ids]

    def translate(self, sentences: Sequence[str], **options) -> list[str]:
        """Translations as text, one per input sentence (an empty sentence gives '')."""
        return [
            self.trg_tokenizer.detokenize(tokens) if sentence.strip() else ""
            for sentence, tokens in zip(sentences, self.translate_tokens(sentences, **options))
        ]

    def evaluate(self, pairs: Sequence[tuple[str, str]]) -> dict:
        """Loss and perplexity (teacher forcing off, like validation), BLEU and chrF on pairs."""
        sources = [source for source, _ in pairs]
        references = [reference for _, reference in pairs]
        source_tokens = self.src_tokenizer.tokenize_many(sources)
        reference_tokens = self.trg_tokenizer.tokenize_many(references)
        examples = [
            numericalize(s, t, self.src_vocab, self.trg_vocab, self.config.data.reverse_src)
            for s, t in zip(source_tokens, reference_tokens)
        ]
        batches = evaluation_batches(examples, self.config.training.batch_size)
        loss = run_epoch(self.model, examples, batches, self.trg_vocab.pad_idx, 0.0).loss
        hypothesis_tokens = self.translate_tokens(sources)
        hypotheses = [self.trg_tokenizer.detokenize(tokens) for tokens in hypothesis_tokens]
        return {
            "loss": loss,
            "ppl": perplexity(loss),
            "bleu": bleu(hypotheses, references),
            "bleu_tok": bleu_tok(hypothesis_tokens, reference_tokens),
            "chrf": chrf(hypotheses, references),
        }
