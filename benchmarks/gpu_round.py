"""Everything a GPU session measures, in one call that writes its figures to one folder.

Device time is scarce, so one command runs, in order, each step bounded in time:

1. training throughput of the attention recipe's model through `encdec train`'s own step
   (steps.train_batch, batches fed ahead and pinned): target tokens/s for fp32 and bf16 at
   several batch sizes, and with training.deterministic on (median and spread over rounds);
2. the whole `configs/multi30k_attention_gpu.yaml` command, timed, with its test BLEU;
3. batched translation of test 2016 with that checkpoint: sentences/s greedy and beam 5;
4. the test suite (`pytest -n 8`), its summary line.

    . .gpu/env.sh && python3 benchmarks/gpu_round.py --data-dir .gpu/data/multi30k --out $OUT

It writes OUT/figures.json, OUT/summary.md (a table for docs/performance.md, with the device,
torch and CUDA versions and the date) and each step's log.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from encdec.batching import bucket_batches, collate
from encdec.config import load_config
from encdec.corpus import build_corpus
from encdec.feeding import fed_ahead, pin_batches
from encdec.model import build_model
from encdec.steps import StepTally, make_optimizer, train_batch
from encdec.training import deterministic_kernels
from encdec.vocab import PAD_IDX

RECIPE = "configs/multi30k_attention.yaml"
GPU_RECIPE = "configs/multi30k_attention_gpu.yaml"


def training_rate(corpus, config, steps: int, rounds: int) -> list[float]:
    """Target tokens/s of `steps` production steps on the GPU, after 10 to warm up."""
    device = torch.device("cuda")
    torch.manual_seed(0)
    model = build_model(config.model, len(corpus.src_vocab), len(corpus.trg_vocab)).to(device)
    settings, pairs = config.training, corpus.ids["train"]
    optimizer, tally = make_optimizer(model, settings.lr), StepTally(device)
    rng, rates = np.random.default_rng(0), []
    for _ in range(rounds):
        batches = bucket_batches(
            pairs, settings.batch_size, settings.bucket_pool, rng, settings.batch_tokens
        )[: steps + 10]
        made = lambda indices: collate(pairs, indices, PAD_IDX)  # noqa: E731
        tokens, start = 0, None
        fed = fed_ahead(batches, made, pin_batches(device))
        for number, (_, batch) in enumerate(fed):
            if number == 10:
                torch.cuda.synchronize()
                tokens, start = 0, time.perf_counter()
            train_batch(model, batch, settings, optimizer, None, tally)
            tokens += batch.n_target_tokens
        tally.read(len(batches))  # waits for the last step
        rates.append(tokens / (time.perf_counter() - start))
    return rates


def measure_training(data_dir: str, steps: int, rounds: int, log) -> dict:
    figures = {}
    base = [f"data.data_dir={data_dir}"]
    corpus = build_corpus(load_config(RECIPE, base).data)
    for precision in ("fp32", "bf16"):
        for batch_size in (128, 256, 512):
            overrides = [*base, f"training.precision={precision}"]
            overrides.append(f"training.batch_size={batch_size}")
            config = load_config(RECIPE, overrides)
            rates = training_rate(corpus, config, steps, rounds)
            figures[f"train_{precision}_batch{batch_size}"] = rates
            log(f"training {precision} batch {batch_size}: {spread(rates)} target tokens/s")
    config = load_config(RECIPE, base)
    with deterministic_kernels(True):
        rates = training_rate(corpus, config, steps, rounds)
    figures["train_fp32_batch128_deterministic"] = rates
    log(f"training fp32 batch 128, deterministic: {spread(rates)} target tokens/s")
    return figures


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):,.0f} ({min(values):,.0f}-{max(values):,.0f})"


def run_logged(command: list[str], log_path: Path, timeout: float) -> tuple[float, str]:
    """Wall seconds and output of a command, its output also kept in `log_path`."""
    start = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        output = done.stdout + done.stderr
    except subprocess.TimeoutExpired as expired:
        output = f"timed out after {timeout} s\n{expired.stdout or ''}{expired.stderr or ''}"
    log_path.write_text(output, encoding="utf-8")
    return time.perf_counter() - start, output


def measure_recipe(data_dir: str, out: Path, log) -> dict:
    """The GPU recipe's whole command, timed; its test BLEU from the run's last log line."""
    run_dir = out / "gpu_recipe"
    command = ["encdec", "train", "--config", GPU_RECIPE, "--data-dir", data_dir]
    seconds, output = run_logged(
        [*command, "--out", str(run_dir), "--device", "cuda", "--quiet"], out / "recipe.log", 420
    )
    lines = [line for line in output.splitlines() if "test (best checkpoint)" in line]
    bleu = float(lines[-1].split("BLEU")[1].split()[0]) if lines else None
    log(f"{GPU_RECIPE}: {seconds:.0f} s, test BLEU {bleu}")
    return {"recipe_seconds": seconds, "recipe_test_bleu": bleu, "run_dir": str(run_dir)}


def measure_translation(data_dir: str, run_dir: Path, out: Path, rounds: int, log) -> dict:
    from encdec.corpus import read_splits
    from encdec.translator import Translator

    translator = Translator.load(run_dir / "best.pt", device="cuda")
    translator.config.data.data_dir = data_dir
    sentences = [source for source, _ in read_splits(translator.config.data)["test"]]
    figures = {}
    for name, options in (("greedy", {"beam": 1}), ("beam5", {"beam": 5})):
        rates = []
        for _ in range(rounds + 1):  # the first round warms up
            torch.cuda.synchronize()
            start = time.perf_counter()
            translator.translations(sentences, batch_size=1000, **options)
            rates.append(len(sentences) / (time.perf_counter() - start))
        figures[f"translate_{name}"] = rates[1:]
        log(f"translation {name}, test 2016: {spread(rates[1:])} sentences/s")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-tests", action="store_true")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    lines = [
        f"command: {' '.join([sys.executable, *sys.argv])}",
        f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, "
        f"CUDA {torch.version.cuda}, {time.strftime('%Y-%m-%d')}",
    ]

    def log(line: str) -> None:
        print(line, flush=True)
        lines.append(line)
        (args.out / "summary.md").write_text("\n".join(lines) + "\n", encoding="utf-8")

    for line in lines:
        print(line, flush=True)
    figures = measure_training(args.data_dir, args.steps, args.rounds, log)
    figures |= measure_recipe(args.data_dir, args.out, log)
    if figures["recipe_test_bleu"] is not None:
        run_dir = Path(figures["run_dir"])
        figures |= measure_translation(args.data_dir, run_dir, args.out, args.rounds, log)
    (args.out / "figures.json").write_text(json.dumps(figures, indent=1), encoding="utf-8")
    if not args.skip_tests:
        test = [sys.executable, "-m", "pytest", "-q", "-n", "8", "-p", "no:cacheprovider"]
        _, output = run_logged(test, args.out / "pytest.log", 480)
        log("test suite: " + (output.strip().splitlines() or ["no output"])[-1])


if __name__ == "__main__":
    main()
