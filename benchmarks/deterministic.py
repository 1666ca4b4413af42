"""What `training.deterministic: true` costs on a CUDA GPU, and what it buys.

For each recipe, in this one process: training tokens/s with deterministic kernels off and on,
alternating round by round so a busy machine slows both alike (median and min-max), and whether
two trainings from the same seed end with the same weights, bit for bit, in each mode.

    python benchmarks/deterministic.py --data-dir ../shared/data/multi30k              # configs/*
    python benchmarks/deterministic.py --recipe configs/multi30k_attention.yaml --batches 40
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
from pathlib import Path

# cuBLAS reads its workspace setting once, at the first matrix product: both modes share it
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import recipe_epoch  # noqa: E402

from encdec.batching import bucket_batches  # noqa: E402
from encdec.config import load_config  # noqa: E402
from encdec.corpus import build_corpus  # noqa: E402
from encdec.model import build_model  # noqa: E402
from encdec.steps import make_optimizer  # noqa: E402
from encdec.training import deterministic_kernels  # noqa: E402

RECIPES = sorted((Path(__file__).resolve().parent.parent / "configs").glob("*.yaml"))


def train_from_seed(config, corpus, batches, deterministic: bool, device: str):
    """Train a fresh model of `config` over `batches`; its tokens/s and its final weights."""
    settings = config.training
    torch.manual_seed(settings.seed)
    model = build_model(config.model, len(corpus.src_vocab), len(corpus.trg_vocab)).to(device)
    optimizer = make_optimizer(model, settings.lr)
    coins = torch.Generator().manual_seed(settings.seed)  # teacher forcing's
    with deterministic_kernels(deterministic):
        result = recipe_epoch(model, corpus, batches, settings, optimizer, coins)
    return result.tokens / result.seconds, [p.detach().cpu() for p in model.parameters()]


def same_weights(first: list[torch.Tensor], second: list[torch.Tensor]) -> bool:
    return all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


def measure(recipe: Path, data_dir: str, n_batches: int, rounds: int, device: str) -> None:
    config = load_config(str(recipe), [f"data.data_dir={data_dir}"])
    corpus = build_corpus(config.data)
    settings = config.training
    rng = random.Random(settings.seed)
    train = corpus.examples["train"]
    batches = bucket_batches(train, settings.batch_size, settings.bucket_pool, rng)[:n_batches]
    train_from_seed(config, corpus, batches[:2], False, device)  # warm-up: CUDA context, kernels
    rates, weights = {False: [], True: []}, {False: [], True: []}
    for _ in range(rounds):
        for deterministic in (False, True):
            rate, final = train_from_seed(config, corpus, batches, deterministic, device)
            rates[deterministic].append(rate)
            weights[deterministic].append(final)
    for deterministic, label in ((False, "default      "), (True, "deterministic")):
        values = rates[deterministic]
        first, *others = weights[deterministic]
        repeats = all(same_weights(first, other) for other in others)
        repeat_note = (
            f"{rounds} runs from one seed end with {'the same' if repeats else 'different'} weights"
            if others
            else "one run: repeatability not checked"
        )
        print(
            f"{recipe.stem:<28} {label} {statistics.median(values):9,.0f} tokens/s "
            f"({min(values):,.0f}-{max(values):,.0f}); {repeat_note}",
            flush=True,
        )
    cost = statistics.median(rates[False]) / statistics.median(rates[True])
    print(f"{recipe.stem:<28} deterministic takes {cost:.2f}x the default's time", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default="../shared/data/multi30k")
    parser.add_argument("--recipe", action="append", help="a config (repeatable); else configs/*")
    parser.add_argument("--batches", type=int, default=30, help="training batches per run")
    parser.add_argument("--rounds", type=int, default=3, help="runs per mode, alternating")
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    print(f"command: python benchmarks/deterministic.py {' '.join(sys.argv[1:])}")
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device
    print(f"torch {torch.__version__} on {name}; {args.batches} batches per run", flush=True)
    for recipe in map(Path, args.recipe) if args.recipe else RECIPES:
        measure(recipe, args.data_dir, args.batches, args.rounds, args.device)


if __name__ == "__main__":
    main()
