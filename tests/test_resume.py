"""Tests for never losing a run: resume after a kill or a signal, NaN losses, unwritable folders."""

import contextlib
import json
import logging
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml

from encdec import steps, training
from encdec.checkpoint import load_checkpoint, save_checkpoint
from encdec.cli import main
from encdec.config import from_dict
from encdec.errors import EncdecError
from encdec.model import build_model, count_parameters
from encdec.run_folder import check_free_space
from encdec.training import train

pytestmark = pytest.mark.usefixtures("one_torch_thread")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
RECIPES = sorted((Path(__file__).resolve().parent.parent / "configs").glob("*.yaml"))

EPOCHS, BATCHES_PER_EPOCH = 3, 14  # 107 toy training pairs in batches of 8
# dropout and teacher forcing below 1 make the run draw from the torch and Python RNGs
RECIPE = {
    "data": {"dataset": "toy", "src_lang": "en", "trg_lang": "es", "min_freq": 1},
    "model": {"embedding_dim": 16, "hidden_dim": 32, "num_layers": 1, "dropout": 0.2},
    "training": {
        "epochs": EPOCHS,
        "batch_size": 8,
        "lr": 0.003,
        "teacher_forcing_ratio": 0.5,
        "lr_schedule": "warmup_decay",
        "warmup_steps": 10,
        "save_every_steps": 1,
    },
    "decoding": {"max_len": 8},
}


def recipe(**training_settings) -> dict:
    return {**RECIPE, "training": RECIPE["training"] | training_settings}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, one_torch_thread) -> Path:
    """The run directory of the recipe trained in one go, to compare resumed runs with."""
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    train(from_dict(RECIPE), run_dir, quiet=True, device="cpu")
    return run_dir


def assert_same_tensors(expected: object, actual: object, where: str = "") -> None:
    """Every tensor in two nested checkpoint structures is bit for bit equal."""
    if isinstance(expected, torch.Tensor):
        assert torch.equal(expected, actual), f"{where} differs"
    elif isinstance(expected, dict):
        assert expected.keys() == actual.keys(), where
        for key in expected:
            assert_same_tensors(expected[key], actual[key], f"{where}.{key}")
    elif isinstance(expected, list | tuple):
        for index, (left, right) in enumerate(zip(expected, actual, strict=True)):
            assert_same_tensors(left, right, f"{where}[{index}]")


def assert_same_run(expected_dir: Path, actual_dir: Path) -> None:
    """Same weights in best.pt and last.pt, same optimizer state in last.pt; same losses logged."""
    for name in ("best.pt", "last.pt"):
        expected, actual = load_checkpoint(expected_dir / name), load_checkpoint(actual_dir / name)
        assert expected["epoch"] == actual["epoch"]
        assert_same_tensors(expected["model"], actual["model"], f"{name} model")
    expected, actual = (
        load_checkpoint(expected_dir / "last.pt"),
        load_checkpoint(actual_dir / "last.pt"),
    )
    assert expected["step"] == actual["step"]
    assert_same_tensors(expected["optimizer"], actual["optimizer"], "last.pt optimizer")
    assert expected["updates"] == actual["updates"]
    keys = ("epoch", "update", "train_loss", "valid_loss", "valid_bleu", "lr")
    assert [[record[key] for key in keys] for record in read_records(actual_dir)] == [
        [record[key] for key in keys] for record in read_records(expected_dir)
    ]


def read_records(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def encdec_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "encdec", *map(str, args)]


def start_training(
    tmp_path: Path, raw_config: dict, run_dir: Path, device: str = "cpu"
) -> subprocess.Popen:
    """`encdec train` in a child process on one thread, like the in-process reference run."""
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(raw_config), encoding="utf-8")
    options = ("--out", run_dir, "--device", device, "--quiet")
    command = encdec_command("train", "--config", config_path, *options)
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command, env=environment, stderr=subprocess.PIPE, text=True)


def resume(run_dir: Path, device: str = "cpu") -> subprocess.CompletedProcess:
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = encdec_command("train", "--resume", run_dir, "--device", device, "--quiet")
    return subprocess.run(command, env=environment, capture_output=True, text=True, timeout=300)


def wait_until(condition, process: subprocess.Popen, timeout: float = 120.0) -> None:
    """Poll `condition` until it holds; fail if the child ends or time runs out first."""
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"training ended (code {process.returncode}) before the test could stop it")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail("training made no progress in time")
        time.sleep(0.01)


def stop_with_sigterm(process: subprocess.Popen, run_dir: Path) -> str:
    """SIGTERM a training child once its first epoch has begun; its stderr once it has ended."""
    log_path = run_dir / "train.log"
    wait_until(
        lambda: log_path.is_file() and "batches per epoch" in log_path.read_text("utf-8"),
        process,
    )
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr
    return stderr


def saved_epoch(run_dir: Path) -> int:
    """The epoch last.pt is in; 0 before the first save."""
    try:
        return load_checkpoint(run_dir / "last.pt")["epoch"]
    except EncdecError:
        return 0


def test_killed_run_resumes_to_the_same_weights_as_an_uninterrupted_one(tmp_path, uninterrupted):
    run_dir = tmp_path / "run"
    process = start_training(tmp_path, RECIPE, run_dir)
    wait_until(lambda: saved_epoch(run_dir) >= 2, process)
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=60)
    killed_at = load_checkpoint(run_dir / "last.pt")
    assert killed_at["epoch"] >= 2 and not killed_at["finished"]
    resumed = resume(run_dir)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(uninterrupted, run_dir)
    assert "resuming from last.pt: epoch 2" in (run_dir / "train.log").read_text(encoding="utf-8")


def test_sigterm_saves_last_pt_says_how_to_resume_and_exits_143(tmp_path, uninterrupted):
    run_dir = tmp_path / "run"
    process = start_training(tmp_path, recipe(save_every_steps=None), run_dir)
    stderr = stop_with_sigterm(process, run_dir)
    assert f"encdec train --resume {run_dir}" in stderr
    stopped_at = load_checkpoint(run_dir / "last.pt")
    assert stopped_at["epoch"] == 1 and not stopped_at["finished"]
    resumed = resume(run_dir)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(uninterrupted, run_dir)


def test_deterministic_kernels_are_on_while_training_and_put_back_after(tmp_path, monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    real_losses, modes = steps.batch_losses, set()

    def noting_the_mode(*args, **kwargs):
        cudnn = torch.backends.cudnn
        modes.add(
            (
                torch.are_deterministic_algorithms_enabled(),
                cudnn.deterministic,
                cudnn.benchmark,
                os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
            )
        )
        return real_losses(*args, **kwargs)

    monkeypatch.setattr(steps, "batch_losses", noting_the_mode)
    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic)
    config = from_dict(recipe(epochs=1, max_steps=2, deterministic=True))
    train(config, tmp_path, quiet=True, device="cpu")
    assert modes == {(True, True, False, ":4096:8")}
    assert (
        torch.are_deterministic_algorithms_enabled(),
        torch.backends.cudnn.deterministic,
    ) == before


def test_a_deterministic_run_resumed_after_sigterm_has_the_uninterrupted_weights(
    tmp_path, uninterrupted
):
    # the reference ran without deterministic mode: on the CPU it changes no bit
    run_dir = tmp_path / "run"
    process = start_training(tmp_path, recipe(deterministic=True, save_every_steps=None), run_dir)
    stop_with_sigterm(process, run_dir)
    resumed = resume(run_dir)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(uninterrupted, run_dir)


@needs_cuda
@pytest.mark.parametrize("recipe_path", RECIPES, ids=lambda path: path.stem)
def test_deterministic_cuda_recipe_resumed_after_sigterm_repeats_an_uninterrupted_run(
    tmp_path, recipe_path, multi30k_dir
):
    raw = yaml.safe_load(recipe_path.read_text(encoding="utf-8"))
    raw["data"]["data_dir"] = str(multi30k_dir)
    raw["training"] |= {"epochs": 2, "max_steps": 4, "deterministic": True}
    whole_dir, resumed_dir = tmp_path / "whole", tmp_path / "resumed"
    whole = start_training(tmp_path, raw, whole_dir, device="cuda")
    _, stderr = whole.communicate(timeout=600)
    assert whole.returncode == 0, stderr
    stop_with_sigterm(start_training(tmp_path, raw, resumed_dir, device="cuda"), resumed_dir)
    resumed = resume(resumed_dir, device="cuda")
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(whole_dir, resumed_dir)


def test_deterministic_must_be_true_or_false():
    with pytest.raises(EncdecError, match="'training.deterministic' must be bool"):
        from_dict(recipe(deterministic="yes"))


def crash_at_save(monkeypatch, name: str, epoch: int, validated: bool, before: bool) -> None:
    """Make saving `name` at this point of the run die, just before or just after the write."""
    real_save = training.save_checkpoint

    def save_then_crash(state: dict, path: Path) -> None:
        hit = Path(path).name == name and (state["epoch"], state["validated"]) == (
            epoch,
            validated,
        )
        if not (hit and before):
            real_save(state, path)
        if hit:
            raise KeyboardInterrupt("simulated crash")

    monkeypatch.setattr(training, "save_checkpoint", save_then_crash)


def test_resume_at_an_epoch_boundary_matches_uninterrupted(tmp_path, monkeypatch, uninterrupted):
    crash_at_save(monkeypatch, "last.pt", epoch=1, validated=True, before=False)
    with pytest.raises(KeyboardInterrupt, match="simulated crash"):
        train(from_dict(RECIPE), tmp_path, quiet=True, device="cpu")
    monkeypatch.undo()
    assert [record["epoch"] for record in read_records(tmp_path)] == [1]
    train(None, tmp_path, quiet=True, device="cpu", resume=True)
    assert_same_run(uninterrupted, tmp_path)


def test_crash_before_the_epoch_end_save_logs_each_epoch_once(tmp_path, monkeypatch, uninterrupted):
    # metrics.jsonl has epoch 2's line, last.pt does not have epoch 2's end: it is done again
    crash_at_save(monkeypatch, "last.pt", epoch=2, validated=True, before=True)
    with pytest.raises(KeyboardInterrupt):
        train(from_dict(RECIPE), tmp_path, quiet=True, device="cpu")
    monkeypatch.undo()
    assert [record["epoch"] for record in read_records(tmp_path)] == [1, 2]
    train(None, tmp_path, quiet=True, device="cpu", resume=True)
    assert [record["epoch"] for record in read_records(tmp_path)] == [1, 2, 3]
    assert_same_run(uninterrupted, tmp_path)


def test_resuming_a_finished_run_only_tests_it_and_accepts_moved_data(tmp_path, uninterrupted):
    shutil.copy(uninterrupted / "last.pt", tmp_path / "last.pt")
    shutil.copy(uninterrupted / "best.pt", tmp_path / "best.pt")
    moved = from_dict(RECIPE)
    moved.data.data_dir = str(tmp_path / "data moved here")
    scores = train(moved, tmp_path, quiet=True, device="cpu", resume=True)
    assert "test_bleu" in scores
    assert not (tmp_path / "metrics.jsonl").exists()  # no epoch was trained again


def test_a_finished_run_extended_with_epochs_equals_one_trained_that_long(tmp_path, uninterrupted):
    train(from_dict(recipe(epochs=EPOCHS - 1)), tmp_path, quiet=True, device="cpu")
    extend = ["--epochs", str(EPOCHS), "--device", "cpu", "--quiet"]
    assert main(["train", "--resume", str(tmp_path), *extend]) == 0
    assert_same_run(uninterrupted, tmp_path)
    assert load_checkpoint(tmp_path / "last.pt")["config"]["training"]["epochs"] == EPOCHS


def test_a_last_pt_from_before_torchrun_support_still_resumes(tmp_path, uninterrupted):
    # such a last.pt kept one process's generators under "rng", not a list under "rng_by_rank"
    train(from_dict(recipe(epochs=EPOCHS - 1)), tmp_path, quiet=True, device="cpu")
    state = load_checkpoint(tmp_path / "last.pt")
    state["rng"] = state.pop("rng_by_rank")[0]
    save_checkpoint(state, tmp_path / "last.pt")
    train(None, tmp_path, quiet=True, device="cpu", resume=True, epochs=EPOCHS)
    assert_same_run(uninterrupted, tmp_path)


def test_a_last_pt_without_the_teacher_forcing_generator_still_resumes(tmp_path):
    # an older last.pt drew its coins from Python's random: the coins start again from the seed
    train(from_dict(recipe(epochs=EPOCHS - 1)), tmp_path, quiet=True, device="cpu")
    state = load_checkpoint(tmp_path / "last.pt")
    del state["teacher_forcing_coins"]
    save_checkpoint(state, tmp_path / "last.pt")
    train(None, tmp_path, quiet=True, device="cpu", resume=True, epochs=EPOCHS)
    assert [record["epoch"] for record in read_records(tmp_path)] == [1, 2, 3]
    log = (tmp_path / "train.log").read_text(encoding="utf-8")
    assert "last.pt has no teacher-forcing generator" in log


def test_an_early_stopped_run_goes_on_when_resumed_with_more_patience(tmp_path):
    # so small a learning rate never changes a greedy translation, so valid BLEU never improves:
    # patience 1 stops after epoch 2
    stalling = {"lr": 1e-9, "select_by": "bleu", "save_every_steps": None}
    train(from_dict(recipe(**stalling, patience=1)), tmp_path, quiet=True, device="cpu")
    assert [record["epoch"] for record in read_records(tmp_path)] == [1, 2]
    train(
        from_dict(recipe(**stalling, patience=5)), tmp_path, quiet=True, device="cpu", resume=True
    )
    assert [record["epoch"] for record in read_records(tmp_path)] == [1, 2, 3]


def test_resume_with_fewer_epochs_than_trained_is_refused(tmp_path, uninterrupted):
    shutil.copy(uninterrupted / "last.pt", tmp_path / "last.pt")
    with pytest.raises(EncdecError, match="training.epochs 2: last.pt has already trained 3"):
        train(None, tmp_path, quiet=True, device="cpu", resume=True, epochs=2)


def test_resume_refuses_a_changed_config_naming_the_keys(tmp_path, uninterrupted):
    shutil.copy(uninterrupted / "last.pt", tmp_path / "last.pt")
    changed = from_dict(recipe(lr=0.01))
    with pytest.raises(EncdecError, match=r"training\.lr \(0\.003 in last\.pt, 0\.01 given\)"):
        train(changed, tmp_path, quiet=True, device="cpu", resume=True)


def test_resume_refuses_data_that_gives_other_vocabularies(tmp_path, uninterrupted):
    state = load_checkpoint(uninterrupted / "last.pt")
    state["src_vocab"] = [*state["src_vocab"][:-1], "a word the data no longer has"]
    save_checkpoint(state, tmp_path / "last.pt")
    with pytest.raises(EncdecError, match="other vocabularies"):
        train(None, tmp_path, quiet=True, device="cpu", resume=True)


def test_resume_without_last_pt_is_an_error(tmp_path):
    with pytest.raises(EncdecError, match="cannot resume: .*last.pt does not exist"):
        train(None, tmp_path, quiet=True, device="cpu", resume=True)


def test_resume_with_set_but_no_config_is_refused(tmp_path, capsys):
    argv = ["train", "--resume", str(tmp_path), "--set", "training.lr=0.1"]
    assert main(argv) == 2
    assert "--resume goes on with the config saved in last.pt" in capsys.readouterr().err


def test_nan_loss_stops_naming_epoch_and_step_and_keeps_the_last_good_checkpoint(
    tmp_path, monkeypatch
):
    real_losses, training_batches = steps.batch_losses, []

    def poisoned_at_epoch_2_step_3(model, *args, **kwargs):
        loss_sum, smoothed_sum = real_losses(model, *args, **kwargs)
        training_batches.append(model.training)
        if sum(training_batches) == BATCHES_PER_EPOCH + 3 and model.training:
            smoothed_sum = smoothed_sum * float("nan")
        return loss_sum, smoothed_sum

    monkeypatch.setattr(steps, "batch_losses", poisoned_at_epoch_2_step_3)
    with pytest.raises(EncdecError, match="training stopped at epoch 2, step 3: the loss is nan"):
        train(from_dict(RECIPE), tmp_path, quiet=True, device="cpu")
    last = load_checkpoint(tmp_path / "last.pt")
    assert (last["epoch"], last["step"]) == (2, 2)
    assert all(torch.isfinite(weights).all() for weights in last["model"].values())


def test_unwritable_run_directory_fails_before_training(tmp_path, monkeypatch, capsys):
    def no_training(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(training, "build_corpus", no_training)
    blocker = tmp_path / "a file"
    blocker.write_text("not a folder", encoding="utf-8")
    run_dir = blocker / "run"
    with pytest.raises(EncdecError, match=f"run directory {run_dir} cannot be written"):
        train(from_dict(RECIPE), run_dir, quiet=True, device="cpu")
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(RECIPE), encoding="utf-8")
    assert main(["train", "--config", str(config_path), "--out", str(run_dir)]) == 2
    assert "cannot be written" in capsys.readouterr().err


def free_disk_space(monkeypatch, free_bytes: int) -> None:
    """Make every folder report `free_bytes` free."""
    usage = SimpleNamespace(total=10 * free_bytes + 1, used=0, free=free_bytes)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage)


def test_too_little_disk_space_fails_before_training_naming_folder_and_sizes(tmp_path, monkeypatch):
    free_disk_space(monkeypatch, 100_000)
    run_dir = tmp_path / "run"
    with pytest.raises(
        EncdecError, match=rf"{re.escape(str(run_dir))} has 0.1 MB free but .* need about [\d.]+ MB"
    ):
        train(from_dict(recipe(epochs=1)), run_dir, quiet=True, device="cpu")
    assert not (run_dir / "last.pt").exists()


def test_free_space_needed_is_three_checkpoints_of_weights_and_adam_moments(tmp_path, monkeypatch):
    model = build_model(from_dict(RECIPE).model, 20, 30)
    needed = 3 * count_parameters(model) * 4 * 3  # 3 checkpoints, 3 float32 tensors a weight
    free_disk_space(monkeypatch, needed)
    check_free_space(tmp_path, model)
    free_disk_space(monkeypatch, needed - 1)
    with pytest.raises(EncdecError, match=re.escape(str(tmp_path))):
        check_free_space(tmp_path, model)


def test_save_every_steps_must_be_positive():
    with pytest.raises(EncdecError, match="training.save_every_steps"):
        from_dict(recipe(save_every_steps=0))


def test_resume_with_fewer_epochs_than_the_one_last_pt_is_partway_through_is_refused(
    tmp_path, monkeypatch
):
    crash_at_save(monkeypatch, "last.pt", epoch=2, validated=False, before=False)
    with pytest.raises(KeyboardInterrupt, match="simulated crash"):
        train(from_dict(RECIPE), tmp_path, quiet=True, device="cpu")
    monkeypatch.undo()
    saved = (tmp_path / "last.pt").read_bytes()
    with pytest.raises(
        EncdecError,
        match=r"training.epochs 1: last.pt is partway through epoch 2 in .*; give --epochs 2 or",
    ):
        train(None, tmp_path, quiet=True, device="cpu", resume=True, epochs=1)
    assert (tmp_path / "last.pt").read_bytes() == saved  # nothing was trained
    assert [record["epoch"] for record in read_records(tmp_path)] == [1]


def open_files_named(name: str) -> list[str]:
    """The files this process holds open whose name is `name` (Linux's /proc)."""
    folder = Path("/proc/self/fd")
    targets = []
    for descriptor in folder.iterdir():
        with contextlib.suppress(OSError):
            targets.append(os.readlink(descriptor))
    return [target for target in targets if Path(target).name == name]


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs Linux's /proc")
def test_train_log_is_closed_and_detached_when_train_returns(tmp_path):
    logger = logging.getLogger("encdec")
    handlers_before = logger.handlers[:]
    for name in ("first", "second"):
        train(from_dict(recipe(epochs=1, max_steps=2)), tmp_path / name, quiet=True, device="cpu")
    logger.warning("a line logged after training, by a server say")
    for name in ("first", "second"):
        log_text = (tmp_path / name / "train.log").read_text(encoding="utf-8")
        assert "run directory" in log_text
        assert "after training" not in log_text
    assert open_files_named("train.log") == []
    assert logger.handlers == handlers_before


def test_a_last_pt_with_numpy_state_as_an_array_still_resumes(tmp_path, uninterrupted):
    # before checkpoints were read with weights_only=True, last.pt held NumPy's generator state
    # as np.random.get_state() gives it: a tuple with an array
    train(from_dict(recipe(epochs=EPOCHS - 1)), tmp_path, quiet=True, device="cpu")
    state = load_checkpoint(tmp_path / "last.pt")
    for generators in state["rng_by_rank"]:
        numpy_state = generators["numpy"]
        key = np.array(numpy_state["state"]["key"], dtype=np.uint32)
        position, has_gauss = numpy_state["state"]["pos"], numpy_state["has_gauss"]
        generators["numpy"] = ("MT19937", key, position, has_gauss, numpy_state["gauss"])
    save_checkpoint(state, tmp_path / "last.pt")
    train(None, tmp_path, quiet=True, device="cpu", resume=True, epochs=EPOCHS)
    assert_same_run(uninterrupted, tmp_path)


def test_training_draws_nothing_from_pythons_or_numpys_global_generators(tmp_path):
    # the teacher-forcing coins come from the run's own torch.Generator (docs/reliability.md)
    config = from_dict(recipe(epochs=1, max_steps=3))
    random.seed(config.training.seed)
    np.random.seed(config.training.seed)

    def states() -> tuple:
        _, key, position, *_ = np.random.get_state()
        return random.getstate(), key.tolist(), position

    seeded = states()
    train(config, tmp_path, quiet=True, device="cpu")
    assert states() == seeded


# validation every 5 updates with the plateau schedule, a budget of 33 updates (epoch 3, step 5)
BY_UPDATES = {
    **RECIPE,
    "training": {key: value for key, value in RECIPE["training"].items() if key != "warmup_steps"}
    | {"lr_schedule": "plateau", "lr_patience": 0, "validate_every_updates": 5, "max_updates": 33},
}


@pytest.fixture(scope="module")
def uninterrupted_by_updates(tmp_path_factory, one_torch_thread) -> Path:
    """BY_UPDATES trained in one go."""
    run_dir = tmp_path_factory.mktemp("uninterrupted_by_updates")
    train(from_dict(BY_UPDATES), run_dir, quiet=True, device="cpu")
    return run_dir


def crash_at_update(monkeypatch, update: int, how: str) -> None:
    """Stop the run at `update`: a crash before or after its last.pt is written, or SIGTERM."""
    if how == "a stop signal":
        real_step = training._train_step

        def signalled_during_the_step(run, indices, batch, stop):
            if run.progress.updates == update - 1:
                stop.handle(signal.SIGTERM, None)
            return real_step(run, indices, batch, stop)

        monkeypatch.setattr(training, "_train_step", signalled_during_the_step)
        return
    real_save = training.save_checkpoint

    def save_then_crash(state: dict, path: Path) -> None:
        hit = Path(path).name == "last.pt" and state["updates"] == update
        if not (hit and how == "a crash before the save"):
            real_save(state, path)
        if hit:
            raise KeyboardInterrupt("simulated crash")

    monkeypatch.setattr(training, "save_checkpoint", save_then_crash)


@pytest.mark.parametrize(
    "how", ["a crash before the save", "a crash after the save", "a stop signal"]
)
def test_a_run_stopped_at_a_validation_by_updates_resumes_to_the_uninterrupted_weights(
    tmp_path, monkeypatch, uninterrupted_by_updates, how
):
    crash_at_update(monkeypatch, 20, how)  # update 20 validates, mid-way through epoch 2
    with pytest.raises(KeyboardInterrupt):
        train(from_dict(BY_UPDATES), tmp_path, quiet=True, device="cpu")
    monkeypatch.undo()
    train(None, tmp_path, quiet=True, device="cpu", resume=True)
    assert_same_run(uninterrupted_by_updates, tmp_path)
    records = read_records(tmp_path)
    assert [record["update"] for record in records] == [5, 10, 14, 15, 20, 25, 28, 30, 33]
    assert [record["epoch_end"] for record in records] == [0, 0, 1, 0, 0, 0, 1, 0, 1]


def test_a_run_ended_by_max_updates_is_extended_by_resuming_with_more(tmp_path):
    train(from_dict(recipe(max_updates=20)), tmp_path, quiet=True, device="cpu")
    last = load_checkpoint(tmp_path / "last.pt")
    assert (last["epoch"], last["step"], last["updates"], last["finished"]) == (2, 6, 20, True)
    extend = ["--max-updates", "30", "--device", "cpu", "--quiet"]
    assert main(["train", "--resume", str(tmp_path), *extend]) == 0
    assert [record["update"] for record in read_records(tmp_path)] == [14, 20, 30]
    with pytest.raises(EncdecError, match="already made 30 updates .*give --max-updates 30"):
        train(None, tmp_path, quiet=True, device="cpu", resume=True, max_updates=25)


def test_resuming_removes_the_half_written_checkpoints_of_a_killed_run(tmp_path, uninterrupted):
    shutil.copy(uninterrupted / "last.pt", tmp_path / "last.pt")
    shutil.copy(uninterrupted / "best.pt", tmp_path / "best.pt")
    (tmp_path / ".last.pt.k2j4x9a1.tmp").write_bytes(b"half of last.pt, killed mid-write")
    train(None, tmp_path, quiet=True, device="cpu", resume=True)
    assert not list(tmp_path.glob(".*.tmp"))
