"""The `encdec` command: one verb per job; a user's mistake becomes one clear line."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import encdec
from encdec import data
from encdec.config import from_dict, load_config
from encdec.devices import DEVICE_HELP
from encdec.errors import EncdecError
from encdec.model_arguments import (
    CHECKPOINT_HELP,
    add_decoding_settings_arguments,
    add_model_arguments,
    load_translator,
)
from encdec.progress import silence_bars
from encdec.scoring import add_score_parser
from encdec.serve import add_serve_parser
from encdec.translate_command import cmd_translate, decoding_options, text_of_lines

EXAMPLES = {
    "train": "encdec train --config configs/multi30k_seed.yaml --data-dir ../shared/data/multi30k "
    "--out runs/seed",
    "prepare": "encdec prepare --config configs/multi30k_seed.yaml --data-dir "
    "../shared/data/multi30k --out prepared/de-en",
    "translate": 'echo "Ein Mann fährt Fahrrad." | encdec translate runs/seed/best.pt --beam 5',
    "evaluate": "encdec evaluate runs/seed/best.pt --split test --json",
    "data-stats": "encdec data-stats --data-dir ../shared/data/multi30k --src de --trg en",
    "demo": "encdec demo",
    "download": "encdec download --langs de en",
    "average": "encdec average runs/attention/epoch_01[3-5].pt --output runs/attention/avg.pt",
    "plot": "encdec plot curves runs/seed; "
    'encdec plot attention runs/attention/best.pt "Ein Mann fährt Fahrrad."',
    "serve": "encdec serve runs/attention --port 8000",
    "score": "encdec score translations hypotheses.en --ref test.en; "
    "encdec score pairs runs/seed --src test.de --trg test.en",
}

# The demo: a tiny English->Spanish model that memorises the embedded phrase list in seconds.
DEMO_CONFIG = {
    "data": {"dataset": "toy", "src_lang": "en", "trg_lang": "es", "min_freq": 1},
    "model": {"embedding_dim": 64, "hidden_dim": 128, "num_layers": 2, "dropout": 0.0},
    "training": {"epochs": 80, "batch_size": 16, "lr": 0.003, "teacher_forcing_ratio": 1.0},
    "decoding": {"max_len": 10},
}
# Bars are drawn on stderr only when it is a terminal; --quiet turns them off there too.
QUIET_HELP = "no progress bars on stderr"
AS_TRAINED = " (default: the checkpoint's decoding settings)"

DEMO_SENTENCES = [
    "good morning",
    "thank you very much",
    "i am hungry.",
    "see you tomorrow",
    "let's go",
]


# the config fields that options set: an error about the value names the option
OPTION_FIELDS = {
    "beam": "decoding.beam_size",
    "length_penalty": "decoding.length_penalty",
    "coverage_penalty": "decoding.coverage_penalty",
    "max_len": "decoding.max_len",
    "temperature": "decoding.temperature",
    "top_k": "decoding.top_k",
    "epochs": "training.epochs",
    "max_steps": "training.max_steps",
    "max_updates": "training.max_updates",
    "min_freq": "data.min_freq",
    "batch_size": "decoding.batch_size",
    "batch_tokens": "decoding.batch_tokens",
}


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Each option's default shown once, and only where it says something (not None or False)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text, default = action.help or "", action.default
        says_nothing = default in (None, [], argparse.SUPPRESS) or default is False
        if says_nothing or "default" in help_text or not action.option_strings:
            return help_text
        shown = " ".join(map(str, default)) if isinstance(default, list) else str(default)
        return f"{help_text} (default: {shown.replace('%', '%%')})"


def _check_options(args: argparse.Namespace) -> None:
    """Check the values of options that set config fields; an error names the option."""
    for dest, field in OPTION_FIELDS.items():
        value = getattr(args, dest, None)
        if value is None:
            continue
        section, key = field.split(".")
        try:
            from_dict({section: {key: value}})
        except EncdecError as error:
            option = "--" + dest.replace("_", "-")
            raise EncdecError(str(error).replace(f"config field '{field}'", option)) from None


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", help="YAML config file (see docs/config.md); defaults if left out"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config value, e.g. --set training.lr=0.0005 (repeatable)",
    )
    parser.add_argument(
        "--data-dir",
        help="folder holding the Multi30k .gz files "
        "(default: $ENCDEC_DATA, then the download cache)",
    )


def _config_from_args(args: argparse.Namespace, extra_overrides: tuple[str, ...] = ()):
    overrides = [*args.set, *extra_overrides]
    if args.data_dir:
        overrides.append(f"data.data_dir={args.data_dir}")
    if getattr(args, "prepared", None):
        overrides.append(f"data.prepared={args.prepared}")
    for key in ("epochs", "max_steps", "max_updates"):
        if getattr(args, key, None) is not None:
            overrides.append(f"training.{key}={getattr(args, key)}")
    return load_config(args.config, overrides)


def cmd_prepare(args: argparse.Namespace) -> None:
    from encdec.prepare import prepare

    config = _config_from_args(args)
    with silence_bars(args.quiet):
        manifest = prepare(config.data, args.out, args.workers, args.overwrite)
    pairs = ", ".join(f"{split} {count:,}" for split, count in manifest["pairs"].items())
    sizes = manifest["vocab_sizes"]
    print(f"{args.out}: {pairs} pairs; vocabularies {sizes['src']:,} / {sizes['trg']:,}")


def _add_prepare_parser(verb) -> None:
    parser = verb(
        "prepare",
        "tokenize a config's splits once into id arrays that encdec train --prepared maps",
        cmd_prepare,
    )
    _add_config_options(parser)
    parser.add_argument("--out", required=True, help="the folder to make (must not exist)")
    parser.add_argument(
        "--workers", type=int, help="processes that tokenize (default: one per core)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.add_argument("--quiet", action="store_true", help=QUIET_HELP)


def cmd_train(args: argparse.Namespace) -> None:
    from encdec.training import train

    if args.resume:
        if args.overwrite:
            raise EncdecError("--overwrite starts a run afresh: give it with --out, not --resume")
        train(
            _resumed_config(args),
            args.resume,
            quiet=args.quiet,
            resume=True,
            device=args.device,
            epochs=args.epochs,
            max_updates=args.max_updates,
        )
    else:
        config = _config_from_args(args)
        options = {"quiet": args.quiet, "device": args.device, "overwrite": args.overwrite}
        train(config, args.out, **options)


def _resumed_config(args: argparse.Namespace):
    """None (last.pt's config) unless --config is given; training then checks that they match.

    --epochs and --max-updates alone are allowed: they extend the run (see train's `epochs`).
    """
    if args.config:
        return _config_from_args(args)
    if args.set or args.max_steps is not None or args.data_dir:
        raise EncdecError(
            "--resume goes on with the config saved in last.pt: --set, --max-steps and "
            "--data-dir count only beside --config, which must match it (--epochs and "
            "--max-updates may be given alone, to train on to that many)"
        )
    return None


def _add_device_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)


def _add_decoding_options(parser: argparse.ArgumentParser) -> None:
    _add_device_option(parser)
    parser.add_argument(
        "--beam", type=int, help="beam search with this many beams (1 = greedy)" + AS_TRAINED
    )
    parser.add_argument(
        "--length-penalty",
        type=float,
        help="beams are ranked by log-probability / length ** this" + AS_TRAINED,
    )
    parser.add_argument(
        "--coverage-penalty",
        type=float,
        help="... plus this * the sum over source words of log(min(attention received, 1)) "
        "(attention models)" + AS_TRAINED,
    )
    parser.add_argument("--max-len", type=int, help="most tokens per translation" + AS_TRAINED)
    parser.add_argument(
        "--unk-replace",
        action="store_true",
        help="replace each <unk> by the source word attended to most (attention models)",
    )


def cmd_evaluate(args: argparse.Namespace) -> None:
    if bool(args.src) != bool(args.ref):
        given, missing = ("--src", "--ref") if args.src else ("--ref", "--src")
        raise EncdecError(
            f"{given} needs {missing}: evaluate scores a source file against its reference "
            "translations, line for line (or, without both, --split of the checkpoint's data)"
        )
    if not args.output:
        _print_scores(args, _scores(args, with_translations=False))
        return
    from encdec.checkpoint import atomic_file

    with atomic_file(args.output) as file:  # a bad --output path fails before scoring
        scores = _scores(args, with_translations=True)
        file.write(data.file_bytes(text_of_lines(scores.pop("translations")), args.output))
    _print_scores(args, scores)


def _scores(args: argparse.Namespace, with_translations: bool) -> dict:
    """`Translator.evaluate` of the checkpoint on --src/--ref or on the split."""
    from encdec.corpus import read_splits

    translator = load_translator(args)
    prepared = args.prepared or translator.config.data.prepared
    if args.src:
        pairs = data.read_parallel(args.src, args.ref)
    elif prepared:
        from encdec.prepared import split_texts

        pairs = split_texts(prepared, args.split)
    else:
        data_config = translator.config.data
        if args.data_dir:
            data_config.data_dir = args.data_dir
        pairs = read_splits(data_config).get(args.split)
        if pairs is None:
            raise EncdecError(f"the checkpoint's data config names no '{args.split}' split")
    with silence_bars(args.quiet):
        return translator.evaluate(
            pairs, with_translations=with_translations, **decoding_options(args)
        )


LIMIT_SETTINGS = "(decoding.max_len_a * source tokens + max_len_b, at most max_len)"


def _print_scores(args: argparse.Namespace, scores: dict) -> None:
    if args.json:
        print(json.dumps(scores))
        return
    print(
        f"{args.src or args.split}: teacher forcing off loss {scores['loss']:.3f} "
        f"ppl {scores['ppl']:.2f} | teacher-forced loss {scores['teacher_forced_loss']:.3f} "
        f"ppl {scores['teacher_forced_ppl']:.2f} | BLEU {scores['bleu']:.2f} | "
        f"BLEU (tokenized) {scores['bleu_tok']:.2f} | chrF {scores['chrf']:.2f}"
    )
    for name, key in (("BLEU", "bleu"), ("BLEU (tokenized)", "bleu_tok"), ("chrF", "chrf")):
        print(f"{name} signature: {scores[f'{key}_signature']}")
    print(f"translations cut at the length limit: {scores['truncated']} {LIMIT_SETTINGS}")


def cmd_data_stats(args: argparse.Namespace) -> None:
    from encdec.corpus import build_corpus

    options = {"src_lang": args.src, "trg_lang": args.trg, "min_freq": args.min_freq}
    config = _config_from_args(
        args, tuple(f"data.{key}={value}" for key, value in options.items() if value is not None)
    )
    corpus = build_corpus(config.data)
    stats = {split: len(pairs) for split, pairs in corpus.ids.items()}
    stats |= {"src_vocab": len(corpus.src_vocab), "trg_vocab": len(corpus.trg_vocab)}
    train = corpus.ids["train"]
    for name, sentences in (("src", train.src), ("trg", train.trg)):
        stats[f"train_{name}_mean_len"] = round(float(sentences.lengths.mean()), 2)
        stats[f"train_{name}_max_len"] = int(sentences.lengths.max())
    if args.json:
        print(json.dumps(stats))
    else:
        print(f"{config.data.src_lang} -> {config.data.trg_lang}, min_freq {config.data.min_freq}")
        for key, value in stats.items():
            print(
                f"  {key:<20} {value:>10,}"
                if isinstance(value, int)
                else f"  {key:<20} {value:>10}"
            )


def cmd_demo(args: argparse.Namespace) -> None:
    from encdec.training import train
    from encdec.translator import Translator

    config = from_dict(DEMO_CONFIG)
    with tempfile.TemporaryDirectory() as scratch:
        out_dir = Path(args.out or scratch)
        print("training a tiny English->Spanish model on the embedded phrase list...")
        train(config, out_dir, quiet=True)
        translator = Translator.load(out_dir / "best.pt")
        for sentence, translation in zip(DEMO_SENTENCES, translator.translate(DEMO_SENTENCES)):
            print(f"{sentence:>22} -> {translation}")
        print(translator.translate(["let's go"])[0])


def cmd_download(args: argparse.Namespace) -> None:
    for path in data.download_multi30k(args.langs):
        print(path)


def cmd_average(args: argparse.Namespace) -> None:
    from encdec.checkpoint import average_checkpoints, save_checkpoint

    save_checkpoint(average_checkpoints(args.checkpoints), args.output)
    count = len(args.checkpoints)
    whose = "checkpoints'" if count > 1 else "checkpoint's"
    print(f"{args.output}: the mean of {count} {whose} weights")


def cmd_plot(args: argparse.Namespace) -> None:
    from encdec import plots

    if args.kind == "curves":
        written = plots.plot_curves(args.run_dir, args.output)
    else:
        written = plots.plot_attention(args.checkpoint, args.sentence, args.output, args.beam)
    print(written)


def _add_plot_parser(verb) -> None:
    plot_parser = verb("plot", "a run's learning curves or a model's attention, as PNG", cmd_plot)
    kinds = plot_parser.add_subparsers(dest="kind", required=True, metavar="KIND")
    curves_help = "loss, perplexity and BLEU/chrF per epoch, from RUN_DIR/metrics.jsonl"
    curves = kinds.add_parser(
        "curves", help=curves_help, description=curves_help, formatter_class=HelpFormatter
    )
    curves.set_defaults(command_parser=curves)
    curves.add_argument("run_dir", help="the --out folder of encdec train")
    curves.add_argument("--output", help="PNG to write (default: RUN_DIR/curves.png)")
    attention_help = "heatmap of where each word of the translation looked in the source"
    attention = kinds.add_parser(
        "attention", help=attention_help, description=attention_help, formatter_class=HelpFormatter
    )
    attention.set_defaults(command_parser=attention)
    attention.add_argument("checkpoint", help=f"{CHECKPOINT_HELP}, of a model with attention")
    attention.add_argument("sentence", help="the source sentence to translate")
    attention.add_argument("--output", default="attention.png", help="PNG to write")
    attention.add_argument("--beam", type=int, help="beam size (default: the checkpoint's)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="encdec",
        description="Recurrent encoder-decoder models for machine translation.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {encdec.__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    def verb(name: str, help_text: str, handler) -> argparse.ArgumentParser:
        sub = verbs.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=f"example: {EXAMPLES[name]}",
            formatter_class=HelpFormatter,
        )
        sub.set_defaults(handler=handler, command_parser=sub)
        return sub

    train_parser = verb("train", "train a model from a config", cmd_train)
    _add_config_options(train_parser)
    train_parser.add_argument(
        "--prepared",
        metavar="DIR",
        help="train on a folder encdec prepare made (data.prepared); its data settings apply",
    )
    run_dir = train_parser.add_mutually_exclusive_group(required=True)
    run_dir.add_argument(
        "--out", help="run directory for checkpoints and logs; it must not hold another run"
    )
    run_dir.add_argument(
        "--resume", metavar="RUN_DIR", help="go on from RUN_DIR/last.pt with its saved config"
    )
    train_parser.add_argument(
        "--overwrite",
        action="store_true",
        help="start afresh in an --out that holds a run, deleting its checkpoints and logs",
    )
    train_parser.add_argument(
        "--epochs",
        type=int,
        help="override training.epochs; with --resume, train on until this many epochs",
    )
    train_parser.add_argument(
        "--max-updates",
        type=int,
        help="override training.max_updates: stop after this many updates in all (or at "
        "--epochs, if sooner); with --resume, train on until this many",
    )
    train_parser.add_argument(
        "--max-steps",
        type=int,
        help="end EACH epoch after this many batches (smoke tests); a total budget is "
        "--max-updates",
    )
    train_parser.add_argument(
        "--quiet", action="store_true", help="log to train.log only; no progress bars"
    )
    _add_device_option(train_parser)

    translate_parser = verb(
        "translate", "translate sentences (stdin or --input), one per line", cmd_translate
    )
    translate_parser.add_argument(
        "--input", help="file of sentences, gzipped if named *.gz (default: stdin)"
    )
    translate_parser.add_argument(
        "--output", help="write here (atomically; gzipped if named *.gz) instead of stdout"
    )
    _add_decoding_options(translate_parser)
    translate_parser.add_argument(
        "--temperature",
        type=float,
        help="0 = greedy; above 0 samples from the softmax" + AS_TRAINED,
    )
    translate_parser.add_argument(
        "--top-k", type=int, help="when sampling, only among the k likeliest tokens" + AS_TRAINED
    )
    translate_parser.add_argument("--seed", type=int, help="random seed for sampling")
    translate_parser.add_argument(
        "--n-best",
        type=int,
        metavar="N",
        help="write the N best translations of each line as 'LINE ||| TRANSLATION ||| SCORE' "
        "(lines counted from 0; SCORE: the log-probability, mixed with any second opinions'); "
        "needs a beam of N or more",
    )
    translate_parser.add_argument(
        "--json",
        action="store_true",
        help="write a JSON object a line, as encdec serve answers: text, tokens, score, n_best "
        "(--n-best long), source_tokens and, for a model with attention, attention",
    )
    translate_parser.add_argument(
        "--int8", action="store_true", help="quantize the model to int8 first (faster on CPU)"
    )
    add_decoding_settings_arguments(translate_parser)
    translate_parser.add_argument("--quiet", action="store_true", help=QUIET_HELP)
    add_model_arguments(translate_parser)  # last: --rescore and --channel come after the rest

    evaluate_parser = verb(
        "evaluate",
        "loss and perplexity (teacher forcing off and teacher-forced), BLEU and chrF of a "
        "checkpoint or an ensemble, with sacreBLEU's signatures",
        cmd_evaluate,
    )
    evaluate_parser.add_argument(
        "--split",
        default="test",
        choices=data.SPLITS,
        help="the split of the checkpoint's data (Multi30k or data.*_src files) to score",
    )
    evaluate_parser.add_argument("--data-dir", help="Multi30k folder (default: as trained)")
    evaluate_parser.add_argument(
        "--prepared",
        metavar="DIR",
        help="score the split's text kept in this prepared folder (default: the one the "
        "checkpoint was trained on, if any)",
    )
    evaluate_parser.add_argument(
        "--src", help="source file to score instead of a split (needs --ref)"
    )
    evaluate_parser.add_argument("--ref", help="reference translations of --src, line for line")
    evaluate_parser.add_argument(
        "--output",
        help="also write the translations scored here, one a line (atomically; gzipped if "
        "named *.gz)",
    )
    evaluate_parser.add_argument("--json", action="store_true", help="print one JSON object")
    evaluate_parser.add_argument("--quiet", action="store_true", help=QUIET_HELP)
    _add_decoding_options(evaluate_parser)
    add_decoding_settings_arguments(evaluate_parser)
    add_model_arguments(evaluate_parser)

    stats_parser = verb("data-stats", "sizes of a corpus's splits and vocabularies", cmd_data_stats)
    _add_config_options(stats_parser)
    stats_parser.add_argument("--src", help="source language (de, en, fr, cs)")
    stats_parser.add_argument("--trg", help="target language (de, en, fr, cs)")
    stats_parser.add_argument("--min-freq", type=int, help="least count for a vocabulary word")
    stats_parser.add_argument("--json", action="store_true", help="print one JSON object")

    demo_parser = verb(
        "demo", "train a tiny English->Spanish model in seconds and use it", cmd_demo
    )
    demo_parser.add_argument("--out", help="keep the demo's run directory here")

    download_parser = verb(
        "download", "fetch Multi30k into the cache and verify checksums", cmd_download
    )
    download_parser.add_argument(
        "--langs",
        nargs="+",
        default=list(data.MULTI30K_LANGS),
        choices=data.MULTI30K_LANGS,
        help="the languages to fetch, each with its train, valid and test files",
    )
    average_parser = verb(
        "average", "average the weights of checkpoints of one run into one", cmd_average
    )
    average_parser.add_argument(
        "checkpoints",
        nargs="+",
        help="epoch_NNN.pt files (training.keep_checkpoints), other checkpoints or run folders",
    )
    average_parser.add_argument("--output", required=True, help="the averaged checkpoint to write")
    _add_plot_parser(verb)
    _add_prepare_parser(verb)
    add_serve_parser(verb)
    add_score_parser(verb)
    return parser


def _parse(argv: list[str] | None) -> argparse.Namespace:
    """The parsed command line; an unknown argument shows the usage of the verb it was given to."""
    args, unknown = build_parser().parse_known_args(argv)
    if unknown:
        args.command_parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    try:
        _check_options(args)
        args.handler(args)
    except EncdecError as error:
        if args.debug:
            raise
        print(f"encdec {args.verb}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as error:  # training's TrainingStopped says how to resume
        reason = f": {error}" if str(error) else ""
        print(f"encdec {args.verb}: interrupted{reason}", file=sys.stderr)
        return getattr(error, "exit_code", 130)
    return 0
