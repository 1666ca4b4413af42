"""Quality levers side by side: train a plan's runs, several at once, then score its decodings.

A plan (YAML, see benchmarks/ablation.yaml) names a base config, the language pairs, the runs (the
base with `--set` overrides; a run may start from another's by naming it) and the decodings (runs'
averaged checkpoints as an ensemble, maybe rescored by other runs and by channel runs of the
pair that translates the other way, with more `encdec evaluate` options). Every run and decoding
is scored on valid, where choices are made; `--test` then scores test once per pair, for the
decoding best on valid, and writes its translations to OUT/PAIR/test.DECODING.txt. A second call
goes on where the first stopped: finished runs are kept, interrupted ones resumed. On one GPU the
runs share the card (a recipe alone leaves most of it idle): start the CUDA MPS daemon first
(`nvidia-cuda-mps-control -d`) so that their kernels run at the same time; 9 runs of the attention
recipe took 2.7 min on one H200 that way (docs/results.md). On the CPU use `--parallel 1`.

    python benchmarks/ablation.py benchmarks/ablation.yaml --data-dir ../shared/data/multi30k \\
        --out runs/ablation --device cuda --parallel 6 --pairs de-en,fr-en --runs base,wd,r2l
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import yaml


@dataclass
class Run:
    pair: str  # "de-en"
    name: str
    overrides: list[str]
    folder: Path


@dataclass
class Decoding:
    pair: str
    name: str
    ensemble: list[str]  # run names
    rescore: list[str]
    rescore_weight: float
    # more `encdec evaluate` options, e.g. ["--length-penalty", "1.2"]
    options: list[str] = field(default_factory=list)
    channel: list[str] = field(default_factory=list)  # runs of the mirrored pair (en-de: de-en)
    channel_weight: float = 0.05

    def runs(self) -> list[tuple[str, str]]:
        """The (pair, run name) of every run it needs."""
        own = [(self.pair, name) for name in self.ensemble + self.rescore]
        return own + [(mirrored(self.pair), name) for name in self.channel]


def mirrored(pair: str) -> str:
    """The pair that translates the other way: de-en for en-de."""
    return "-".join(reversed(pair.split("-")))


def run_settings(runs: dict, name: str, path: Path, seen: tuple = ()) -> list[str]:
    """A run's `--set` overrides: an item without "=" names a run whose overrides come first."""
    if name in seen:
        raise SystemExit(f"{path}: run {name!r} extends itself: {' -> '.join((*seen, name))}")
    settings = []
    for item in runs[name] or []:
        if "=" in item:
            settings.append(item)
        elif item in runs:
            settings += run_settings(runs, item, path, (*seen, name))
        else:
            raise SystemExit(f"{path}: run {name!r}: {item!r} is neither KEY=VALUE nor a run")
    return settings


def read_plan(path: Path, out: Path) -> tuple[str, list[Run], list[Decoding]]:
    plan = yaml.safe_load(path.read_text(encoding="utf-8"))
    settings = {name: run_settings(plan["runs"], name, path) for name in plan["runs"]}
    runs, decodings = [], []
    for pair in plan.get("pairs") or ["as-configured"]:
        languages = [] if pair == "as-configured" else pair.split("-")
        pair_overrides = [
            f"data.{side}_lang={lang}" for side, lang in zip(["src", "trg"], languages)
        ]
        for name, overrides in settings.items():
            folder = out / pair / name
            runs.append(Run(pair, name, [*pair_overrides, *overrides], folder))
            decodings.append(Decoding(pair, name, [name], [], 0.0))  # each run alone
        for name, decoding in (plan.get("decodings") or {}).items():
            named = {
                *decoding["ensemble"],
                *decoding.get("rescore", []),
                *decoding.get("channel", []),
            }
            unknown = named - set(plan["runs"])
            if unknown:
                raise SystemExit(f"{path}: decoding {name!r} names no run {sorted(unknown)}")
            if decoding.get("channel") and not languages:
                raise SystemExit(
                    f"{path}: decoding {name!r} needs pairs: its channel runs "
                    "translate the other way"
                )
            if decoding.get("channel") and mirrored(pair) not in plan["pairs"]:
                continue  # fr-en's channel runs would be en-fr's: none in the plan
            decodings.append(
                Decoding(
                    pair,
                    name,
                    decoding["ensemble"],
                    decoding.get("rescore", []),
                    float(decoding.get("rescore_weight", 0.5)),
                    [str(option) for option in decoding.get("options", [])],
                    decoding.get("channel", []),
                    float(decoding.get("channel_weight", 0.05)),
                )
            )
    return plan["base"], runs, decodings


def encdec(*args: object) -> list[str]:
    return [sys.executable, "-m", "encdec", *map(str, args)]


def finished(run: Run) -> bool:
    log = run.folder / "train.log"
    return log.is_file() and "test (best checkpoint)" in log.read_text(encoding="utf-8")


def data_dir_option(data_dir: str | None) -> list[str]:
    return ["--data-dir", data_dir] if data_dir else []


def train(run: Run, base: str, data_dir: str | None, device: str) -> str | None:
    """Train `run` (or resume it), average its kept checkpoints into avg.pt; why it failed."""
    if not finished(run):
        if (run.folder / "last.pt").is_file():
            command = encdec("train", "--resume", run.folder, "--device", device, "--quiet")
        else:
            settings = [item for override in run.overrides for item in ("--set", override)]
            command = encdec(
                "train", "--config", base, *settings, *data_dir_option(data_dir),
                "--out", run.folder, "--device", device, "--quiet",
            )  # fmt: skip
        run.folder.mkdir(parents=True, exist_ok=True)
        log = run.folder.with_suffix(".out")
        with open(log, "a", encoding="utf-8") as output:
            done = subprocess.run(command, stdout=output, stderr=subprocess.STDOUT)
        if done.returncode != 0:
            return f"training exited with {done.returncode}: see {log}"
    kept = sorted(run.folder.glob("epoch_*.pt"))
    if kept and not (run.folder / "avg.pt").is_file():
        average = encdec("average", *kept, "--output", run.folder / "avg.pt")
        done = subprocess.run(average, capture_output=True, text=True)
        if done.returncode != 0:
            return f"encdec average failed: {done.stderr.strip()[-500:]}"
    return None


def training_minutes(out: Path, pair: str, run_name: str) -> float:
    """Minutes in the training loop, over every call that trained the run."""
    lines = (out / pair / run_name / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return json.loads(lines[-1])["train_seconds_total"] / 60


def checkpoint(out: Path, pair: str, run_name: str) -> Path:
    folder = out / pair / run_name
    return folder / "avg.pt" if (folder / "avg.pt").is_file() else folder / "best.pt"


def score(decoding: Decoding, out: Path, split: str, data_dir: str | None, device: str) -> dict:
    """`encdec evaluate`'s scores of the decoding, or {"error": why it failed}."""
    models = [checkpoint(out, decoding.pair, name) for name in decoding.ensemble]
    command = encdec(
        "evaluate", *models, "--split", split, *data_dir_option(data_dir),
        "--device", device, "--json", "--quiet",
    )  # fmt: skip
    if decoding.rescore:
        rescorers = [checkpoint(out, decoding.pair, name) for name in decoding.rescore]
        command += [
            "--rescore",
            *map(str, rescorers),
            "--rescore-weight",
            str(decoding.rescore_weight),
        ]
    if decoding.channel:
        channels = [checkpoint(out, mirrored(decoding.pair), name) for name in decoding.channel]
        command += ["--channel", *map(str, channels), "--channel-weight"]
        command += [str(decoding.channel_weight)]
    command += decoding.options
    if split == "test":  # the chosen recipe's translations, to read and to quote
        command += ["--output", test_translations(decoding, out)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        return {"error": f"encdec evaluate failed: {done.stderr.strip()[-500:]}"}
    return json.loads(done.stdout)


def test_translations(decoding: Decoding, out: Path) -> Path:
    """Where a decoding's test translations go: its name with only safe characters in it."""
    safe_name = re.sub(r"[^\w.-]", "_", decoding.name)
    return out / decoding.pair / f"test.{safe_name}.txt"


def score_all(
    decodings: list[Decoding], split: str, args: argparse.Namespace, run_names: set
) -> dict[int, dict]:
    """Score the decodings side by side; print and record each result as it comes in."""
    results = {}
    with ThreadPoolExecutor(args.parallel) as pool:
        futures = {
            pool.submit(score, decoding, args.out, split, args.data_dir, args.device): decoding
            for decoding in decodings
        }
        for future in as_completed(futures):
            decoding = futures[future]
            result = results[id(decoding)] = future.result()
            if "error" in result:
                print(f"{decoding.pair:<14} {decoding.name:<24} {split:<6} {result['error']}")
                continue
            minutes = ""
            if (decoding.pair, decoding.name) in run_names:
                minutes = f"{training_minutes(args.out, decoding.pair, decoding.name):.1f}"
            print(
                f"{decoding.pair:<14} {decoding.name:<24} {split:<6} {result['bleu']:6.2f} "
                f"{result['chrf']:6.2f}  {minutes}",
                flush=True,
            )
            row = {"pair": decoding.pair, "decoding": decoding.name, "split": split, **result}
            with open(args.out / "scores.jsonl", "a", encoding="utf-8") as record:
                record.write(json.dumps(row) + "\n")
    return results


def best_on_valid(decodings: list[Decoding], valid: dict[int, dict]) -> list[Decoding]:
    """Each pair's decoding with the highest valid BLEU: the one recipe test is scored for."""
    best: dict[str, tuple[float, Decoding]] = {}
    for decoding in decodings:
        bleu = valid[id(decoding)].get("bleu")
        if bleu is not None and (decoding.pair not in best or bleu > best[decoding.pair][0]):
            best[decoding.pair] = (bleu, decoding)
    return [decoding for _, decoding in best.values()]


def select(
    runs: list[Run], decodings: list[Decoding], pairs: str | None, names: str | None
) -> tuple[list[Run], list[Decoding]]:
    """The runs that `--pairs` and `--runs` choose, and the decodings made of chosen runs alone."""
    wanted_pairs = set(pairs.split(",")) if pairs else None
    wanted_names = set(names.split(",")) if names else None

    def chosen(pair: str, name: str) -> bool:
        if wanted_names is not None and f"{pair}/{name}" in wanted_names:
            return True
        in_pairs = wanted_pairs is None or pair in wanted_pairs
        return in_pairs and (wanted_names is None or name in wanted_names)

    return [run for run in runs if chosen(run.pair, run.name)], [
        decoding
        for decoding in decodings
        if (wanted_pairs is None or decoding.pair in wanted_pairs)
        and all(chosen(pair, name) for pair, name in decoding.runs())
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("plan", type=Path)
    parser.add_argument("--data-dir", help="Multi30k folder (default: the base config's)")
    parser.add_argument("--out", type=Path, default=Path("runs/ablation"))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--parallel", type=int, default=1, help="runs trained at once")
    parser.add_argument("--pairs", help="only these of the plan's pairs, e.g. de-en,fr-en")
    parser.add_argument(
        "--runs",
        help="only these runs (and the decodings made of them alone); PAIR/RUN names one pair's "
        "run, even of a pair --pairs leaves out (a channel run, e.g. de-en/bpe_wd_big)",
    )
    parser.add_argument(
        "--test", action="store_true", help="then score test: each pair's best decoding on valid"
    )
    args = parser.parse_args()
    print(f"command: python benchmarks/ablation.py {' '.join(sys.argv[1:])}", flush=True)
    base, runs, decodings = read_plan(args.plan, args.out)
    runs, decodings = select(runs, decodings, args.pairs, args.runs)
    os.environ.setdefault("OMP_NUM_THREADS", "2")  # runs side by side share the cores
    start = time.perf_counter()
    with ThreadPoolExecutor(args.parallel) as pool:
        errors = list(pool.map(lambda run: train(run, base, args.data_dir, args.device), runs))
    failed = {(run.pair, run.name): error for run, error in zip(runs, errors) if error}
    for (pair, name), error in failed.items():
        print(f"run {pair}/{name} failed, and every decoding that needs it is left out: {error}")
    usable = [decoding for decoding in decodings if not failed.keys() & set(decoding.runs())]
    run_names = {(run.pair, run.name) for run in runs}
    print(f"{'pair':<14} {'decoding':<24} {'split':<6} {'BLEU':>6} {'chrF':>6}  training min")
    valid = score_all(usable, "valid", args, run_names)
    results = list(valid.values())
    if args.test:
        results += score_all(best_on_valid(usable, valid), "test", args, run_names).values()
    print(f"wall clock of this call: {(time.perf_counter() - start) / 60:.1f} min")
    if failed or any("error" in result for result in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
