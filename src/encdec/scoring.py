"""`encdec score`: given translations against references (BLEU, chrF and their sacreBLEU
signatures), or given source/target pairs by a model (log-probabilities and perplexity)."""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import TYPE_CHECKING

from encdec import data
from encdec.devices import DEVICE_HELP
from encdec.model_arguments import CHECKPOINTS_HELP

if TYPE_CHECKING:  # the translator imports torch, which building the parser must not
    from encdec.translator import Translator

HELP = "score given translations against references, or given sentence pairs with a model"


def score_translations(hypotheses: list[str], references: list[str]) -> dict:
    """Corpus BLEU and chrF of `hypotheses`, as `encdec evaluate` computes them, and the
    sacreBLEU signatures that say how."""
    from encdec.metrics import bleu, chrf, signatures

    signed = signatures()
    return {
        "sentences": len(hypotheses),
        "bleu": bleu(hypotheses, references),
        "chrf": chrf(hypotheses, references),
        "bleu_signature": signed["bleu_signature"],
        "chrf_signature": signed["chrf_signature"],
    }


def score_pairs(translator: Translator, pairs: list[tuple[str, str]]) -> dict:
    """Each target's log-probability given its source (the true prefix read, <eos> scored), its
    token count and perplexity, and the perplexity of all of them together."""
    from encdec.evaluation import target_log_probs
    from encdec.metrics import perplexity

    source_tokens = translator.src_tokenizer.tokenize_many([source for source, _ in pairs])
    target_tokens = translator.trg_tokenizer.tokenize_many([target for _, target in pairs])
    log_probs = target_log_probs(
        translator.model,
        translator.examples(source_tokens, target_tokens),
        translator.trg_vocab.pad_idx,
        translator.config.decoding.batch_size,
    )
    lengths = [len(tokens) + 1 for tokens in target_tokens]  # each target's tokens and <eos>
    sentences = [
        {"log_prob": log_prob, "tokens": length, "ppl": perplexity(-log_prob / length)}
        for log_prob, length in zip(log_probs, lengths)
    ]
    total, tokens = math.fsum(log_probs), sum(lengths)
    corpus = {"pairs": len(pairs), "tokens": tokens, "log_prob": total}
    return corpus | {"ppl": perplexity(-total / tokens) if tokens else 1.0, "sentences": sentences}


def add_score_parser(verb) -> None:
    """The `score` verb and its two kinds (`verb` is cli.build_parser's sub-parser maker)."""
    parser = verb("score", HELP, None)
    kinds = parser.add_subparsers(dest="kind", required=True, metavar="KIND")

    def kind(name: str, help_text: str, handler) -> argparse.ArgumentParser:
        sub = kinds.add_parser(
            name, help=help_text, description=help_text, formatter_class=parser.formatter_class
        )
        sub.set_defaults(handler=handler, command_parser=sub)
        sub.add_argument("--json", action="store_true", help="print one JSON object")
        return sub

    translations = kind(
        "translations",
        "BLEU and chrF of a file of translations against references, lowercased as in "
        "encdec evaluate, with sacreBLEU's signatures",
        _print_translation_scores,
    )
    translations.add_argument("hypotheses", help="the translations, one a line (*.gz: gzipped)")
    translations.add_argument(
        "--ref", required=True, help="the reference translations, line for line"
    )
    pairs = kind(
        "pairs",
        "each target's log-probability given its source under a model (the true prefix read, "
        "<eos> included), one 'LOG-PROBABILITY<TAB>TOKENS<TAB>PERPLEXITY' line a pair; the "
        "perplexity of them all on stderr",
        _print_pair_scores,
    )
    pairs.add_argument("checkpoint", nargs="+", help=CHECKPOINTS_HELP)
    pairs.add_argument("--src", required=True, help="the source sentences, one a line")
    pairs.add_argument("--trg", required=True, help="their target sentences, line for line")
    pairs.add_argument(
        "--batch-size",
        type=int,
        metavar="N",
        help="pairs scored at once (default: the checkpoint's decoding.batch_size)",
    )
    pairs.add_argument("--device", default="auto", help=DEVICE_HELP)


def _print_translation_scores(args: argparse.Namespace) -> None:
    pairs = data.read_parallel(args.hypotheses, args.ref)
    scores = score_translations([hypothesis for hypothesis, _ in pairs], [ref for _, ref in pairs])
    if args.json:
        print(json.dumps(scores))
        return
    print(f"{args.hypotheses}: BLEU {scores['bleu']:.2f} | chrF {scores['chrf']:.2f}")
    print(f"BLEU signature: {scores['bleu_signature']}")
    print(f"chrF signature: {scores['chrf_signature']}")


def _print_pair_scores(args: argparse.Namespace) -> None:
    from encdec.config import decoding_with
    from encdec.translator import Translator

    translator = Translator.load(args.checkpoint, device=args.device)
    if args.batch_size is not None:
        decoding = translator.config.decoding
        translator.config.decoding = decoding_with(decoding, {"batch_size": args.batch_size})
    scores = score_pairs(translator, data.read_parallel(args.src, args.trg))
    if args.json:
        print(json.dumps(scores))
        return
    for sentence in scores["sentences"]:
        print(f"{sentence['log_prob']:.4f}\t{sentence['tokens']}\t{sentence['ppl']:.2f}")
    print(
        f"{args.trg}: {scores['pairs']} pairs, {scores['tokens']} target tokens with <eos>: "
        f"log-probability {scores['log_prob']:.2f}, perplexity {scores['ppl']:.2f} "
        "(teacher-forced)",
        file=sys.stderr,
    )
