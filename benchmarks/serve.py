"""Load on `encdec serve`: 1, 8 and 64 concurrent clients, one test 2016 sentence per request.

Starts `encdec serve CHECKPOINT` on 127.0.0.1 (loopback only, a free port), sends each level at
most --requests requests for at most --seconds, and prints, per level, throughput, p50/p95/p99
latency, errors and whether every answer equals what `encdec translate` writes for it.

    python benchmarks/serve.py runs/seed/best.pt --data-dir ../shared/data/multi30k
    python benchmarks/serve.py runs/seed/best.pt --clients 1 64 --requests 200 --seconds 60
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from encdec import data

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Level:
    """What `clients` concurrent clients measured."""

    clients: int
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    answers: dict[int, str] = field(default_factory=dict)  # sentence index -> translation

    def percentile(self, q: int) -> float:
        return statistics.quantiles(self.latencies_ms, n=100)[q - 1]


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a Multi30k best.pt, or its run folder")
    parser.add_argument(
        "--data-dir",
        default=os.environ.get("ENCDEC_DATA") or str(REPO_ROOT.parent / "shared/data/multi30k"),
        help="folder with test_2016_flickr.<lang>.gz (default: $ENCDEC_DATA or the shared copy)",
    )
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--requests", type=int, default=400, help="most requests per level")
    parser.add_argument("--seconds", type=float, default=120, help="most seconds per level")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--serve-option",
        action="append",
        default=[],
        metavar="OPTION",
        help="passed to encdec serve, e.g. --serve-option=--max-wait-ms=10 (repeatable)",
    )
    return parser.parse_args()


def start_server(args: argparse.Namespace, log) -> tuple[subprocess.Popen, str]:
    command = [sys.executable, "-m", "encdec", "serve", args.checkpoint, "--host", "127.0.0.1"]
    command += ["--port", "0", "--device", args.device, *args.serve_option]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True)
    line = server.stdout.readline()
    found = re.search(r"http://127\.0\.0\.1:\d+", line)
    if not found:
        server.kill()
        raise SystemExit(f"encdec serve did not start: {line!r} (its log: {log.name})")
    return server, found.group()


async def run_level(url: str, sentences: list[str], level: Level, seconds: float) -> None:
    """`level.clients` clients take the sentences in turn, one per request, until done or late."""
    next_index = iter(range(len(sentences)))
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=level.clients, max_keepalive_connections=level.clients)

    async def client(http: httpx.AsyncClient) -> None:
        for index in next_index:
            if time.perf_counter() > deadline:
                return
            sent = time.perf_counter()
            try:
                response = await http.post("/translate", json={"text": [sentences[index]]})
                response.raise_for_status()
                level.answers[index] = response.json()["translations"][0]["text"]
            except (httpx.HTTPError, KeyError, ValueError):
                level.errors += 1
            level.latencies_ms.append((time.perf_counter() - sent) * 1000)

    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=300) as http:
        started = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(level.clients)))
        level.seconds = time.perf_counter() - started


def encdec_translate(args: argparse.Namespace, sentences: list[str]) -> list[str]:
    """What `encdec translate` writes for the sentences: the answers must equal it."""
    with tempfile.TemporaryDirectory() as scratch:
        source = Path(scratch) / "source.txt"
        source.write_text("".join(sentence + "\n" for sentence in sentences))
        command = [sys.executable, "-m", "encdec", "translate", args.checkpoint]
        command += ["--input", str(source), "--device", args.device, "--quiet"]
        return data.split_lines(
            subprocess.run(command, check=True, capture_output=True, text=True).stdout
        )


def report(levels: list[Level], reference: list[str]) -> None:
    print(
        f"{'clients':>7} {'requests':>8} {'errors':>6} {'req/s':>7} {'p50 ms':>8} "
        f"{'p95 ms':>8} {'p99 ms':>8}  same as encdec translate"
    )
    for level in levels:
        same = sum(reference[i] == text for i, text in level.answers.items())
        print(
            f"{level.clients:>7} {len(level.latencies_ms):>8} {level.errors:>6} "
            f"{len(level.latencies_ms) / level.seconds:>7.1f} {level.percentile(50):>8.0f} "
            f"{level.percentile(95):>8.0f} {level.percentile(99):>8.0f}  "
            f"{same}/{len(level.answers)}"
        )
    first, last = levels[0], levels[-1]
    ratio = (len(last.latencies_ms) / last.seconds) / (len(first.latencies_ms) / first.seconds)
    print(f"throughput with {last.clients} clients / with {first.clients}: {ratio:.1f}x")


def main() -> None:
    args = arguments()
    with tempfile.NamedTemporaryFile("w", suffix=".log", delete=False) as log:
        server, url = start_server(args, log)
    try:
        info = httpx.get(f"{url}/info").json()
        source_file = Path(args.data_dir) / f"test_2016_flickr.{info['source_language']}.gz"
        sentences = data.read_lines(source_file)[: args.requests]
        print(
            f"encdec serve {info['source_language']}->{info['target_language']}, "
            f"{info['parameters']:,} parameters, batching {info['batching']}"
        )
        levels = []
        for clients in args.clients:
            levels.append(Level(clients))
            asyncio.run(run_level(url, sentences, levels[-1], args.seconds))
        batching = httpx.get(f"{url}/info").json()["batching"]
    finally:
        server.terminate()
        server.wait(timeout=120)
    report(levels, encdec_translate(args, sentences))
    print(
        f"largest batch: {batching['most_sentences_in_one_batch']} sentences from "
        f"{batching['most_requests_in_one_batch']} requests; server log: {log.name}"
    )
    print("reproduce: python " + shlex.join(sys.argv))


if __name__ == "__main__":
    main()
