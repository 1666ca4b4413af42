"""Crash anywhere: SIGKILL a short training run at random moments, resume, compare bit for bit.

A small toy run (dropout, teacher forcing 0.5, a warmup schedule, last.pt after every batch)
is trained once uninterrupted. Then runs are killed with SIGKILL, each at a random moment of
its session (during a step, during validation) or just as a temporary checkpoint file appears
(while last.pt or best.pt is written), resumed with `encdec train --resume`, killed again in
the resumed session, and resumed to the end. After every kill each *.pt in the run folder must
load; at the end best.pt, last.pt (weights, optimizer, position) and metrics.jsonl must equal
the uninterrupted run's bit for bit.

    python benchmarks/crash_anywhere.py --kills 20 --seed 1
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml
from loopback_server import encdec, one_thread

from encdec.checkpoint import load_checkpoint
from encdec.errors import EncdecError

RECIPE = {
    "data": {"dataset": "toy", "src_lang": "en", "trg_lang": "es", "min_freq": 1},
    "model": {"embedding_dim": 16, "hidden_dim": 32, "num_layers": 2, "dropout": 0.2},
    "training": {
        "epochs": 4,
        "batch_size": 8,
        "lr": 0.003,
        "teacher_forcing_ratio": 0.5,
        "lr_schedule": "warmup_decay",
        "warmup_steps": 10,
        "save_every_steps": 1,
        "keep_checkpoints": 2,
        "select_by": "bleu",
    },
    "decoding": {"max_len": 8},
}
RECORD_KEYS = ("epoch", "train_loss", "valid_loss", "valid_bleu", "lr")


def train_command(config: Path, run_dir: Path, resume: bool) -> list[str]:
    where = ["--resume", run_dir] if resume else ["--config", config, "--out", run_dir]
    return [*encdec("train", *where), "--device", "cpu", "--quiet"]


def temporary_files(run_dir: Path) -> list[Path]:
    return sorted(run_dir.glob(".*.tmp")) if run_dir.is_dir() else []


def log_size(run_dir: Path) -> int:
    log = run_dir / "train.log"
    return log.stat().st_size if log.is_file() else 0


def run_until_killed(command: list[str], run_dir: Path, moment: dict) -> str | None:
    """Run `command`; SIGKILL it at `moment`. What it was doing then, or None if it ended first.

    A moment "at a time" counts from the session's first line in train.log: Python's start-up
    and imports come before it.
    """
    process = subprocess.Popen(command, env=one_thread(), stderr=subprocess.DEVNULL)
    seen, logged, started = set(temporary_files(run_dir)), log_size(run_dir), None
    before = set(seen)
    writes = 0
    while process.poll() is None:
        if started is None and log_size(run_dir) > logged:
            started = time.monotonic()
        if (
            moment["kind"] == "at a time"
            and started is not None
            and time.monotonic() - started >= moment["seconds"]
        ):
            break
        if moment["kind"] == "as a checkpoint is written":
            fresh = set(temporary_files(run_dir)) - seen
            writes += bool(fresh)
            seen |= fresh
            if fresh and writes > moment["writes_to_skip"]:
                break
            time.sleep(0.0005)
        elif moment["kind"] == "during validation":  # after the first epoch's last batch's save
            current = set(temporary_files(run_dir))
            writes += bool(current - seen)
            seen |= current
            if writes >= moment["batches"] and not current - before:
                time.sleep(moment["delay"])
                break
            time.sleep(0.0005)
        else:
            time.sleep(0.005)
    if process.poll() is not None:
        return None
    process.send_signal(signal.SIGKILL)
    process.wait()
    return describe_kill(run_dir, before)


def describe_kill(run_dir: Path, temporary_before: set[Path]) -> str:
    """Where the killed run was: writing a checkpoint, validating, or in a step."""
    if half_written := sorted(set(temporary_files(run_dir)) - temporary_before):
        return f"while writing {half_written[0].name.split('.pt.')[0].lstrip('.')}.pt"
    try:
        last = load_checkpoint(run_dir / "last.pt")
    except EncdecError:
        return "before the first save"
    batches = last["batches"]
    count = len(batches["sizes"]) if isinstance(batches, dict) else len(batches)
    if not last["validated"] and last["step"] == count:
        validated = (run_dir / "metrics.jsonl").is_file() and len(records(run_dir)) >= last["epoch"]
        return "at an epoch's end, after validation" if validated else "during validation"
    return "during training steps"


def unreadable_checkpoints(run_dir: Path) -> list[str]:
    broken = []
    for path in sorted(run_dir.glob("*.pt")):
        try:
            load_checkpoint(path)
        except EncdecError as error:
            broken.append(str(error))
    return broken


def differences(expected_dir: Path, actual_dir: Path) -> list[str]:
    """How two run folders' best.pt, last.pt and metrics.jsonl differ; empty if bit-identical."""
    found = []
    for name in ("best.pt", "last.pt"):
        expected, actual = load_checkpoint(expected_dir / name), load_checkpoint(actual_dir / name)
        for key in ("model", "optimizer") if name == "last.pt" else ("model",):
            if not same(expected[key], actual[key]):
                found.append(f"{name} {key}")
        for key in ("epoch", "step", "finished"):
            if expected.get(key) != actual.get(key):
                found.append(f"{name} {key}: {expected.get(key)} != {actual.get(key)}")
    if records(expected_dir) != records(actual_dir):
        found.append("metrics.jsonl")
    return found


def same(expected: object, actual: object) -> bool:
    if isinstance(expected, torch.Tensor):
        return isinstance(actual, torch.Tensor) and torch.equal(expected, actual)
    if isinstance(expected, dict):
        return expected.keys() == actual.keys() and all(
            same(expected[k], actual[k]) for k in expected
        )
    if isinstance(expected, list | tuple):
        return len(expected) == len(actual) and all(map(same, expected, actual))
    return expected == actual


def records(run_dir: Path) -> list[list]:
    lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [[json.loads(line)[key] for key in RECORD_KEYS] for line in lines]


def random_moment(rng: random.Random, training_seconds: float, saves: int, batches: int) -> dict:
    """A time, a checkpoint write, or (`batches` > 0) a moment of the first validation."""
    kind = rng.randrange(3 if batches else 2)
    if kind == 0:
        return {"kind": "as a checkpoint is written", "writes_to_skip": rng.randrange(saves)}
    if kind == 1:
        return {"kind": "at a time", "seconds": rng.uniform(0, training_seconds)}
    return {"kind": "during validation", "batches": batches, "delay": rng.uniform(0, 0.1)}


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--kills-per-run", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--work-dir", type=Path, default=None, help="default: a temporary one")
    return parser.parse_args()


def main() -> None:
    args = arguments()
    rng = random.Random(args.seed)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="encdec-crash-"))
    work.mkdir(parents=True, exist_ok=True)
    config = work / "recipe.yaml"
    config.write_text(yaml.safe_dump(RECIPE), encoding="utf-8")
    reference, started = work / "uninterrupted", time.monotonic()
    process = subprocess.Popen(train_command(config, reference, False), env=one_thread())
    while log_size(reference) == 0 and process.poll() is None:
        time.sleep(0.005)
    logging_from = time.monotonic()
    if process.wait() != 0:
        raise SystemExit("the uninterrupted run failed")
    session_seconds, training_seconds = time.monotonic() - started, time.monotonic() - logging_from
    saves = len(list(reference.glob("*.pt"))) + sum(1 for _ in open(reference / "metrics.jsonl"))
    batches = load_checkpoint(reference / "last.pt")["batches"]
    batches = len(batches["sizes"]) if isinstance(batches, dict) else len(batches)
    saves = max(saves, batches * RECIPE["training"]["epochs"])  # last.pt after every batch
    kills: collections.Counter = collections.Counter()
    broken, leftovers, outcomes, run_number = [], 0, [], 0
    while kills.total() < args.kills:
        run_number += 1
        run_dir = work / f"run{run_number:02d}"
        for session in range(args.kills_per_run):
            if kills.total() >= args.kills:
                break
            command = train_command(config, run_dir, resume=session > 0)
            if session > 0 and not (run_dir / "last.pt").is_file():
                command = train_command(config, run_dir, resume=False)  # killed before a save
            fresh_run = "--config" in command  # validation moments count its batches
            moment = random_moment(rng, training_seconds, saves, batches if fresh_run else 0)
            what = run_until_killed(command, run_dir, moment)
            if what is None:
                continue
            kills[what] += 1
            broken += unreadable_checkpoints(run_dir)
            leftovers += len(temporary_files(run_dir))
        resume = (run_dir / "last.pt").is_file()
        finish = subprocess.run(train_command(config, run_dir, resume), env=one_thread())
        outcome = differences(reference, run_dir) if finish.returncode == 0 else ["did not finish"]
        outcome += [f"{path.name} left after the resume" for path in temporary_files(run_dir)]
        outcomes.append(outcome)
        print(f"run {run_number}: {'bit-identical' if not outcome else outcome}", flush=True)
    identical = sum(not outcome for outcome in outcomes)
    print(
        f"uninterrupted run: {session_seconds:.1f} s ({RECIPE['training']['epochs']} epochs), "
        f"{training_seconds:.1f} s of it after its first log line"
    )
    print(f"SIGKILLs: {kills.total()} in {len(outcomes)} runs: {dict(kills)}")
    print(f"checkpoints that did not load after a kill: {len(broken)}")
    for error in broken[:3]:
        print(f"  e.g. {error}")
    print(
        f"half-written temporary files left by kills: {leftovers} (never read; the resume "
        "removes them)"
    )
    print(f"resumed runs bit-identical to the uninterrupted one: {identical}/{len(outcomes)}")
    print(f"took {(time.monotonic() - started) / 60:.1f} min; work folder: {work}")
    print("command: python " + shlex.join(sys.argv))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    main()
