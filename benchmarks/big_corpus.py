"""Large corpora: how fast `encdec prepare` is and how little memory training on its folder takes.

Makes an N-pair corpus from Multi30k's training pairs (copy k of the 29,000 pairs has each
sentence's words shuffled with seed k, so sentences differ while the vocabulary stays
Multi30k's and the model the same at every N), then for each N:

- prepares it with spaCy, and with `data.tokenizer: whitespace` + BPE: pairs/s and the peak RSS
  of the whole process tree (workers included);
- trains the attention recipe's model on the prepared folder for a few dozen steps in a fresh
  process: start-up to the end of the first step, peak RSS, target tokens/s; and, at the sizes
  given with --text-sizes, the same on the text path (no prepared folder) for comparison.

Each figure is the median over --repeats runs with its spread (min-max). Run it alone: the two
cores are shared with anything else running.

    python benchmarks/big_corpus.py --data-dir ../shared/data/multi30k \
        --sizes 29000 1000000 5000000 --text-sizes 29000 --repeats 3 --work /tmp/big_corpus
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shlex
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

from encdec.data import read_lines
from encdec.tokenize import Tokenizer

MODEL = {  # configs/multi30k_attention.yaml's model and batches
    "model": {
        "embedding_dim": 256,
        "hidden_dim": 512,
        "num_layers": 2,
        "dropout": 0.3,
        "bidirectional": True,
        "attention": "general",
    },
    "training": {"batch_size": 128, "teacher_forcing_ratio": 1.0, "label_smoothing": 0.1},
}
TOKENIZATIONS = {
    "spacy": {"tokenizer": "spacy"},
    "whitespace+bpe": {"tokenizer": "whitespace", "subwords": "bpe", "subword_vocab_size": 8000},
}


def make_corpus(data_dir: Path, pairs: int, folder: Path) -> Path:
    """train.de / train.en of `pairs` lines (made once), valid and test as Multi30k's."""
    folder.mkdir(parents=True, exist_ok=True)
    done = folder / "made"
    if done.is_file():
        return folder
    # spaCy's tokens joined by spaces: tokenized again, a shuffled copy gives the same tokens,
    # so the vocabulary (and the model) stay the same at every size
    sources = _tokenized(read_lines(data_dir / "train.de.gz"), "de")
    targets = _tokenized(read_lines(data_dir / "train.en.gz"), "en")
    with (
        open(folder / "train.de", "w", encoding="utf-8") as src,
        open(folder / "train.en", "w", encoding="utf-8") as trg,
    ):
        for copy in range(-(-pairs // len(sources))):
            rng = random.Random(copy)
            count = min(len(sources), pairs - copy * len(sources))
            for source, target in zip(sources[:count], targets[:count]):
                src.write(_shuffled(source, rng, copy) + "\n")
                trg.write(_shuffled(target, rng, copy) + "\n")
    for split, name in (("valid", "val"), ("test", "test_2016_flickr")):
        for lang in ("de", "en"):
            lines = read_lines(data_dir / f"{name}.{lang}.gz")
            (folder / f"{split}.{lang}").write_text("".join(f"{line}\n" for line in lines))
    done.touch()
    return folder


def _tokenized(lines: list[str], lang: str) -> list[str]:
    tokenizer = Tokenizer("spacy", lang, lowercase=False)
    return [" ".join(tokens) for tokens in tokenizer.words_many(lines)]


def _shuffled(sentence: str, rng: random.Random, copy: int) -> str:
    words = sentence.split()
    if copy:
        rng.shuffle(words)
    return " ".join(words)


def data_section(corpus: Path, tokenization: str) -> dict:
    files = {
        f"{split}_{side}": str(corpus / f"{split}.{lang}")
        for split in ("train", "valid", "test")
        for side, lang in (("src", "de"), ("trg", "en"))
    }
    # min_freq 1: every size keeps every word (a copy repeats each), so the model is the same
    settings = {"dataset": "files", "src_lang": "de", "trg_lang": "en", "min_freq": 1}
    return settings | files | TOKENIZATIONS[tokenization]


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of a process and all its descendants, from /proc."""
    total, pending = 0, [pid]
    while pending:
        current = pending.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        rss = next((line for line in status.splitlines() if line.startswith("VmRSS:")), None)
        total += int(rss.split()[1]) * 1024 if rss else 0
        pending += map(int, children)
    return total


def run_measured(command: list[str]) -> tuple[float, int, str]:
    """Wall seconds, peak RSS of the process tree (sampled every 50 ms) and stdout."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    peak = [0]

    def sample() -> None:
        while process.poll() is None:
            peak[0] = max(peak[0], tree_rss_bytes(process.pid))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    output, _ = process.communicate()
    sampler.join()
    if process.returncode:
        raise SystemExit(f"failed ({process.returncode}): {shlex.join(command)}")
    return time.perf_counter() - start, peak[0], output


def measure_prepare(corpus: Path, pairs: int, tokenization: str, work: Path) -> dict:
    config = work / f"prepare-{tokenization}.yaml"
    config.write_text(yaml.safe_dump({"data": data_section(corpus, tokenization)}))
    out = work / f"prepared-{pairs}-{tokenization}"
    command = ["encdec", "prepare", "--config", str(config), "--out", str(out), "--quiet"]
    seconds, peak, _ = run_measured([*command, "--overwrite"])
    return {"pairs_per_s": pairs / seconds, "peak_rss_gb": peak / 1e9, "seconds": seconds}


def measure_training(data: dict, steps: int, work: Path) -> dict:
    """A fresh process trains `steps` steps: start-up, peak RSS and tokens/s of steps 3 on."""
    config = work / "train.yaml"
    config.write_text(yaml.safe_dump({"data": data, **MODEL}))
    run_dir = work / f"run-{time.time_ns()}"
    started = time.time()
    command = [sys.executable, __file__, "probe", str(config), str(run_dir), str(steps)]
    _, peak, output = run_measured(command)
    shutil.rmtree(run_dir)
    figures = json.loads(output.strip().splitlines()[-1])
    return {
        "startup_s": figures["first_step_done"] - started,
        "peak_rss_gb": peak / 1e9,
        "tokens_per_s": figures["tokens_per_s"],
    }


class _Enough(Exception):
    """Raised by the probe once it has timed its steps."""


def probe(config_path: str, out_dir: str, steps: int) -> None:
    """(In the child) train until `steps` steps are done; print the times as JSON."""
    from encdec import training
    from encdec.config import load_config

    real_step, marks = training._train_step, []

    def timed_step(run, indices, batch, stop):
        stopping = real_step(run, indices, batch, stop)
        marks.append((time.time(), run.progress.epoch_tokens))
        if len(marks) == steps:
            raise _Enough
        return stopping

    training._train_step = timed_step
    try:
        training.train(load_config(config_path), out_dir, quiet=True, device="cpu")
    except _Enough:
        pass
    (first_done, _), (from_time, from_tokens), (to_time, to_tokens) = marks[0], marks[2], marks[-1]
    tokens_per_s = (to_tokens - from_tokens) / (to_time - from_time)
    print(json.dumps({"first_step_done": first_done, "tokens_per_s": tokens_per_s}))


def summary(runs: list[dict]) -> dict:
    """Each figure's median and spread over the runs."""
    return {
        key: (
            statistics.median(r[key] for r in runs),
            min(r[key] for r in runs),
            max(r[key] for r in runs),
        )
        for key in runs[0]
    }


def show(label: str, figures: dict) -> None:
    parts = [
        f"{key} {median:,.2f} ({low:,.2f}-{high:,.2f})"
        for key, (median, low, high) in figures.items()
    ]
    print(f"{label}: " + " | ".join(parts), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--sizes", type=int, nargs="+", default=[29000, 1_000_000, 5_000_000])
    parser.add_argument("--text-sizes", type=int, nargs="*", default=[29000])
    parser.add_argument("--tokenizations", nargs="+", default=list(TOKENIZATIONS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--work", type=Path, default=Path("/tmp/big_corpus"))
    parser.add_argument("--prepare-only", action="store_true", help="no training runs")
    args = parser.parse_args()
    print("command:", shlex.join([sys.executable, *sys.argv]))
    cores = len(os.sched_getaffinity(0))
    print(f"machine: {platform.processor() or platform.machine()}, {cores} cores; {time.ctime()}")
    for pairs in args.sizes:
        corpus = make_corpus(args.data_dir, pairs, args.work / f"corpus-{pairs}")
        for tokenization in args.tokenizations:
            runs = [
                measure_prepare(corpus, pairs, tokenization, args.work) for _ in range(args.repeats)
            ]
            show(f"prepare {pairs:,} pairs, {tokenization}", summary(runs))
        if args.prepare_only:
            continue
        prepared = {"prepared": str(args.work / f"prepared-{pairs}-spacy")}
        runs = [measure_training(prepared, args.steps, args.work) for _ in range(args.repeats)]
        show(f"train --prepared, {pairs:,} pairs", summary(runs))
        if pairs in args.text_sizes:
            text = data_section(corpus, "spacy")
            runs = [measure_training(text, args.steps, args.work) for _ in range(args.repeats)]
            show(f"train on text, {pairs:,} pairs", summary(runs))


if __name__ == "__main__":
    if sys.argv[1:2] == ["probe"]:
        probe(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        main()
