"""Soak: many clients translating against one `encdec serve` on 127.0.0.1 for many minutes.

Each client sends 1-4 of the toy phrases a request, over one kept-alive connection, and checks
every answer against what `encdec translate` writes for those sentences. Prints errors, the
server's RSS after warm-up and at the end, and p50/p99 latency minute by minute.

    python benchmarks/soak.py --clients 64 --minutes 10
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import shlex
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from loopback_server import Server, demo_checkpoint, encdec_translate, serving

from encdec.data import toy_phrases


@dataclass
class Soak:
    """What the clients saw: (seconds since the start, latency in ms) per answer; errors."""

    answers: list[tuple[float, float]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    rss_kib: list[tuple[float, int]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def client(
    number: int, port: int, sentences: list[str], expected: list[str], soak: Soak, times: tuple
) -> None:
    """Translate random handfuls of `sentences` until the deadline; check every answer."""
    started, deadline = times
    rng = random.Random(number)
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    while time.monotonic() < deadline:
        chosen = [rng.randrange(len(sentences)) for _ in range(rng.randint(1, 4))]
        body = json.dumps({"text": [sentences[index] for index in chosen]})
        sent = time.monotonic()
        try:
            connection.request("POST", "/translate", body, {"Content-Type": "application/json"})
            response = connection.getresponse()
            answer = response.read()
            latency_ms = (time.monotonic() - sent) * 1000
            if response.status != 200:
                raise ValueError(f"status {response.status}: {answer[:200]!r}")
            texts = [translation["text"] for translation in json.loads(answer)["translations"]]
            if texts != [expected[index] for index in chosen]:
                raise ValueError(f"{texts} differs from encdec translate's for {chosen}")
        except (OSError, http.client.HTTPException, ValueError, KeyError) as error:
            with soak.lock:
                soak.errors.append(f"client {number}: {type(error).__name__}: {error}")
            connection.close()
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            continue
        with soak.lock:
            soak.answers.append((sent - started, latency_ms))
    connection.close()


def watch_memory(server: Server, soak: Soak, times: tuple, every: float) -> None:
    started, deadline = times
    while time.monotonic() < deadline:
        soak.rss_kib.append((time.monotonic() - started, server.rss_kib()))
        time.sleep(every)
    soak.rss_kib.append((time.monotonic() - started, server.rss_kib()))


def percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else values[0]


def report(soak: Soak, args: argparse.Namespace, seconds: float) -> None:
    warm_up = args.warmup_minutes * 60
    print(f"{args.clients} clients for {seconds / 60:.1f} min against encdec serve (demo model)")
    print(
        f"answers: {len(soak.answers):,} ({len(soak.answers) / seconds:.1f}/s); errors: "
        f"{len(soak.errors)} (a wrong translation counts as one)"
    )
    for error in soak.errors[:5]:
        print(f"  e.g. {error}")
    after_warm_up = [rss for at, rss in soak.rss_kib if at >= warm_up]
    first, last, most = after_warm_up[0], after_warm_up[-1], max(after_warm_up)
    print(
        f"server RSS: {soak.rss_kib[0][1] / 1024:.0f} MiB at the start, {first / 1024:.0f} MiB "
        f"after {args.warmup_minutes:g} min of warm-up, {last / 1024:.0f} MiB at the end "
        f"(growth after warm-up {100 * (last - first) / first:+.1f}%, peak {most / 1024:.0f} MiB)"
    )
    print("minute  answers  p50 ms  p99 ms")
    by_minute: dict[int, list[float]] = {}
    for at, latency in soak.answers:
        by_minute.setdefault(int(at // 60), []).append(latency)
    for minute, latencies in sorted(by_minute.items()):
        print(
            f"{minute + 1:>6} {len(latencies):>8} {percentile(latencies, 50):>7.0f} "
            f"{percentile(latencies, 99):>7.0f}"
        )
    whole = [m for m in by_minute if m >= args.warmup_minutes and (m + 1) * 60 <= seconds]
    if len(whole) >= 2:
        first_p99 = percentile(by_minute[whole[0]], 99)
        last_p99 = percentile(by_minute[whole[-1]], 99)
        print(
            f"p99 drift, minute {whole[0] + 1} to minute {whole[-1] + 1}: "
            f"{first_p99:.0f} -> {last_p99:.0f} ms ({100 * (last_p99 / first_p99 - 1):+.1f}%)"
        )


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--warmup-minutes", type=float, default=1.0)
    parser.add_argument("--memory-every", type=float, default=5.0, help="seconds between RSS reads")
    parser.add_argument("--work-dir", type=Path, default=None, help="default: a temporary one")
    return parser.parse_args()


def main() -> None:
    args = arguments()
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="encdec-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    checkpoint = demo_checkpoint(work)
    sentences = sorted({english for pairs in toy_phrases().values() for english, _ in pairs})
    expected = encdec_translate(checkpoint, sentences)
    soak = Soak()
    with serving(checkpoint, work / "serve.log") as server:
        started = time.monotonic()
        times = (started, started + args.minutes * 60)
        threads = [
            threading.Thread(target=watch_memory, args=(server, soak, times, args.memory_every))
        ]
        threads += [
            threading.Thread(target=client, args=(n, server.port, sentences, expected, soak, times))
            for n in range(args.clients)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        seconds = time.monotonic() - started
        alive = server.process.poll() is None
    report(soak, args, seconds)
    print(
        f"server alive at the end: {alive}; {len(sentences)} distinct sentences; "
        f"server log: {server.log}"
    )
    print("command: python " + shlex.join(sys.argv))


if __name__ == "__main__":
    main()
