"""For the reliability benchmarks: the demo model, an `encdec serve` of it on 127.0.0.1, its RSS.

Loopback only: the server listens on 127.0.0.1 and a free port, and is stopped when done.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

from encdec.cli import DEMO_CONFIG
from encdec.data import split_lines


def encdec(*args: object) -> list[str]:
    return [sys.executable, "-m", "encdec", *map(str, args)]


def one_thread() -> dict:
    """The environment of a child that uses one thread for torch (2 cores, shared)."""
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def demo_checkpoint(folder: Path) -> Path:
    """best.pt of `encdec demo`'s model (toy English->Spanish), trained into `folder` once."""
    best = folder / "demo_run" / "best.pt"
    if not best.is_file():
        config = folder / "demo.yaml"
        config.write_text(yaml.safe_dump(DEMO_CONFIG), encoding="utf-8")
        command = encdec("train", "--config", config, "--out", best.parent)
        subprocess.run([*command, "--device", "cpu", "--quiet"], check=True, env=one_thread())
    return best


@dataclass
class Server:
    """A running `encdec serve`: its process, URL, port and log file."""

    process: subprocess.Popen
    url: str
    port: int
    log: Path

    def rss_kib(self) -> int:
        """The server's resident memory now (Linux's /proc)."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1))


@contextlib.contextmanager
def serving(checkpoint: Path, log: Path, *options: str) -> Iterator[Server]:
    """`encdec serve CHECKPOINT --host 127.0.0.1 --port 0 --device cpu OPTIONS`, then stopped."""
    command = encdec("serve", checkpoint, "--host", "127.0.0.1", "--port", "0", "--device", "cpu")
    with open(log, "w") as log_file:
        process = subprocess.Popen(
            [*command, *options], stdout=subprocess.PIPE, stderr=log_file, text=True
        )
    try:
        line = process.stdout.readline()
        found = re.search(r"http://127\.0\.0\.1:(\d+)", line)
        if not found:
            raise SystemExit(f"encdec serve did not start: {line!r} (its log: {log})")
        yield Server(process, found.group(), int(found.group(1)), log)
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=120)
        process.stdout.close()


def encdec_translate(checkpoint: Path, sentences: list[str]) -> list[str]:
    """What `encdec translate` writes for `sentences`: what the server must answer."""
    with tempfile.TemporaryDirectory() as scratch:
        source = Path(scratch) / "source.txt"
        source.write_text("".join(sentence + "\n" for sentence in sentences), encoding="utf-8")
        command = encdec("translate", checkpoint, "--input", source, "--device", "cpu", "--quiet")
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return split_lines(output)
