"""The checkpoint arguments of the verbs that translate (translate, evaluate, serve), and the
translator they name: an ensemble, and the second opinions that rerank its beam."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from encdec.config import decoding_with, parse_override
from encdec.errors import EncdecError

if TYPE_CHECKING:
    from encdec.translator import Translator

CHECKPOINT_HELP = "a checkpoint (best.pt), or the run folder of encdec train that holds it"
CHECKPOINTS_HELP = (
    f"{CHECKPOINT_HELP}; several translate as an ensemble (the mean of their probabilities), "
    "if trained with the same data settings"
)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The checkpoints that translate: an ensemble, and second opinions that rerank its beam.

    The weights' defaults are rescoring.RESCORE_WEIGHT and CHANNEL_WEIGHT, written out here so
    that building the parser imports no torch.
    """
    parser.add_argument("checkpoint", nargs="+", help=CHECKPOINTS_HELP)
    # a group of their own, listed after the options of the verb (--input, --beam, ...)
    second_opinions = parser.add_argument_group("second opinions (they rerank each beam)")
    second_opinions.add_argument(
        "--rescore",
        nargs="+",
        metavar="CHECKPOINT",
        help="rerank each beam with these checkpoints too, e.g. a model trained with "
        "data.reverse_trg (several: an ensemble); same tokenization and vocabularies",
    )
    second_opinions.add_argument(
        "--rescore-weight",
        type=float,
        default=0.5,
        metavar="W",
        help="rank by (1 - W) * the model's + W * the rescorer's log-probability (default: 0.5)",
    )
    second_opinions.add_argument(
        "--channel",
        nargs="+",
        metavar="CHECKPOINT",
        help="rerank each beam also by how likely these checkpoints, trained from the target "
        "language to the source, find the source given each candidate (several: an ensemble)",
    )
    second_opinions.add_argument(
        "--channel-weight",
        type=float,
        default=0.05,
        metavar="W",
        help="the channel model's share of the ranking score; the model keeps 1 minus the "
        "rescorer's and the channel's weights (default: 0.05)",
    )


def add_decoding_settings_arguments(parser: argparse.ArgumentParser) -> None:
    """--batch-size and --set decoding.KEY=VALUE: the checkpoint's decoding settings, changed."""
    parser.add_argument(
        "--batch-size",
        type=int,
        metavar="N",
        help="sentences translated at once (default: the checkpoint's decoding.batch_size)",
    )
    parser.add_argument(
        "--batch-tokens",
        type=int,
        metavar="N",
        help="also end a batch before its padded source tokens (2 more a sentence) pass N, so "
        "long sentences come in smaller batches (default: the checkpoint's decoding.batch_tokens)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="decoding.KEY=VALUE",
        help="override one of the checkpoint's decoding settings (docs/config.md), e.g. "
        "--set decoding.max_len=80 (repeatable); the options above win over it",
    )


def load_translator(args: argparse.Namespace) -> Translator:
    """The translator that the arguments of `add_model_arguments` (and --device, --int8) name,
    with the decoding settings of `add_decoding_settings_arguments` where the verb has them."""
    from encdec.translator import Translator  # loads torch: only for verbs that translate

    translator = Translator.load(
        args.checkpoint,
        getattr(args, "int8", False),
        args.device,
        args.rescore,
        args.rescore_weight,
        channel=args.channel,
        channel_weight=args.channel_weight,
    )
    sizes = {key: getattr(args, key, None) for key in ("batch_size", "batch_tokens")}
    settings = _decoding_settings(getattr(args, "set", []), sizes)
    translator.config.decoding = decoding_with(translator.config.decoding, settings)
    return translator


def _decoding_settings(assignments: list[str], sizes: dict[str, int | None]) -> dict:
    """The decoding settings of --set decoding.KEY=VALUE, --batch-size and --batch-tokens."""
    settings = {}
    for assignment in assignments:
        section, key, value = parse_override(assignment)
        if section != "decoding":
            raise EncdecError(
                f"--set {assignment}: only decoding settings can change here (the model, data "
                "and training settings are the checkpoint's); use --set decoding.KEY=VALUE"
            )
        settings[key] = value
    return settings | {key: value for key, value in sizes.items() if value is not None}
