"""Training speed with 1 and N data-parallel processes (torchrun), in target tokens per second.

Each round runs `torchrun --nproc_per_node=P -m encdec train` for every P, alternating, on the
same config for a fixed number of batches, and reads the training loop's own figure
(`train_tokens_per_s` in metrics.jsonl: target tokens of all processes over the time spent in
training steps, validation excluded). The cores are split between the processes
(OMP_NUM_THREADS = cores / P). Prints the median over rounds and the spread (min-max). Run it
alone: anything else on the machine slows it.

    python benchmarks/distributed.py --data-dir ../shared/data/multi30k \
        --config configs/multi30k_attention.yaml --processes 1 2 --steps 40 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def tokens_per_second(config: str, data_dir: str, processes: int, steps: int, cores: int) -> float:
    with tempfile.TemporaryDirectory() as scratch:
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc_per_node={processes}",
            "--master_addr=127.0.0.1",
            f"--master_port={free_port()}",
            "-m",
            "encdec",
            "train",
            "--config",
            config,
            "--data-dir",
            data_dir,
            "--epochs",
            "1",
            "--max-steps",
            str(steps),
            "--out",
            scratch,
            "--quiet",
        ]
        threads = str(max(cores // processes, 1))
        environment = {**os.environ, "OMP_NUM_THREADS": threads, "GLOO_SOCKET_IFNAME": "lo"}
        subprocess.run(command, env=environment, check=True, capture_output=True)
        record = json.loads(Path(scratch, "metrics.jsonl").read_text().splitlines()[0])
        return record["train_tokens_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default="../shared/data/multi30k")
    parser.add_argument("--config", default="configs/multi30k_attention.yaml")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=40, help="training batches per run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cores", type=int, default=os.cpu_count())
    args = parser.parse_args()
    print("command:", shlex.join([sys.executable, *sys.argv]))
    figures: dict[int, list[float]] = {count: [] for count in args.processes}
    for round_number in range(args.rounds):
        for count in args.processes:
            rate = tokens_per_second(args.config, args.data_dir, count, args.steps, args.cores)
            figures[count].append(rate)
            print(f"round {round_number + 1}: {count} process(es): {rate:,.0f} target tokens/s")
    base = statistics.median(figures[args.processes[0]])
    for count, rates in figures.items():
        median = statistics.median(rates)
        print(
            f"{count} process(es) x {max(args.cores // count, 1)} thread(s): "
            f"median {median:,.0f} tokens/s (min {min(rates):,.0f}, max {max(rates):,.0f}), "
            f"{median / base:.2f}x of {args.processes[0]} process(es)"
        )


if __name__ == "__main__":
    main()
