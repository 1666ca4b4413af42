"""API fuzzing: generated HTTP requests against a running `encdec serve` on 127.0.0.1.

Random JSON shapes and types, raw bytes, invalid UTF-8 and lone surrogates, wrong and missing
headers and keys, huge and tiny bodies, every method and path, slow, half-closed and abandoned
connections, sent over raw sockets by a few threads. Counts answers by status, 500s, hangs
(no answer and no close within --hang-seconds) and error answers whose body is not JSON; then
checks that the server still answers /health and translates as `encdec translate` does.

    python benchmarks/fuzz_api.py --requests 10000 --seed 1
"""

from __future__ import annotations

import argparse
import collections
import http.client
import json
import os
import random
import shlex
import socket
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from loopback_server import demo_checkpoint, encdec_translate, serving

from encdec.cli import DEMO_SENTENCES

API_KEY = "fuzz-key-0c1d"
MAX_BODY_BYTES = 1_048_576  # encdec serve's default
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE", "FOO", "post"]
PATHS = ["/translate"] * 8 + ["/health", "/info", "/", "/web/app.js", "/web/style.css"]
PATHS += ["/nope", "//translate", "/translate/", "/translate?beam_size=3", "/web/../../etc/passwd"]
PATHS += ["/web/", "/%ff%fe", "/translate#x", "*"]
FIELDS = ["text", "beam_size", "n_best", "temperature", "top_k", "length_penalty"]
FIELDS += ["coverage_penalty", "unk_replace", "seed", "attention"]
WORDS = ["good", "morning", "thank", "you", "i", "am", "hungry", "see", "tomorrow", "let's", "go"]
ODD_TEXT = ["", " ", "\n", "\t\r\n", "😀", "שלום", "\u202e", "\x00", "\x85", "\u2028", "a" * 300]
ODD_TEXT += ["\\ud800", "<script>", "🇩🇪" * 20]


@dataclass
class Tally:
    """What the server answered."""

    statuses: collections.Counter = field(default_factory=collections.Counter)
    by_kind: collections.Counter = field(default_factory=collections.Counter)
    server_errors: list[str] = field(default_factory=list)  # 500s: what was sent
    hangs: list[str] = field(default_factory=list)
    not_json: list[str] = field(default_factory=list)  # error answers of the app without JSON
    plain_400: int = 0  # uvicorn's own answer to bytes that are not HTTP: never reach encdec
    closed_without_answer: collections.Counter = field(default_factory=collections.Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)


def random_value(rng: random.Random, depth: int = 0):
    """A random JSON value of any type."""
    kind = rng.randrange(9 if depth < 3 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, 1, -1, 5, 2**31, 2**63, -(2**70), 10**400])
    if kind == 3:
        return rng.choice([0.0, -0.5, 0.3, 1e308, 1e-320, 3.7])
    if kind in (4, 5):
        return random_text(rng)
    if kind in (6, 7):
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {random_text(rng)[:10]: random_value(rng, depth + 1) for _ in range(rng.randrange(4))}


def random_text(rng: random.Random) -> str:
    if rng.random() < 0.6:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randrange(1, 8)))
    if rng.random() < 0.5:
        return rng.choice(ODD_TEXT)
    return "".join(
        chr(rng.choice([rng.randrange(32, 127), rng.randrange(0x110000)]))
        for _ in range(rng.randrange(1, 20))
    )


def translate_body(rng: random.Random) -> bytes:
    """A /translate body: mostly well formed, with fields of right and wrong types."""
    body: dict = {}
    if rng.random() < 0.9:
        body["text"] = (
            [random_text(rng) for _ in range(rng.randrange(0, 12))]
            if rng.random() < 0.6
            else random_text(rng)
            if rng.random() < 0.7
            else random_value(rng)
        )
    for name in rng.sample(FIELDS[1:], rng.randrange(0, 4)):
        good = {
            "beam_size": rng.randrange(1, 8),
            "n_best": rng.randrange(1, 4),
            "temperature": rng.choice([0, 0.5, 1.0]),
            "top_k": rng.randrange(1, 20),
            "length_penalty": rng.choice([0.0, 0.6, 1.0]),
            "coverage_penalty": 0.2,
            "unk_replace": rng.choice([True, False]),
            "seed": rng.randrange(0, 2**63),
            "attention": rng.choice([True, False]),
        }[name]
        body[name] = good if rng.random() < 0.6 else random_value(rng)
    if rng.random() < 0.05:
        body[random_text(rng)[:12]] = random_value(rng)  # an unknown field
    text = json.dumps(body, ensure_ascii=rng.random() < 0.5)
    if rng.random() < 0.05:  # a lone surrogate, escaped as JSON allows
        text = text.replace('"text": [', '"text": ["\\udc80", ', 1)
    return text.encode("utf-8", "surrogatepass")


def random_body(rng: random.Random) -> tuple[str, bytes]:
    kind = rng.choices(
        ["translate", "json", "bytes", "bad utf-8", "deep", "empty", "huge", "truncated"],
        [60, 10, 6, 4, 3, 8, 1, 8],
    )[0]
    if kind == "translate":
        return kind, translate_body(rng)
    if kind == "json":
        return kind, json.dumps(random_value(rng)).encode()
    if kind == "bytes":
        return kind, rng.randbytes(rng.randrange(1, 2000))
    if kind == "bad utf-8":
        return kind, b'{"text": ["' + rng.randbytes(20) + b'\xff\xfe"]}'
    if kind == "deep":
        depth = rng.choice([100, 1000, 100_000])
        return kind, b'{"text": ' + b"[" * depth + b"]" * depth + b"}"
    if kind == "empty":
        return kind, b""
    if kind == "huge":
        size = rng.randrange(MAX_BODY_BYTES + 1, 8 * MAX_BODY_BYTES)
        return kind, b'{"text": ["' + b"a" * size + b'"]}'
    return kind, translate_body(rng)[: rng.randrange(1, 20)]


def random_request(rng: random.Random) -> tuple[str, bytes, str, int]:
    """(what it is, the bytes to send, how to send them, bytes of the body sent)."""
    method, path = rng.choice(METHODS), rng.choice(PATHS)
    if rng.random() < 0.7:
        method, path = "POST", "/translate"
    with_body = method not in ("GET", "HEAD") or rng.random() < 0.2
    body_kind, body = random_body(rng) if with_body else ("none", b"")
    headers = {"Host": "127.0.0.1"}
    if rng.random() < 0.9:
        headers["Authorization"] = f"Bearer {API_KEY}"
    elif rng.random() < 0.5:
        headers["Authorization"] = rng.choice(
            ["Bearer wrong", "Basic abc", "", "Bearer", "x" * 9000]
        )
    if rng.random() < 0.85:
        headers["Content-Type"] = rng.choice(["application/json"] * 5 + ["text/plain", "x/y", ""])
    length, framed = rng.random(), not body  # framed: the server can tell where the body ends
    if body and length < 0.8:
        headers["Content-Length"] = str(len(body))
        framed = True
    elif body and length < 0.9:
        headers["Transfer-Encoding"] = "chunked"
        body, framed = chunked(rng, body)
    elif length < 0.95:
        headers["Content-Length"] = rng.choice(["-1", "abc", "0", "99999999999999999999", " 5"])
        framed = headers["Content-Length"] == str(len(body))
    if rng.random() < 0.6:
        headers["Connection"] = "close"
    if rng.random() < 0.03:
        headers["X-Junk"] = "v" * rng.randrange(1, 20_000)
    version = "HTTP/1.1" if rng.random() < 0.97 else rng.choice(["HTTP/1.0", "HTTP/2", "HTP/1.1"])
    head = f"{method} {path} {version}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    raw = head.encode("latin-1", "replace") + b"\r\n" + body
    if rng.random() < 0.02:
        raw = rng.randbytes(rng.randrange(1, 300))  # not HTTP at all
        body_kind, framed = "not http", False
    how = rng.choices(["whole", "slow", "half-closed", "abandoned"], [85, 6, 6, 3])[0]
    if not framed and how in ("whole", "slow"):  # a request without an end: the client says so
        how += ", then half-closed"
    return f"{method} {path} {body_kind}", raw, how, len(body)


def chunked(rng: random.Random, body: bytes) -> tuple[bytes, bool]:
    """`body` in chunks of random sizes; and whether its last chunk ends it as HTTP says."""
    pieces, at = [], 0
    while at < len(body):
        size = rng.randrange(1, 70_000)
        pieces.append(b"%x\r\n" % len(body[at : at + size]) + body[at : at + size] + b"\r\n")
        at += size
    ending = b"0\r\n\r\n" if rng.random() < 0.9 else rng.choice([b"zz\r\n", b"", b"5\r\nab"])
    return b"".join(pieces) + ending, ending == b"0\r\n\r\n"


def send(sock: socket.socket, raw: bytes, how: str, rng: random.Random) -> None:
    if how.startswith("slow"):  # a few bytes at a time, for at most about a second
        at, deadline = 0, time.monotonic() + 1.0
        while at < len(raw) and time.monotonic() < deadline:
            size = rng.randrange(1, 64)
            sock.sendall(raw[at : at + size])
            at += size
            time.sleep(rng.random() * 0.02)
        sock.sendall(raw[at:])
    elif how == "half-closed":  # part of the request, then no more
        sock.sendall(raw[: rng.randrange(1, max(2, len(raw)))])
        sock.shutdown(socket.SHUT_WR)
    elif how == "abandoned":
        sock.sendall(raw[: rng.randrange(1, max(2, len(raw)))])
    else:
        sock.sendall(raw)
    if how.endswith(", then half-closed"):
        sock.shutdown(socket.SHUT_WR)


def read_answer(sock: socket.socket, hang_seconds: float, head_only: bool) -> tuple[bytes, bool]:
    """(the answer's bytes, whether the server closed or finished) within `hang_seconds`."""
    data, deadline = b"", time.monotonic() + hang_seconds
    while True:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            piece = sock.recv(65536)
        except TimeoutError:
            return data, False
        except ConnectionResetError:
            return data, True
        if not piece:
            return data, True
        data += piece
        if b"\r\n\r\n" in data and (head_only or complete(data)):
            return data, True


def complete(data: bytes) -> bool:
    head, _, body = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return head.startswith(b"HTTP/1.1 304") or b" 204 " in head.split(b"\r\n")[0]


def one_request(port: int, seed: int, tally: Tally, hang_seconds: float, deadline: float) -> None:
    if time.monotonic() > deadline:
        with tally.lock:
            tally.by_kind["not sent (out of time)"] += 1
        return
    rng = random.Random(seed)
    what, raw, how, _ = random_request(rng)
    with socket.create_connection(("127.0.0.1", port), timeout=hang_seconds) as sock:
        try:
            send(sock, raw, how, rng)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before all was sent: read what it said
        if how == "abandoned":
            with tally.lock:
                tally.by_kind[how] += 1
            return
        answer, finished = read_answer(sock, hang_seconds, raw.startswith(b"HEAD "))
    record(tally, what, how, raw, answer, finished)


def record(tally: Tally, what: str, how: str, raw: bytes, answer: bytes, finished: bool) -> None:
    described = f"{how} {what}: {raw[:200]!r}"
    with tally.lock:
        tally.by_kind[how] += 1
        if not finished:
            tally.hangs.append(described)
            return
        if not answer:
            tally.closed_without_answer[how] += 1
            return
        status_line, _, body = answer.partition(b"\r\n\r\n")
        status = int(status_line.split(b" ")[1])
        tally.statuses[status] += 1
        if status >= 500:
            tally.server_errors.append(described)
        if status < 400 or what.startswith("HEAD "):
            return
        if b"Invalid HTTP request received." in body:  # uvicorn's, before encdec sees it
            tally.plain_400 += 1
            return
        try:
            assert isinstance(json.loads(body)["error"], str)
        except (ValueError, KeyError, TypeError, AssertionError):
            tally.not_json.append(f"{status} {body[:100]!r} for {described}")


def http_get(port: int, path: str, body: bytes | None = None) -> tuple[int, bytes]:
    """A plain, well-formed request: the server's health after the fuzzing."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    connection.request("POST" if body else "GET", path, body, headers)
    response = connection.getresponse()
    return response.status, response.read()


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=1800, help="stop sending after this")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--hang-seconds", type=float, default=30.0)
    parser.add_argument("--work-dir", type=Path, default=None, help="default: a temporary one")
    return parser.parse_args()


def main() -> None:
    args = arguments()
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="encdec-fuzz-"))
    work.mkdir(parents=True, exist_ok=True)
    checkpoint = demo_checkpoint(work)
    expected = encdec_translate(checkpoint, DEMO_SENTENCES)
    tally, started = Tally(), time.monotonic()
    options = ["--api-key-env", "ENCDEC_FUZZ_KEY"]
    os.environ["ENCDEC_FUZZ_KEY"] = API_KEY  # the server's child process reads it
    with serving(checkpoint, work / "serve.log", *options) as server:
        rss_before = server.rss_kib()
        deadline = started + args.seconds
        with ThreadPoolExecutor(args.threads) as pool:
            seeds = (args.seed * 1_000_003 + n for n in range(args.requests))
            futures = [
                pool.submit(one_request, server.port, seed, tally, args.hang_seconds, deadline)
                for seed in seeds
            ]
            failures = collections.Counter(
                type(error).__name__ for future in futures if (error := future.exception())
            )
        elapsed = time.monotonic() - started
        health = http_get(server.port, "/health")
        answer = http_get(server.port, "/translate", json.dumps({"text": DEMO_SENTENCES}).encode())
        alive = server.process.poll() is None
        rss_after = server.rss_kib()
    translations = [t["text"] for t in json.loads(answer[1])["translations"]]
    sent = sum(tally.by_kind.values()) + failures.total()
    print(f"requests: {sent} in {elapsed:.0f} s ({args.threads} threads)")
    print(f"  by how they were sent: {dict(tally.by_kind)}")
    print(f"  answers by status: {dict(sorted(tally.statuses.items()))}")
    print(f"  closed without an answer: {dict(tally.closed_without_answer)}")
    print(f"  client-side socket errors: {dict(failures)}")
    print(f"answers of 500 or above: {len(tally.server_errors)}")
    print(f"hangs (no answer, no close within {args.hang_seconds:.0f} s): {len(tally.hangs)}")
    print(f"error answers from encdec without a JSON body: {len(tally.not_json)}")
    print(f"plain-text 400s of uvicorn for bytes that are not HTTP: {tally.plain_400}")
    for name, examples in [("500", tally.server_errors), ("hang", tally.hangs)]:
        for example in examples[:3]:
            print(f"  {name}, e.g. {example[:300]}")
    for example in tally.not_json[:3]:
        print(f"  not JSON, e.g. {example[:300]}")
    print(
        f"afterwards: server alive {alive}, /health {health[0]}, "
        f"translations equal to encdec translate's: {translations == expected}"
    )
    print(f"server RSS: {rss_before / 1024:.0f} MiB before, {rss_after / 1024:.0f} MiB after")
    logged = server.log.read_text(encoding="utf-8", errors="replace")
    print(
        f"internal errors in the server's log (answered or not): {logged.count('internal error')}"
    )
    print(f"server log: {server.log}")
    print("command: python " + shlex.join(sys.argv))


if __name__ == "__main__":
    main()
