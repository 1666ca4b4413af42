"""The HTTP service of `encdec serve`: request → checks → batching queue → Translator → JSON."""

from __future__ import annotations

import contextlib
import dataclasses
import hmac
import json
import logging
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from importlib.resources import files

import torch
import uvicorn
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import encdec
from encdec.config import DecodingConfig, decoding_with
from encdec.data import split_lines
from encdec.ensemble import Ensemble
from encdec.errors import EncdecError
from encdec.model import Seq2Seq
from encdec.rescoring import SecondOpinion
from encdec.serve import Limits
from encdec.serve_queue import BatchingQueue
from encdec.translator import Translation, Translator, answer_of

log = logging.getLogger("encdec.serve")
OPEN_PATHS = ("/", "/health")  # reachable without the API key, like the page's files
PAGE_FILES = "/web/"  # app.js and style.css, package data beside index.html
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:",
    "X-Content-Type-Options": "nosniff",
}


JSON_KINDS = {type(None): "null", bool: "true or false", int: "a number", float: "a number"}
JSON_KINDS |= {dict: "an object"}


class TranslateRequest(BaseModel):
    """The JSON body of POST /translate; a field left out takes the checkpoint's setting."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    text: list[str]  # a single string is read like `encdec translate`'s input: a sentence a line
    beam_size: int | None = Field(None, ge=1)
    n_best: int = Field(1, ge=1)
    temperature: float | None = Field(None, ge=0)
    top_k: int | None = Field(None, ge=1)
    length_penalty: float | None = None
    coverage_penalty: float | None = Field(None, ge=0)
    unk_replace: bool | None = None
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    attention: bool = False

    @field_validator("text", mode="before")
    @classmethod
    def _one_sentence_a_line(cls, text: object) -> object:
        if isinstance(text, str):
            return split_lines(text)
        if not isinstance(text, list):
            raise PydanticCustomError(
                "text_type",
                "must be a string (one sentence a line) or a list of strings, not {kind}",
                {"kind": JSON_KINDS.get(type(text), type(text).__name__)},
            )
        return text

    @field_validator("text")
    @classmethod
    def _unicode_text(cls, text: list[str]) -> list[str]:
        """JSON may escape a lone surrogate (\\ud800), which no tokenizer can read."""
        for number, sentence in enumerate(text, start=1):
            try:
                sentence.encode("utf-8")
            except UnicodeEncodeError as error:
                raise PydanticCustomError(
                    "unicode",
                    "sentence {number} holds {character}, a lone surrogate, which is not "
                    "Unicode text: send each character whole (a surrogate pair or UTF-8)",
                    {"number": number, "character": ascii(error.object[error.start])},
                ) from None
        return text


# the decoding settings a request may set; the rest stay the checkpoint's
REQUEST_DECODING = (
    "beam_size",
    "temperature",
    "top_k",
    "length_penalty",
    "coverage_penalty",
    "unk_replace",
)


@dataclass(frozen=True)
class DecodingOptions:
    """The settings a request decodes with: requests with equal options share batches."""

    beam_size: int
    temperature: float
    top_k: int | None
    length_penalty: float
    coverage_penalty: float
    unk_replace: bool
    n_best: int
    seed: int | None  # None unless sampling

    @classmethod
    def of(cls, request: TranslateRequest, defaults: DecodingConfig) -> DecodingOptions:
        """Unset fields become the checkpoint's `defaults`, so equal settings compare equal.

        A seed counts only when sampling; greedy and beam search ignore it.
        """
        asked = {name: getattr(request, name) for name in REQUEST_DECODING}
        decoding = decoding_with(defaults, asked)
        settings = {name: getattr(decoding, name) for name in REQUEST_DECODING}
        sampling = decoding.beam_size == 1 and decoding.temperature > 0
        seed = request.seed if sampling else None
        return cls(**settings, n_best=request.n_best, seed=seed)


def refusal(status: int, message: str) -> HTTPException:
    """An error answer: `{"error": message}` with this status."""
    return HTTPException(status_code=status, detail=message)


def _problem(error: dict) -> str:
    """One pydantic error as a sentence that names the field."""
    field = ".".join(str(part) for part in error["loc"])
    if error["type"] == "extra_forbidden":
        known = ", ".join(TranslateRequest.model_fields)
        return f"unknown field '{field}' (known fields: {known})"
    if error["type"] == "missing":
        return f"'{field}' is required"
    return f"'{field}': {error['msg']}"


# A body over max_body_bytes is still read (and dropped) up to this size: a client that sends
# all of it before reading the answer (urllib, requests) then reads the 413, where closing with
# bytes unread would make the kernel reset the connection, answer and all.
DRAINED_BYTES = 64 * 2**20


async def _body(request: Request, max_body_bytes: int) -> bytes:
    """The request body, kept only up to the limit; over it, a 413."""
    too_large = refusal(
        413, f"the request body is over the limit max_body_bytes = {max_body_bytes}"
    )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max(max_body_bytes, DRAINED_BYTES):
        raise too_large  # too big even to drop: answered at once, the client may see a reset
    body, size = bytearray(), 0
    try:
        async for piece in request.stream():
            size += len(piece)
            if size <= max_body_bytes:
                body += piece
            elif size > DRAINED_BYTES:
                break
    except ClientDisconnect:  # no answer reaches it; the log gets a line, not a traceback
        raise refusal(400, "the client closed the connection before its body ended") from None
    if size > max_body_bytes:
        raise too_large
    return bytes(body)


def parse_request(body: bytes) -> TranslateRequest:
    """The body as a TranslateRequest; malformed JSON is a 400, a bad field a 422."""
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError) as error:
        raise refusal(400, f"the body is not valid JSON: {error}") from None
    if not isinstance(payload, dict):
        raise refusal(422, 'the body must be a JSON object, like {"text": ["Hallo Welt."]}')
    try:
        return TranslateRequest.model_validate(payload)
    except ValidationError as error:
        raise refusal(422, "; ".join(_problem(e) for e in error.errors())) from None


def check_limits(request: TranslateRequest, limits: Limits) -> None:
    """Refuse (422) a request that asks for more than the server's limits allow."""
    if len(request.text) > limits.max_sentences:
        raise refusal(
            422,
            f"{len(request.text)} sentences are over the limit max_sentences = "
            f"{limits.max_sentences}; send them in several requests",
        )
    for number, sentence in enumerate(request.text, start=1):
        if len(sentence) > limits.max_sentence_chars:
            raise refusal(
                422,
                f"sentence {number} has {len(sentence)} characters, over the limit "
                f"max_sentence_chars = {limits.max_sentence_chars}",
            )
    if request.beam_size is not None and request.beam_size > limits.max_beam_size:
        raise refusal(
            422,
            f"beam_size {request.beam_size} is over the limit max_beam_size = "
            f"{limits.max_beam_size}",
        )


def _model_count(model: Seq2Seq) -> int:
    return len(model.members) if isinstance(model, Ensemble) else 1


def _second_opinion_info(opinion: SecondOpinion | None) -> dict | None:
    """How many models a rescorer or channel model holds, and its weight; None without one."""
    if opinion is None:
        return None
    return {"models": _model_count(opinion.translator.model), "weight": opinion.weight}


def model_info(translator: Translator) -> dict:
    """What GET /info says about the model; an ensemble counts all its members' parameters."""
    config, model = translator.config, translator.model
    return {
        "encdec_version": encdec.__version__,
        "source_language": config.data.src_lang,
        "target_language": config.data.trg_lang,
        "models": _model_count(model),
        "rescorer": _second_opinion_info(translator.rescorer),
        "channel": _second_opinion_info(translator.channel),
        "parameters": translator.parameter_count,
        "source_vocabulary": len(translator.src_vocab),
        "target_vocabulary": len(translator.trg_vocab),
        "cell": config.model.cell,
        "attention": config.model.attention != "none",
        "attention_kind": config.model.attention,
        "device": str(next(model.parameters(), torch.empty(0)).device),
        "decoding": dataclasses.asdict(config.decoding),
    }


class RequestLog:
    """One log line per request: method, path, status, milliseconds, sentences."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), 500

        async def send_noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_noting_status)
        finally:
            milliseconds = (time.perf_counter() - started) * 1000
            sentences = scope.get("state", {}).get("sentences", 0)
            log.info(
                "%s %s %d %.1f ms %d sentences",
                scope["method"],
                scope["path"],
                status,
                milliseconds,
                sentences,
            )


class AnswerInternalErrors:
    """A bug's traceback is logged once, here, and answered with a 500; nothing escapes to
    uvicorn, which would log it again."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def send_noting_start(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_noting_start)
        except Exception as error:
            log.error("internal error on %s %s", scope["method"], scope["path"], exc_info=error)
            if not started:
                answer = {"error": "internal error (the server's log has the details)"}
                await JSONResponse(answer, 500)(scope, receive, send)


class RequireApiKey:
    """401 unless `Authorization: Bearer <key>`; the page and /health stay open."""

    def __init__(self, app: ASGIApp, api_key: str | None):
        self.app, self.api_key = app, api_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.api_key is None or scope["type"] != "http" or _is_open(scope["path"]):
            return await self.app(scope, receive, send)
        authorization = Request(scope).headers.get("authorization")
        scheme, _, given = (authorization or "").partition(" ")
        # compare_digest takes as long for a near miss as for a wild guess
        if scheme.lower() == "bearer" and hmac.compare_digest(
            given.strip().encode(), self.api_key.encode()
        ):
            return await self.app(scope, receive, send)
        response = JSONResponse(
            {"error": _key_problem(authorization, scheme)},
            status_code=401,
            headers={"WWW-Authenticate": "Bearer"},
        )
        await response(scope, receive, send)


def _key_problem(authorization: str | None, scheme: str) -> str:
    """Why the Authorization header (or its absence) is refused."""
    if authorization is None:
        return "this server needs an API key: send 'Authorization: Bearer <key>'"
    if scheme.lower() != "bearer" or not authorization.partition(" ")[2].strip():
        return "send the API key as 'Authorization: Bearer <key>'"
    return "wrong API key: the key sent is not the one this server was started with"


def _is_open(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(PAGE_FILES)


class TranslationService:
    """The routes: each request's sentences go through the batching queue to the Translator."""

    def __init__(
        self,
        translator: Translator,
        limits: Limits,
        max_batch_sentences: int,
        max_wait_ms: float,
    ):
        self.translator, self.limits = translator, limits
        self.defaults = translator.config.decoding
        self.info = model_info(translator)
        self.queue = BatchingQueue(self.decode, max_batch_sentences, max_wait_ms)

    def decode(self, sentences: list[str], options: DecodingOptions) -> list[list[Translation]]:
        """A batch of sentences through the Translator (in the queue's worker thread)."""
        return self.translator.translations(
            sentences,
            n_best=options.n_best,
            seed=options.seed,
            beam_size=options.beam_size,
            temperature=options.temperature,
            top_k=options.top_k,
            length_penalty=options.length_penalty,
            coverage_penalty=options.coverage_penalty,
            unk_replace=options.unk_replace,
        )

    async def translate(self, request: Request) -> JSONResponse:
        started = time.perf_counter()
        body = parse_request(await _body(request, self.limits.max_body_bytes))
        check_limits(body, self.limits)
        request.state.sentences = len(body.text)
        try:
            options = DecodingOptions.of(body, self.defaults)
        except EncdecError as error:  # e.g. a temperature with a beam
            raise refusal(422, str(error)) from None
        try:
            results = await self.queue.translate(body.text, options, alone=options.seed is not None)
        except EncdecError as error:  # e.g. n_best over beam_size, as the Translator checks
            raise refusal(422, str(error)) from None
        return JSONResponse(
            {
                "translations": [answer_of(result, body.attention) for result in results],
                "elapsed_ms": round((time.perf_counter() - started) * 1000, 1),
            }
        )

    async def health(self, request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def model(self, request: Request) -> JSONResponse:
        queue = self.queue
        batching = {"max_batch_sentences": queue.max_batch_sentences}
        batching |= {"max_wait_ms": queue.max_wait_ms} | dataclasses.asdict(queue.stats)
        limits = dataclasses.asdict(self.limits)
        return JSONResponse(self.info | {"limits": limits, "batching": batching})

    async def page(self, request: Request) -> Response:
        html = files("encdec").joinpath("web/index.html").read_bytes()
        return Response(html, media_type="text/html", headers=PAGE_HEADERS)

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        async with self.queue.running():
            yield
        log.info("stopped: every request in flight has its answer")


def create_app(
    translator: Translator,
    limits: Limits,
    max_batch_sentences: int,
    max_wait_ms: float,
    api_key: str | None,
) -> Starlette:
    """The ASGI app of `encdec serve`; `api_key` None leaves it open."""
    service = TranslationService(translator, limits, max_batch_sentences, max_wait_ms)
    return Starlette(
        routes=[
            Route("/", service.page),
            Route("/translate", service.translate, methods=["POST"]),
            Route("/health", service.health),
            Route("/info", service.model),
            Mount(PAGE_FILES.rstrip("/"), StaticFiles(packages=[("encdec", "web")])),
        ],
        middleware=[
            Middleware(RequestLog),
            Middleware(AnswerInternalErrors),
            Middleware(RequireApiKey, api_key=api_key),
        ],
        exception_handlers={HTTPException: _http_error},
        lifespan=service.lifespan,
    )


async def _http_error(request: Request, error: HTTPException) -> JSONResponse:
    message = error.detail
    if error.status_code == 404:
        message = f"no such path: {request.url.path}"
    elif error.status_code == 405:
        allowed = (error.headers or {}).get("Allow", "")
        message = f"{request.method} is not allowed on {request.url.path} (allowed: {allowed})"
    return JSONResponse({"error": message}, status_code=error.status_code, headers=error.headers)


class AnnouncingServer(uvicorn.Server):
    """uvicorn's server, printing one line with the URL once it accepts requests."""

    def __init__(self, config: uvicorn.Config, url: str):
        super().__init__(config)
        self.url = url

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            print(f"encdec serve: listening on {self.url} (Ctrl+C or SIGTERM stops it)", flush=True)


def run(app: Starlette, listener: socket.socket) -> None:
    """Serve `app` on the bound `listener` until Ctrl+C or SIGTERM; one log line per request."""
    host, port = listener.getsockname()[:2]
    url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="on")
    # On SIGTERM uvicorn stops accepting, finishes the requests in flight, then raises the signal
    # again for the handler it found; this one lets the command end normally (exit 0).
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    AnnouncingServer(config, url).run(sockets=[listener])
