"""`encdec translate`: lines from a file, stdin or a terminal in; translations, or n-best lists
with their scores, out."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from encdec import data
from encdec.config import decoding_with
from encdec.errors import EncdecError
from encdec.model_arguments import load_translator
from encdec.progress import silence_bars

if TYPE_CHECKING:  # the translator imports torch, which building the parser must not
    from encdec.translator import Translation, Translator


def cmd_translate(args: argparse.Namespace) -> None:
    """Translate --input, stdin, or lines as they are typed at a terminal; print or write them."""
    if not args.output:
        if args.input or not sys.stdin.isatty():
            sys.stdout.write(_translated_text(args))
        else:
            _translate_as_typed(args)
        return
    from encdec.checkpoint import atomic_file

    with atomic_file(args.output) as file:  # a bad --output path fails before translating
        file.write(data.file_bytes(_translated_text(args), args.output))


def _translated_text(args: argparse.Namespace) -> str:
    """The translations of --input (or stdin), one line each (or --n-best lines each)."""
    translator = _checked_translator(args)
    if args.input:
        source = data.read_lines(args.input)
    else:  # bytes, decoded here, so that text that is not UTF-8 gets a clear error
        source = data.read_stream_lines(sys.stdin.buffer, "stdin")
    with silence_bars(args.quiet):
        return _translations_text(translator, source, args)


def _translate_as_typed(args: argparse.Namespace) -> None:
    """At a terminal: translate each line as soon as it is typed, until Ctrl-D."""
    translator = _checked_translator(args)
    print("encdec translate: type a sentence and press Enter; Ctrl-D ends", file=sys.stderr)
    for index, line in enumerate(iter(sys.stdin.buffer.readline, b"")):
        try:
            sentence = line.decode("utf-8").removesuffix("\n").removesuffix("\r")
        except UnicodeDecodeError as error:  # a line lost; the session goes on
            print(f"stdin:{index + 1}: not valid UTF-8 ({error.reason})", file=sys.stderr)
            continue
        with silence_bars():
            sys.stdout.write(_translations_text(translator, [sentence], args, first_line=index))
        sys.stdout.flush()


def _checked_translator(args: argparse.Namespace) -> Translator:
    """The translator of the checkpoint arguments, once --n-best is known to fit the beam."""
    if args.n_best is not None and args.n_best < 1:
        raise EncdecError(f"--n-best must be at least 1, got {args.n_best}")
    translator = load_translator(args)
    n_best = args.n_best or 1
    beam_size = decoding_with(translator.config.decoding, decoding_options(args)).beam_size
    if n_best > beam_size:
        raise EncdecError(
            f"--n-best {n_best} needs a beam at least as wide: add --beam {n_best} or more "
            f"(decoding as asked uses a beam of {beam_size})"
        )
    return translator


def _translations_text(
    translator: Translator, source: list[str], args: argparse.Namespace, first_line: int = 0
) -> str:
    """The translations of `source` as output text: the best of each sentence, a line each, or
    with --n-best its n-best list, lines numbered from `first_line`; with --json, a JSON object
    a sentence."""
    n_best_lists = translator.translations(
        source,
        n_best=args.n_best or 1,
        seed=args.seed,
        with_attention=args.json,
        **decoding_options(args),
    )
    cut = sum(best.truncated for best, *_ in n_best_lists)
    if cut:
        print(
            f"encdec translate: {cut} of {len(source)} lines reached the length limit "
            "(decoding.max_len_a * source tokens + max_len_b, at most max_len) and were cut",
            file=sys.stderr,
        )
    if args.json:
        from encdec.translator import answer_of

        answers = [answer_of(translations, with_attention=True) for translations in n_best_lists]
        return text_of_lines([json.dumps(answer, ensure_ascii=False) for answer in answers])
    if args.n_best is None:
        return text_of_lines([best.text for best, *_ in n_best_lists])
    return text_of_lines(_n_best_lines(source, n_best_lists, first_line))


def _n_best_lines(
    source: list[str], n_best_lists: list[list[Translation]], first_line: int
) -> list[str]:
    """`LINE ||| TRANSLATION ||| SCORE` for each translation, best first within a line: the
    n-best format of Moses and Marian (input lines counted from 0), SCORE as `Translation.score`.
    A blank input line is not translated: it gets one empty translation, scored 0."""
    lines = []
    for line, (sentence, translations) in enumerate(zip(source, n_best_lists), first_line):
        scored = [(t.text, t.score) for t in translations] if sentence.strip() else [("", 0.0)]
        lines += [f"{line} ||| {text} ||| {score:.4f}" for text, score in scored]
    return lines


def text_of_lines(lines: list[str]) -> str:
    """Lines as one text, each ended by a newline: what --output files hold."""
    return "".join(line + "\n" for line in lines)


def decoding_options(args: argparse.Namespace) -> dict:
    """The decoding settings given on the command line; the rest come from the checkpoint."""
    return {
        "beam_size": args.beam,
        "length_penalty": args.length_penalty,
        "coverage_penalty": args.coverage_penalty,
        "max_len": args.max_len,
        "temperature": getattr(args, "temperature", None),
        "top_k": getattr(args, "top_k", None),
        "unk_replace": args.unk_replace or None,
    }
