"""Tests for data-parallel training with torchrun (2 CPU processes, gloo on 127.0.0.1), devices
and mixed precision. The CUDA tests skip on a machine without a GPU."""

import importlib.util
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from encdec.batching import shard, splittable
from encdec.checkpoint import load_checkpoint
from encdec.config import from_dict
from encdec.distributed import resolve_device, weights_sha256
from encdec.errors import EncdecError
from encdec.prepare import prepare
from encdec.training import train

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ENTRY = Path(__file__).with_name("distributed_entry.py")
EPOCHS = 2
# no dropout (each process draws its own masks); the teacher-forcing coins come from the run's
# generator, the same in every process: one process and two then compute the same thing
RECIPE = {
    "data": {"dataset": "toy", "src_lang": "en", "trg_lang": "es", "min_freq": 1},
    "model": {"embedding_dim": 16, "hidden_dim": 32, "num_layers": 2, "dropout": 0.0},
    "training": {
        "epochs": EPOCHS,
        "batch_size": 8,  # 107 toy pairs: 13 batches of 8 and one of 3, all shareable by two
        "lr": 0.003,
        "teacher_forcing_ratio": 0.5,
        "save_every_steps": 1,
    },
    "decoding": {"max_len": 8},
}
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def torchrun(*args: str, processes: int = 2) -> list[str]:
    """The command for `processes` processes on this machine, rendezvous on 127.0.0.1."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={processes}",
        "--master_addr=127.0.0.1",
        f"--master_port={free_port()}",
        str(ENTRY),
        *map(str, args),
    ]


def environment(writes: Path) -> dict:
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "GLOO_SOCKET_IFNAME": os.environ.get("GLOO_SOCKET_IFNAME", "lo"),  # stay on loopback
        "NCCL_SOCKET_IFNAME": os.environ.get("NCCL_SOCKET_IFNAME", "lo"),
        "ENCDEC_TEST_WRITES": str(writes),
    }


def train_command(config_path: Path, run_dir: Path, device: str = "cpu") -> list[str]:
    """torchrun's command for a training run: 2 CPU processes, or one per GPU on `cuda`."""
    processes = torch.cuda.device_count() if device == "cuda" else 2
    options = ("--out", run_dir, "--device", device, "--quiet")
    return torchrun("encdec", "train", "--config", config_path, *options, processes=processes)


def write_config(folder: Path, raw_config: dict = RECIPE) -> Path:
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(raw_config), encoding="utf-8")
    return path


def records(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, one_torch_thread) -> Path:
    run_dir = tmp_path_factory.mktemp("one_process")
    train(from_dict(RECIPE), run_dir, quiet=True, device="cpu")
    return run_dir


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory) -> Path:
    """A run of RECIPE by 2 processes; the folder holds run/ and the writes-rank*.txt notes."""
    folder = tmp_path_factory.mktemp("two_processes")
    command = train_command(write_config(folder), folder / "run")
    done = subprocess.run(
        command, env=environment(folder), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return folder


def test_two_processes_follow_the_loss_trajectory_of_one(one_process, two_processes):
    single, double = records(one_process), records(two_processes / "run")
    assert [r["epoch"] for r in double] == list(range(1, EPOCHS + 1))
    for alone, together in zip(single, double):
        for key in ("train_loss", "valid_loss", "valid_teacher_forced_loss"):
            assert together[key] == pytest.approx(alone[key], rel=1e-4), key
    weights_alone = load_checkpoint(one_process / "last.pt")["model"]
    weights_together = load_checkpoint(two_processes / "run" / "last.pt")["model"]
    for name, tensor in weights_alone.items():
        torch.testing.assert_close(weights_together[name], tensor, atol=1e-4, rtol=1e-4)


def test_two_processes_on_a_prepared_folder_follow_one_process_on_the_text(tmp_path, one_process):
    prepare(from_dict(RECIPE).data, tmp_path / "prepared")
    command = [*train_command(write_config(tmp_path), tmp_path / "run"), "--prepared"]
    done = subprocess.run(
        [*command, str(tmp_path / "prepared")],
        env=environment(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for alone, together in zip(records(one_process), records(tmp_path / "run"), strict=True):
        for key in ("train_loss", "valid_loss"):
            assert together[key] == pytest.approx(alone[key], rel=1e-4), key


def test_both_processes_hold_identical_weights_after_every_epoch(two_processes):
    fingerprints = [record["parameters_sha256"] for record in records(two_processes / "run")]
    assert len(fingerprints) == EPOCHS and len(set(fingerprints)) == EPOCHS  # weights moved
    saved = load_checkpoint(two_processes / "run" / "last.pt")["model"]
    assert fingerprints[-1] == weights_sha256(saved)  # rank 0 saved what both agreed on


def test_only_rank_0_writes_checkpoints_and_logs(two_processes):
    assert not (two_processes / "writes-rank1.txt").exists()
    written = (two_processes / "writes-rank0.txt").read_text(encoding="utf-8").split()
    assert set(written) == {"last.pt", "best.pt"}
    run_dir = two_processes / "run"
    event_files = {"tensorboard"} if importlib.util.find_spec("tensorboard") else set()
    assert {p.name for p in run_dir.iterdir()} == {
        "best.pt",
        "last.pt",
        "config.yaml",
        "metrics.jsonl",
        "train.log",
        *event_files,
    }
    log = (run_dir / "train.log").read_text(encoding="utf-8")
    assert log.count(f"epoch  1/{EPOCHS}") == 1 and log.count("test (best checkpoint)") == 1
    assert "processes: 2 (gloo), one per cpu" in log


def test_distributed_run_resumes_after_sigterm_to_the_same_weights(tmp_path, two_processes):
    run_dir = tmp_path / "run"
    command = train_command(write_config(tmp_path), run_dir)
    process = subprocess.Popen(
        command, env=environment(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 180
    while not (run_dir / "last.pt").is_file() or load_checkpoint(run_dir / "last.pt")["step"] < 3:
        assert process.poll() is None, process.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint in time"
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)  # torchrun passes it on to both processes
    process.communicate(timeout=120)
    stopped = load_checkpoint(run_dir / "last.pt")
    assert not stopped["finished"] and len(stopped["rng_by_rank"]) == 2
    resumed = subprocess.run(
        torchrun("encdec", "train", "--resume", run_dir, "--device", "cpu", "--quiet"),
        env=environment(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    final = load_checkpoint(run_dir / "last.pt")["model"]
    uninterrupted = load_checkpoint(two_processes / "run" / "last.pt")["model"]
    assert weights_sha256(final) == weights_sha256(uninterrupted)


def test_replicas_with_different_weights_are_caught(tmp_path):
    done = subprocess.run(
        torchrun("diverge"), env=environment(tmp_path), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    reports = [
        (tmp_path / f"diverge-rank{rank}.txt").read_text(encoding="utf-8").splitlines()
        for rank in (0, 1)
    ]
    assert reports[0][0].startswith("agree: ") and reports[0][0] == reports[1][0]
    for lines in reports:
        assert lines[1].startswith("error: after the nudge: the weights of rank(s) [1] differ")


@pytest.mark.parametrize("world_size", [1, 2, 3, 8])
def test_batch_shares_cover_every_example_once_with_equal_batch_counts(world_size):
    rng = random.Random(world_size)
    batches = [np.arange(start, start + rng.randint(1, 9)) for start in range(0, 400, 10)]
    shareable = splittable(batches, world_size)
    assert all(len(batch) >= world_size for batch in shareable)
    shares = [[shard(batch, rank, world_size) for batch in shareable] for rank in range(world_size)]
    seen = sorted(i for rank_shares in shares for share in rank_shares for i in share)
    assert seen == sorted(i for batch in batches for i in batch)  # each example once
    assert len({len(rank_shares) for rank_shares in shares}) == 1  # same number of steps
    assert all(len(share) for rank_shares in shares for share in rank_shares)  # none empty
    if world_size == 1:
        assert [batch.tolist() for batch in shareable] == [batch.tolist() for batch in batches]


def test_too_few_examples_for_the_processes_is_a_clear_error():
    with pytest.raises(EncdecError, match="2 training pairs cannot be shared by 3 processes"):
        splittable([np.array([0, 1])], 3)


def test_device_names_are_checked():
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cpu")
        with pytest.raises(EncdecError, match="has 0 CUDA device"):
            resolve_device("cuda:1")
    with pytest.raises(EncdecError, match="unknown device 'gpu0'"):
        resolve_device("gpu0")


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_on_the_cpu_is_a_clear_error(tmp_path, precision):
    config = from_dict({**RECIPE, "training": RECIPE["training"] | {"precision": precision}})
    with pytest.raises(EncdecError, match=f"training.precision {precision} .* use fp32"):
        train(config, tmp_path, quiet=True, device="cpu")


@needs_cuda
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_training_on_cuda_learns_in_every_precision(tmp_path, precision):
    settings = RECIPE["training"] | {"precision": precision, "epochs": 3}
    config = from_dict({**RECIPE, "training": settings})
    train(config, tmp_path, quiet=True, device="cuda")
    losses = [record["train_loss"] for record in records(tmp_path)]
    assert losses[-1] < losses[0]
    state = load_checkpoint(tmp_path / "last.pt")
    assert (state["scaler"] is not None) == (precision == "fp16")
    assert all(tensor.device.type == "cpu" for tensor in state["model"].values())


@needs_cuda
@pytest.mark.parametrize("beam_size", [1, 5])
def test_greedy_and_beam_translations_on_cuda_match_the_cpu(demo_checkpoint, beam_size):
    from encdec.translator import Translator

    sentences = ["good morning", "thank you very much", "see you tomorrow", "i am hungry."]
    on_cpu = Translator.load(demo_checkpoint, device="cpu").translations(sentences, beam=beam_size)
    on_gpu = Translator.load(demo_checkpoint, device="cuda").translations(sentences, beam=beam_size)
    for (cpu_best, *_), (gpu_best, *_) in zip(on_cpu, on_gpu, strict=True):
        assert gpu_best.text == cpu_best.text
        # cuDNN's recurrent layers may multiply in TF32 on the GPU
        assert gpu_best.score == pytest.approx(cpu_best.score, rel=1e-2, abs=1e-2)


@needs_cuda
def test_torchrun_on_nccl_with_one_process_per_gpu_follows_one_process(tmp_path):
    # deterministic kernels: on a machine with one GPU (so one process) both are the same run;
    # batches of 16 (the smallest of 11) are shared by up to 11 GPUs as they are, without merging
    settings = RECIPE["training"] | {"deterministic": True, "batch_size": 16}
    raw_config = {**RECIPE, "training": settings}
    config_path = write_config(tmp_path, raw_config)
    alone = [sys.executable, "-m", "encdec", "train", "--config", config_path, "--device", "cuda"]
    for command in (
        [*alone, "--out", tmp_path / "alone", "--quiet"],
        train_command(config_path, tmp_path / "together", device="cuda"),
    ):
        done = subprocess.run(
            command, env=environment(tmp_path), capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr[-3000:]
    for single, shared in zip(
        records(tmp_path / "alone"), records(tmp_path / "together"), strict=True
    ):
        for key in ("train_loss", "valid_loss", "valid_teacher_forced_loss"):
            assert shared[key] == pytest.approx(single[key], rel=1e-3), key
    if torch.cuda.device_count() > 1:
        log = (tmp_path / "together" / "train.log").read_text(encoding="utf-8")
        assert f"processes: {torch.cuda.device_count()} (nccl), one per cuda" in log
