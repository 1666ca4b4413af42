"""The checkpoint arguments of the verbs that translate (translate, evaluate, serve), and the
translator they name: an ensemble, and the second opinions that rerank its beam."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

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
    parser.add_argument(
        "--rescore",
        nargs="+",
        metavar="CHECKPOINT",
        help="rerank each beam with these checkpoints too, e.g. a model trained with "
        "data.reverse_trg (several: an ensemble); same tokenization and vocabularies",
    )
    parser.add_argument(
        "--rescore-weight",
        type=float,
        default=0.5,
        metavar="W",
        help="rank by (1 - W) * the model's + W * the rescorer's log-probability (default: 0.5)",
    )
    parser.add_argument(
        "--channel",
        nargs="+",
        metavar="CHECKPOINT",
        help="rerank each beam also by how likely these checkpoints, trained from the target "
        "language to the source, find the source given each candidate (several: an ensemble)",
    )
    parser.add_argument(
        "--channel-weight",
        type=float,
        default=0.05,
        metavar="W",
        help="the channel model's share of the ranking score; the model keeps 1 minus the "
        "rescorer's and the channel's weights (default: 0.05)",
    )


def load_translator(args: argparse.Namespace) -> Translator:
    """The translator that the arguments of `add_model_arguments` (and --device, --int8) name."""
    from encdec.translator import Translator  # loads torch: only for verbs that translate

    return Translator.load(
        args.checkpoint,
        getattr(args, "int8", False),
        args.device,
        args.rescore,
        args.rescore_weight,
        channel=args.channel,
        channel_weight=args.channel_weight,
    )
