"""Tests for progress reporting: bars only on a terminal and never when quiet; TensorBoard."""

import io
import json
import subprocess
import sys
import types
from pathlib import Path

import pytest
import yaml

from encdec.cli import main
from encdec.config import Config, from_dict
from encdec.progress import progress_bar, silence_bars
from encdec.reporting import TENSORBOARD_SCALARS
from encdec.training import train

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SENTENCES = ["good morning", "let's go", "thank you very much"]
REFERENCES = ["buenos días", "vamos", "muchas gracias"]


def tiny_config(epochs: int = 2) -> Config:
    """A tiny model on the demo's toy phrases: two batches an epoch, a second a run."""
    return from_dict(
        {
            "data": {"dataset": "toy", "src_lang": "en", "trg_lang": "es", "min_freq": 1},
            "model": {"embedding_dim": 8, "hidden_dim": 16, "num_layers": 1, "dropout": 0.0},
            "training": {"epochs": epochs, "batch_size": 16, "max_steps": 2},
            "decoding": {"max_len": 5},
        }
    )


class Terminal(io.StringIO):
    """A stderr that says it is a terminal, so that tqdm draws its bars there."""

    def isatty(self) -> bool:
        return True


def fake_terminal(monkeypatch) -> Terminal:
    """sys.stderr as a Terminal; called in the test, as pytest resets sys.stderr after fixtures."""
    stderr = Terminal()
    monkeypatch.setattr(sys, "stderr", stderr)
    return stderr


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    out_dir = tmp_path_factory.mktemp("tiny_run")
    train(tiny_config(epochs=1), out_dir, quiet=True)
    return out_dir / "best.pt"


@pytest.fixture
def sentence_files(tmp_path) -> tuple[Path, Path]:
    """SENTENCES and REFERENCES, one a line."""
    source, reference = tmp_path / "input.en", tmp_path / "reference.es"
    source.write_text("".join(line + "\n" for line in SENTENCES), encoding="utf-8")
    reference.write_text("".join(line + "\n" for line in REFERENCES), encoding="utf-8")
    return source, reference


def test_progress_bar_draws_on_a_terminal(monkeypatch):
    terminal = fake_terminal(monkeypatch)
    for _ in progress_bar(range(3), desc="counting"):
        pass
    assert "counting" in terminal.getvalue()


def test_progress_bar_is_off_when_stderr_is_not_a_terminal(capsys):
    for _ in progress_bar(range(3), desc="counting"):
        pass
    assert capsys.readouterr().err == ""


def test_silence_bars_hides_bars_on_a_terminal_until_the_block_ends(monkeypatch):
    terminal = fake_terminal(monkeypatch)
    with silence_bars(), silence_bars(False):  # an inner False does not undo an outer silence
        for _ in progress_bar(range(3), desc="hidden"):
            pass
    assert terminal.getvalue() == ""
    for _ in progress_bar(range(3), desc="shown"):
        pass
    assert "shown" in terminal.getvalue()


def test_training_draws_epoch_and_batch_bars_on_a_terminal(tmp_path, monkeypatch):
    terminal = fake_terminal(monkeypatch)
    train(tiny_config(), tmp_path)
    drawn = terminal.getvalue()
    assert "epochs: 100%" in drawn
    assert "epoch 2" in drawn and "tok_s=" in drawn
    assert "epoch  2/2 |" in drawn  # the log lines are still there, printed above the bars


def test_quiet_training_writes_nothing_to_a_terminal(tmp_path, monkeypatch):
    terminal = fake_terminal(monkeypatch)
    train(tiny_config(), tmp_path, quiet=True)
    assert terminal.getvalue() == ""
    assert (tmp_path / "best.pt").is_file()


def test_quiet_cli_training_writes_nothing_to_a_terminal(tmp_path, monkeypatch):
    terminal = fake_terminal(monkeypatch)
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(tiny_config(epochs=1).to_dict()), encoding="utf-8")
    argv = ["train", "--config", str(config_path), "--out", str(tmp_path / "run"), "--quiet"]
    assert main(argv) == 0
    assert terminal.getvalue() == ""


def test_translate_file_draws_a_bar_on_a_terminal(
    tiny_checkpoint, sentence_files, capsys, monkeypatch
):
    terminal = fake_terminal(monkeypatch)
    assert main(["translate", str(tiny_checkpoint), "--input", str(sentence_files[0])]) == 0
    assert "translating" in terminal.getvalue()
    assert len(capsys.readouterr().out.splitlines()) == len(SENTENCES)


def only_notes(stderr: str) -> bool:
    """No bar on stderr: at most whole lines of notes (an untrained model's lines are all cut
    at the length limit, and translate says so)."""
    lines = stderr.splitlines()
    return "\r" not in stderr and all(line.startswith("encdec translate: ") for line in lines)


def test_translate_draws_no_bar_when_stderr_is_not_a_terminal(
    tiny_checkpoint, sentence_files, capsys
):
    assert main(["translate", str(tiny_checkpoint), "--input", str(sentence_files[0])]) == 0
    captured = capsys.readouterr()
    assert only_notes(captured.err)
    assert len(captured.out.splitlines()) == len(SENTENCES)


def test_translate_piped_in_a_subprocess_writes_nothing_to_stderr(tiny_checkpoint, sentence_files):
    command = [sys.executable, "-m", "encdec", "translate", str(tiny_checkpoint)]
    command += ["--input", str(sentence_files[0])]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)
    assert only_notes(result.stderr)
    assert len(result.stdout.splitlines()) == len(SENTENCES)


@pytest.mark.parametrize("verb", ["translate", "evaluate"])
def test_quiet_translate_and_evaluate_draw_no_bars_on_a_terminal(
    verb, tiny_checkpoint, sentence_files, capsys, monkeypatch
):
    terminal = fake_terminal(monkeypatch)
    source, reference = (str(path) for path in sentence_files)
    options = ["--input", source] if verb == "translate" else ["--src", source, "--ref", reference]
    assert main([verb, str(tiny_checkpoint), *options, "--quiet"]) == 0
    assert only_notes(terminal.getvalue())
    assert capsys.readouterr().out.strip()


class RecordingSummaryWriter:
    """Stands in for torch.utils.tensorboard.SummaryWriter; keeps what it is given."""

    instances: list["RecordingSummaryWriter"] = []

    def __init__(self, log_dir: str, purge_step: int | None = None):
        self.log_dir, self.purge_step = log_dir, purge_step
        self.scalars: dict[str, list[tuple[int, float]]] = {}
        self.flushes, self.closed = 0, False
        self.instances.append(self)

    def add_scalar(self, tag: str, value: float, global_step: int) -> None:
        self.scalars.setdefault(tag, []).append((global_step, value))

    def flush(self) -> None:
        self.flushes += 1

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def fake_tensorboard(monkeypatch) -> list[RecordingSummaryWriter]:
    """torch.utils.tensorboard replaced by a module whose SummaryWriter records its calls."""
    module = types.ModuleType("torch.utils.tensorboard")
    module.SummaryWriter = RecordingSummaryWriter
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", module)
    monkeypatch.setattr(RecordingSummaryWriter, "instances", [])
    return RecordingSummaryWriter.instances


def test_training_writes_tensorboard_scalars_every_epoch(fake_tensorboard, tmp_path):
    train(tiny_config(epochs=2), tmp_path, quiet=True)
    (writer,) = fake_tensorboard
    assert writer.log_dir == str(tmp_path / "tensorboard")
    assert writer.purge_step == 1  # a fresh run hides any events an earlier run left there
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert set(writer.scalars) == set(TENSORBOARD_SCALARS)
    for tag, key in TENSORBOARD_SCALARS.items():
        assert writer.scalars[tag] == [(record["epoch"], record[key]) for record in records]
    assert {"train/loss", "valid/ppl", "valid/bleu", "valid/chrf", "lr"} <= set(writer.scalars)
    assert writer.flushes == 2 and writer.closed


def test_training_works_when_tensorboard_cannot_be_imported(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import raises ImportError
    train(tiny_config(epochs=1), tmp_path, quiet=True)
    assert (tmp_path / "best.pt").is_file()
    assert not (tmp_path / "tensorboard").exists()
