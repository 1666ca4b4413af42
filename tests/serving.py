"""For the serving tests: a real `encdec serve` process, and a tiny model with attention."""

from __future__ import annotations

import contextlib
import os
import queue
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from conftest import torch_threads

from encdec.cli import DEMO_CONFIG
from encdec.config import from_dict
from encdec.training import train

STARTUP_SECONDS = 180  # importing torch and loading a model on a CPU shared with other work
_attention_runs: dict[str, Path] = {}


@dataclass
class Server:
    """A running `encdec serve`: its URL, process and log file."""

    url: str
    process: subprocess.Popen
    log: Path

    def log_lines(self) -> list[str]:
        return self.log.read_text().splitlines()


@contextlib.contextmanager
def serving(
    checkpoint: Path | list[Path], log: Path, *options: str, env: dict | None = None
) -> Iterator[Server]:
    """`encdec serve CHECKPOINT... --port 0 --device cpu OPTIONS`, stopped when the block ends."""
    checkpoints = checkpoint if isinstance(checkpoint, list) else [checkpoint]
    command = [sys.executable, "-m", "encdec", "serve", *map(str, checkpoints), "--port", "0"]
    command += ["--device", "cpu", *options]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    with open(log, "w") as log_file:
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=log_file, text=True, env=environment
        )
    try:
        yield Server(_announced_url(process, log), process, log)
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=60)
        process.stdout.close()


def _announced_url(process: subprocess.Popen, log: Path) -> str:
    """The URL of the one line `encdec serve` prints once it is ready."""
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: lines.put(process.stdout.readline()), daemon=True).start()
    try:
        line = lines.get(timeout=STARTUP_SECONDS)
    except queue.Empty:
        line = ""
    found = re.search(r"http://\S+", line)
    if not found:
        raise AssertionError(f"encdec serve did not start: {line!r}\n{log.read_text()}")
    return found.group()


def attention_checkpoint(tmp_path_factory) -> Path:
    """best.pt of the demo model with Luong's general attention, trained once per session."""
    if "best" not in _attention_runs:
        config = {**DEMO_CONFIG, "model": {**DEMO_CONFIG["model"], "attention": "general"}}
        out_dir = tmp_path_factory.mktemp("attention_run")
        with torch_threads(1):
            train(from_dict(config), out_dir, quiet=True)
        _attention_runs["best"] = out_dir / "best.pt"
    return _attention_runs["best"]
