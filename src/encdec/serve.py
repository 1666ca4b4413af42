"""`encdec serve`: its options and limits; the server itself is imported only when it runs."""

from __future__ import annotations

import argparse
import errno
import os
import socket
from dataclasses import dataclass

from encdec.devices import DEVICE_HELP
from encdec.errors import EncdecError
from encdec.model_arguments import add_model_arguments, load_translator

HELP = "a JSON API and a web page that translate with a checkpoint or an ensemble (docs/serving.md)"


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) == 0:
        raise argparse.ArgumentTypeError(f"must be a whole number above 0, not {text!r}")
    return int(text)


def _port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"must be a TCP port, 0 to 65535, not {text!r}")
    return int(text)


def _milliseconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < 60_000:
        raise argparse.ArgumentTypeError(f"must be 0 to 60000 milliseconds, not {text!r}")
    return value


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; each refusal names the limit it hit."""

    max_body_bytes: int = 1_048_576
    max_sentences: int = 100  # per request
    max_sentence_chars: int = 1000
    max_beam_size: int = 10


def add_serve_parser(verb) -> None:
    """The `serve` verb and its options (`verb` is cli.build_parser's sub-parser maker)."""
    parser = verb("serve", HELP, serve)
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)"
    )
    parser.add_argument("--port", type=_port, default=8000, help="TCP port (0: any free one)")
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    parser.add_argument(
        "--beam",
        type=_positive_int,
        metavar="N",
        help="the beam of requests that ask for none (default: the checkpoint's)",
    )
    parser.add_argument(
        "--int8", action="store_true", help="quantize the model to int8 first (faster on CPU)"
    )
    parser.add_argument(
        "--max-batch-sentences",
        type=_positive_int,
        default=64,
        metavar="N",
        help="most sentences decoded together, from one request or many",
    )
    parser.add_argument(
        "--max-wait-ms",
        type=_milliseconds,
        default=5.0,
        metavar="MS",
        help="how long a sentence may wait for others to fill its batch",
    )
    parser.add_argument(
        "--api-key-env",
        metavar="VAR",
        help="require 'Authorization: Bearer <key>', the key read from this environment variable",
    )
    for name, meaning in (
        ("max_body_bytes", "largest request body"),
        ("max_sentences", "most sentences in one request"),
        ("max_sentence_chars", "most characters in one sentence"),
        ("max_beam_size", "largest beam_size a request may ask for"),
    ):
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            type=_positive_int,
            default=getattr(Limits, name),
            metavar="N",
            help=meaning,
        )
    add_model_arguments(parser)  # last: --rescore and --channel come after the rest


def _api_key(variable: str | None) -> str | None:
    if variable is None:
        return None
    key = os.environ.get(variable, "").strip()
    if not key:
        raise EncdecError(f"--api-key-env {variable}: the environment variable is unset or empty")
    return key


def _listening_socket(host: str, port: int) -> socket.socket:
    """A socket bound to host:port, so that the URL is known (port 0 included) before serving."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError as error:
        listener.close()
        raise EncdecError(f"cannot listen on {host} port {port}: {_bind_advice(error)}") from None
    return listener


def _bind_advice(error: OSError) -> str:
    """What went wrong binding, and which option to change."""
    if isinstance(error, socket.gaierror):
        return f"no such host ({error.strerror}); check --host"
    if error.errno == errno.EADDRNOTAVAIL:
        return (
            f"{error.strerror}: --host must be an address of this machine "
            "(127.0.0.1 for itself only, 0.0.0.0 for every interface)"
        )
    if error.errno == errno.EACCES:
        return f"{error.strerror}: ports below 1024 need root; choose --port 1024 or above"
    if error.errno == errno.EADDRINUSE:
        return f"{error.strerror}: choose another --port (0: any free one)"
    return f"{error.strerror}; check --host and --port"


def serve(args: argparse.Namespace) -> None:
    """Load the checkpoints, then answer HTTP requests until stopped."""
    from encdec.server import run

    api_key = _api_key(args.api_key_env)
    limits = Limits(
        args.max_body_bytes, args.max_sentences, args.max_sentence_chars, args.max_beam_size
    )
    if args.beam is not None and args.beam > limits.max_beam_size:
        raise EncdecError(f"--beam {args.beam} is above --max-beam-size {limits.max_beam_size}")
    listener = _listening_socket(args.host, args.port)  # a bad address fails before loading
    try:
        app = _app(args, limits, api_key)
    except BaseException:
        listener.close()
        raise
    run(app, listener)


def _app(args: argparse.Namespace, limits: Limits, api_key: str | None):
    """The checkpoints of the command line behind the HTTP service."""
    from encdec.config import decoding_with
    from encdec.server import create_app

    translator = load_translator(args)
    if args.beam is not None:
        decoding = translator.config.decoding
        translator.config.decoding = decoding_with(decoding, {"beam_size": args.beam})
    if translator.second_opinions and translator.config.decoding.beam_size == 1:
        raise EncdecError(
            "--rescore and --channel rerank a beam, but the checkpoint decodes greedily: "
            "add --beam 5 (or another beam above 1) for the requests that ask for none"
        )
    return create_app(translator, limits, args.max_batch_sentences, args.max_wait_ms, api_key)
