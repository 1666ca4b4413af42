"""Tests for encdec.checkpoint: atomic writes, round trips, clear errors on bad files, RNGs."""

import os
import random
import re
import shlex
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from encdec import checkpoint
from encdec.checkpoint import (
    FORMAT_VERSION,
    atomic_file,
    load_checkpoint,
    restore_rng_states,
    rng_states,
    save_checkpoint,
)
from encdec.errors import EncdecError


def make_state(seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    return {
        "model": {
            "embedding.weight": torch.randn(5, 3, generator=generator),
            "rnn.bias": torch.randn(4, generator=generator),
        },
        "config": {"model": {"cell": "lstm", "hidden_dim": 4}},
        "src_vocab": ["<unk>", "<pad>", "<sos>", "<eos>", "hund"],
        "trg_vocab": ["<unk>", "<pad>", "<sos>", "<eos>", "dog"],
        "step": 17,
    }


def names_file(path: Path) -> str:
    return re.escape(str(path))


def test_save_then_load_round_trips(tmp_path):
    path = tmp_path / "model.pt"
    state = make_state()
    save_checkpoint(state, path)
    loaded = load_checkpoint(path)
    assert loaded["format_version"] == FORMAT_VERSION
    assert loaded["model"].keys() == state["model"].keys()
    for name, tensor in state["model"].items():
        assert torch.equal(loaded["model"][name], tensor)
    for key in ("config", "src_vocab", "trg_vocab", "step"):
        assert loaded[key] == state[key]


def test_save_replaces_an_existing_checkpoint(tmp_path):
    path = tmp_path / "model.pt"
    save_checkpoint(make_state(0), path)
    save_checkpoint(make_state(1), path)
    loaded = load_checkpoint(path)
    assert torch.equal(loaded["model"]["rnn.bias"], make_state(1)["model"]["rnn.bias"])
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_crash_during_save_leaves_old_checkpoint_and_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "model.pt"
    save_checkpoint(make_state(0), path)
    before = path.read_bytes()

    def crashing_save(obj, file, *args, **kwargs):
        file.write(b"half a checkpoint")
        raise RuntimeError("disk full")

    monkeypatch.setattr(checkpoint.torch, "save", crashing_save)
    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint(make_state(1), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_crash_during_first_save_leaves_nothing(tmp_path, monkeypatch):
    def crashing_save(obj, file, *args, **kwargs):
        file.write(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint.torch, "save", crashing_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(make_state(), tmp_path / "model.pt")
    assert list(tmp_path.iterdir()) == []


def test_missing_file_is_an_error(tmp_path):
    path = tmp_path / "absent.pt"
    with pytest.raises(EncdecError, match=names_file(path)):
        load_checkpoint(path)


def test_truncated_file_is_an_error_naming_it(tmp_path):
    path = tmp_path / "model.pt"
    save_checkpoint(make_state(), path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(EncdecError, match=names_file(path)):
        load_checkpoint(path)


def test_empty_file_is_an_error_naming_it(tmp_path):
    path = tmp_path / "empty.pt"
    path.write_bytes(b"")
    with pytest.raises(EncdecError, match=names_file(path)):
        load_checkpoint(path)


def test_random_bytes_are_an_error_naming_the_file(tmp_path):
    path = tmp_path / "noise.pt"
    path.write_bytes(random.Random(0).randbytes(4096))
    with pytest.raises(EncdecError, match=names_file(path)):
        load_checkpoint(path)


def test_bare_tensor_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), path)
    with pytest.raises(EncdecError, match=names_file(path) + ".*not an encdec checkpoint"):
        load_checkpoint(path)


def test_dict_without_checkpoint_keys_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"weight": torch.zeros(3)}, path)
    with pytest.raises(EncdecError, match=names_file(path) + ".*not an encdec checkpoint"):
        load_checkpoint(path)


def test_checkpoint_missing_a_vocab_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "partial.pt"
    state = make_state()
    del state["trg_vocab"]
    torch.save({"format_version": FORMAT_VERSION, **state}, path)
    with pytest.raises(EncdecError, match=names_file(path)):
        load_checkpoint(path)


def test_newer_format_version_names_both_versions(tmp_path):
    path = tmp_path / "future.pt"
    torch.save({**make_state(), "format_version": 99}, path)
    with pytest.raises(EncdecError) as caught:
        load_checkpoint(path)
    message = str(caught.value)
    assert str(path) in message
    assert "99" in message
    assert f"version {FORMAT_VERSION}" in message


def test_newer_format_with_other_keys_still_reports_its_version(tmp_path):
    path = tmp_path / "future.pt"
    torch.save({"format_version": 99, "weights": {}}, path)
    with pytest.raises(EncdecError, match="99"):
        load_checkpoint(path)


@pytest.mark.skipif(os.name != "posix", reason="folders can be synced on POSIX only")
def test_save_syncs_the_file_then_its_folder(tmp_path, monkeypatch):
    synced_folders = []
    real_fsync = os.fsync

    def recording_fsync(descriptor: int) -> None:
        synced_folders.append(stat.S_ISDIR(os.fstat(descriptor).st_mode))
        real_fsync(descriptor)

    monkeypatch.setattr(checkpoint.os, "fsync", recording_fsync)
    save_checkpoint(make_state(), tmp_path / "model.pt")
    assert synced_folders == [False, True]


def draws(data_order: random.Random) -> tuple:
    return random.random(), np.random.rand(), torch.rand(3).tolist(), data_order.random()


def test_rng_states_saved_in_a_checkpoint_repeat_every_draw(tmp_path):
    data_order = random.Random(7)
    save_checkpoint({**make_state(), "rng": rng_states(data_order)}, tmp_path / "last.pt")
    expected = draws(data_order)
    draws(data_order)  # move every generator on
    restore_rng_states(load_checkpoint(tmp_path / "last.pt")["rng"], data_order)
    assert draws(data_order) == expected


def test_atomically_written_files_get_the_mode_of_any_new_file(tmp_path):
    umask = os.umask(0o022)
    try:
        with atomic_file(tmp_path / "out.txt") as file:
            file.write(b"text\n")
    finally:
        os.umask(umask)
    assert (tmp_path / "out.txt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "out.txt").read_bytes() == b"text\n"


@pytest.mark.parametrize("kept", [1, 10, 0.5])
def test_truncated_file_error_is_one_short_line(tmp_path, kept):
    path = tmp_path / "model.pt"
    save_checkpoint(make_state(), path)
    size = path.stat().st_size
    path.write_bytes(path.read_bytes()[: int(kept * size) if kept < 1 else kept])
    with pytest.raises(EncdecError) as error:
        load_checkpoint(path)
    message = str(error.value)
    assert "\n" not in message and len(message.replace(str(path), "")) < 250, message
    assert str(path) in message and "truncated or not a checkpoint" in message
    assert "If you are seeing this error" not in message  # PyTorch's advice, not the gist


def test_run_folder_means_its_best_pt(tmp_path):
    save_checkpoint(make_state(seed=1), tmp_path / "best.pt")
    save_checkpoint(make_state(seed=2), tmp_path / "last.pt")
    state = load_checkpoint(tmp_path)
    assert torch.equal(state["model"]["rnn.bias"], make_state(seed=1)["model"]["rnn.bias"])
    assert checkpoint.resolve_checkpoint(tmp_path) == tmp_path / "best.pt"


def test_folder_without_best_pt_is_an_error_naming_it(tmp_path):
    save_checkpoint(make_state(), tmp_path / "last.pt")
    with pytest.raises(EncdecError, match=f"{names_file(tmp_path)} is a folder without a best.pt"):
        load_checkpoint(tmp_path)


def test_averaging_run_folders_averages_their_best_pt(tmp_path):
    for seed in (1, 2):
        (tmp_path / f"run{seed}").mkdir()
        save_checkpoint(make_state(seed), tmp_path / f"run{seed}" / "best.pt")
    averaged = checkpoint.average_checkpoints([tmp_path / "run1", tmp_path / "run2"])
    expected = (make_state(1)["model"]["rnn.bias"] + make_state(2)["model"]["rnn.bias"]) / 2
    torch.testing.assert_close(averaged["model"]["rnn.bias"], expected)


def test_averaging_checkpoints_of_other_vocabularies_is_an_error_naming_the_file(tmp_path):
    other = make_state(seed=2)
    other["trg_vocab"] = [*other["trg_vocab"][:4], "cat"]
    save_checkpoint(make_state(seed=1), tmp_path / "dog.pt")
    save_checkpoint(other, tmp_path / "cat.pt")
    with pytest.raises(EncdecError, match="cat.pt has another trg vocab .*: cannot average"):
        checkpoint.average_checkpoints([tmp_path / "dog.pt", tmp_path / "cat.pt"])


class CreatesAFile:
    """Unpickled, this would call open(path, "w"): the file appearing means the pickle ran."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return open, (str(self.path), "w")


class RunsACommand:
    """Unpickled, this would run `touch path` in a shell."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.path))}",)


@pytest.fixture(params=[CreatesAFile, RunsACommand], ids=["creates a file", "runs a command"])
def malicious_run(request, tmp_path) -> tuple[Path, Path]:
    """A run folder whose best.pt and last.pt hold one object that runs code when unpickled;
    and the file that object would create."""
    marker, run_dir = tmp_path / "the pickle ran", tmp_path / "run"
    run_dir.mkdir()
    state, payload = {"format_version": FORMAT_VERSION, **make_state()}, request.param(marker)
    torch.save({**state, "note": payload}, run_dir / "best.pt")
    training_state = {"optimizer": {}, "rng_by_rank": [{}]}
    torch.save({**state, **training_state, "note": payload}, run_dir / "last.pt")
    return run_dir, marker


COMMANDS_THAT_LOAD = {
    "translate": ["translate", "{best}", "--input", "{text}"],
    "evaluate": ["evaluate", "{best}", "--split", "test"],
    "serve": ["serve", "{best}", "--host", "127.0.0.1", "--port", "0", "--device", "cpu"],
    "average": ["average", "{best}", "{best}", "--output", "{out}"],
    "train --resume": ["train", "--resume", "{run}", "--device", "cpu", "--quiet"],
}


@pytest.mark.parametrize("verb", COMMANDS_THAT_LOAD)
def test_a_checkpoint_whose_pickle_runs_code_is_refused_in_one_line_without_running_it(
    verb, malicious_run, tmp_path, capsys
):
    from encdec.cli import main

    run_dir, marker = malicious_run
    (tmp_path / "text.txt").write_text("hello\n", encoding="utf-8")
    paths = {"best": run_dir / "best.pt", "run": run_dir, "text": tmp_path / "text.txt"}
    paths["out"] = tmp_path / "averaged.pt"
    argv = [part.format(**paths) for part in COMMANDS_THAT_LOAD[verb]]
    assert main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error, error
    assert re.search(r"is refused: its pickle calls \S+(system|open)", error), error
    assert str(run_dir) in error
    assert not marker.exists()
    assert not paths["out"].exists()


def test_a_last_pt_holding_numpy_arrays_from_numpy_1_still_loads(tmp_path):
    # an older last.pt kept NumPy's generator state as an array; NumPy 1 named its rebuilder
    # numpy.core.multiarray._reconstruct, NumPy 2 numpy._core.multiarray._reconstruct
    path = tmp_path / "last.pt"
    state = {"format_version": FORMAT_VERSION, **make_state(), "numpy": np.random.get_state()}
    torch.save(state, path, _use_new_zipfile_serialization=False)  # the pickle is plain text
    path.write_bytes(path.read_bytes().replace(b"numpy._core.", b"numpy.core."))
    assert b"numpy.core.multiarray" in path.read_bytes()
    loaded = load_checkpoint(path)
    assert np.array_equal(loaded["numpy"][1], state["numpy"][1])


def test_rng_states_hold_only_tensors_and_plain_python_types(tmp_path):
    path = tmp_path / "rng.pt"
    torch.save(rng_states(random.Random(7)), path)
    assert torch.serialization.get_unsafe_globals_in_checkpoint(path) == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_checkpoint_of_gpu_tensors_holds_cpu_tensors(tmp_path):
    state = make_state()
    state["model"] = {name: tensor.cuda() for name, tensor in state["model"].items()}
    state["optimizer"] = {"state": {0: {"exp_avg": torch.ones(3, device="cuda")}}}
    save_checkpoint(state, tmp_path / "model.pt")
    loaded = torch.load(tmp_path / "model.pt", weights_only=True)  # no map_location
    tensors = [*loaded["model"].values(), loaded["optimizer"]["state"][0]["exp_avg"]]
    assert {tensor.device.type for tensor in tensors} == {"cpu"}


def test_saving_keeps_tuples_and_lists_as_they_are(tmp_path):
    state = {**make_state(), "python": (3, (1, 2), None), "batches": [[0, 1], [2]]}
    save_checkpoint(state, tmp_path / "model.pt")
    loaded = load_checkpoint(tmp_path / "model.pt")
    assert loaded["python"] == (3, (1, 2), None) and loaded["batches"] == [[0, 1], [2]]


def test_half_written_checkpoints_of_a_killed_run_are_removed(tmp_path):
    save_checkpoint(make_state(), tmp_path / "last.pt")
    half = [tmp_path / ".last.pt.k2j4x9a1.tmp", tmp_path / ".best.pt.0fz81q2b.tmp"]
    for path in half:
        path.write_bytes(b"half a checkpoint")
    (tmp_path / "notes.tmp").write_text("not encdec's", encoding="utf-8")
    assert checkpoint.remove_half_written(tmp_path) == sorted(half)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "notes.tmp"]
