"""Tests for the `encdec` command: every verb end to end, help texts, and one-line errors."""

import io
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from encdec import data
from encdec.cli import DEMO_CONFIG, main
from encdec.config import from_dict
from encdec.errors import EncdecError

REPO_ROOT = Path(__file__).resolve().parent.parent
SEED_CONFIG = REPO_ROOT / "configs" / "multi30k_seed.yaml"
VERBS = ["train", "translate", "evaluate", "data-stats", "demo", "download", "plot"]
GERMAN = ["Ein Mann fährt Fahrrad.", "Zwei Hunde spielen im Schnee."]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, multi30k_dir) -> Path:
    """One textbook-size training step on Multi30k through the command line (~20 s)."""
    run_dir = tmp_path_factory.mktemp("cli") / "run"
    argv = ["train", "--config", str(SEED_CONFIG), "--data-dir", str(multi30k_dir)]
    argv += ["--max-steps", "1", "--epochs", "1", "--out", str(run_dir), "--quiet"]
    assert main(argv) == 0
    return run_dir


@pytest.fixture(scope="module")
def test_split_head(tmp_path_factory, multi30k_dir) -> tuple[Path, Path]:
    """The first 20 lines of test_2016_flickr, German and English, as plain files."""
    folder = tmp_path_factory.mktemp("head")
    paths = []
    for lang in ("de", "en"):
        lines = data.read_lines(multi30k_dir / f"test_2016_flickr.{lang}.gz")[:20]
        path = folder / f"test.{lang}"
        path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        paths.append(path)
    return paths[0], paths[1]


def test_demo_prints_translations_ending_with_vamos(demo_checkpoint, monkeypatch, capsys):
    # The demo's training is the session's demo_checkpoint (same config, same seed): reuse it.
    def train_as_demo_checkpoint(config, out_dir, quiet=False):
        assert config == from_dict(DEMO_CONFIG) and quiet
        shutil.copy(demo_checkpoint, Path(out_dir) / "best.pt")

    monkeypatch.setattr("encdec.training.train", train_as_demo_checkpoint)
    assert main(["demo"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "let's go -> vamos" in [line.strip() for line in lines]
    assert "good morning -> buenos días" in [line.strip() for line in lines]
    assert lines[-1] == "vamos"


def test_train_writes_checkpoint_metrics_log_and_config(smoke_run, multi30k_dir):
    assert (smoke_run / "best.pt").is_file()
    records = (smoke_run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(records) == 1
    record = json.loads(records[0])
    keys = ["train_loss", "train_ppl", "valid_loss", "valid_ppl", "epoch_seconds"]
    keys.append("train_tokens_per_s")
    assert record["epoch"] == 1
    assert all(math.isfinite(record[key]) and record[key] > 0 for key in keys)
    assert "model parameters: 13,898,501" in (smoke_run / "train.log").read_text(encoding="utf-8")
    config = yaml.safe_load((smoke_run / "config.yaml").read_text(encoding="utf-8"))
    assert config["training"]["max_steps"] == 1 and config["training"]["epochs"] == 1
    assert config["data"]["data_dir"] == str(multi30k_dir)
    assert config["model"]["hidden_dim"] == 512


def test_translate_reads_stdin_and_prints_one_line_per_input_line(smoke_run, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("".join(s + "\n" for s in GERMAN) + "\n"))
    assert main(["translate", str(smoke_run / "best.pt")]) == 0
    out = capsys.readouterr().out
    assert out.endswith("\n")
    lines = out.splitlines()
    assert len(lines) == 3
    assert lines[2] == ""  # the empty input line


def test_translate_input_file_to_output_file(smoke_run, tmp_path, capsys):
    source, target = tmp_path / "in.de", tmp_path / "out.en"
    source.write_text("\n".join(GERMAN) + "\n", encoding="utf-8")
    argv = ["translate", str(smoke_run / "best.pt"), "--input", str(source)]
    assert main([*argv, "--output", str(target), "--max-len", "3"]) == 0
    assert capsys.readouterr().out == ""
    lines = target.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2
    assert all(len(line.split()) <= 3 for line in lines)


def test_evaluate_test_split_prints_json_scores(smoke_run, multi30k_dir, capsys):
    argv = ["evaluate", str(smoke_run / "best.pt"), "--split", "test"]
    assert main([*argv, "--data-dir", str(multi30k_dir), "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert set(scores) == {"loss", "ppl", "bleu", "bleu_tok", "chrf"}
    # one training step: barely better than a uniform guess over the 5893 English words
    assert 5.0 < scores["loss"] < math.log(5893) + 1
    assert scores["ppl"] == pytest.approx(math.exp(scores["loss"]))
    assert 0 <= scores["bleu"] < 5


def test_evaluate_source_and_reference_files(smoke_run, test_split_head, capsys):
    source, reference = test_split_head
    argv = ["evaluate", str(smoke_run / "best.pt"), "--src", str(source), "--ref", str(reference)]
    assert main([*argv, "--json"]) == 0
    assert set(json.loads(capsys.readouterr().out)) == {"loss", "ppl", "bleu", "bleu_tok", "chrf"}
    assert main(argv) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{source}: loss ")
    assert "| ppl " in line and "| BLEU " in line and "| BLEU (tokenized) " in line
    assert "| chrF " in line


MULTI30K_DE_EN = {"train": 29000, "valid": 1014, "test": 1000, "src_vocab": 7853}
MULTI30K_DE_EN["trg_vocab"] = 5893
STATS_ARGV = ["data-stats", "--src", "de", "--trg", "en", "--min-freq", "2"]


def test_data_stats_json_gives_multi30k_sizes(multi30k_dir, capsys):
    assert main([*STATS_ARGV, "--data-dir", str(multi30k_dir), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert {key: stats[key] for key in MULTI30K_DE_EN} == MULTI30K_DE_EN


def test_data_stats_table_shows_multi30k_sizes(multi30k_dir, capsys):
    assert main([*STATS_ARGV, "--data-dir", str(multi30k_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "de -> en, min_freq 2"
    rows = {line.split()[0]: line.split()[1] for line in lines[1:]}
    assert {key: rows[key] for key in MULTI30K_DE_EN} == {
        key: f"{value:,}" for key, value in MULTI30K_DE_EN.items()
    }


def assert_one_line_error(err: str, verb: str, *fragments: str) -> None:
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert err.startswith(f"encdec {verb}: error: ")
    assert "Traceback" not in err
    assert all(fragment in err for fragment in fragments), err


def test_unknown_config_key_is_one_line_error(tmp_path, capsys):
    argv = ["train", "--set", "model.hiden_dim=3", "--out", str(tmp_path / "run")]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert_one_line_error(
        captured.err, "train", "unknown config key 'model.hiden_dim'", "'hidden_dim'"
    )


def test_missing_checkpoint_is_one_line_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("Ein Hund.\n"))
    assert main(["translate", str(tmp_path / "missing.pt")]) == 2
    assert_one_line_error(capsys.readouterr().err, "translate", "checkpoint not found")


def test_data_dir_without_multi30k_is_one_line_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ENCDEC_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("ENCDEC_DATA", raising=False)
    tried = []
    real_download = data.download_file

    def download_from_a_closed_port(url, dest, sha256):
        tried.append(url)  # the discard port refuses at once: the internet is never reached
        return real_download("http://127.0.0.1:9/" + url.rsplit("/", 1)[-1], dest, sha256)

    monkeypatch.setattr(data, "download_file", download_from_a_closed_port)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([*STATS_ARGV, "--data-dir", str(empty)]) == 2
    assert tried == [data.MULTI30K_URL + "train.de.gz"]
    assert_one_line_error(capsys.readouterr().err, "data-stats", "could not download", "--data-dir")
    assert not any(path.is_file() for path in (tmp_path / "cache").rglob("*"))


def test_debug_flag_reraises_the_error(tmp_path):
    argv = ["--debug", "train", "--set", "model.hiden_dim=3", "--out", str(tmp_path / "run")]
    with pytest.raises(EncdecError, match="hiden_dim"):
        main(argv)


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_help_exits_0_with_an_example(verb, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([verb, "--help"])
    assert exit_info.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    examples = [line for line in lines if line.startswith("example: ")]
    assert len(examples) == 1 and f"encdec {verb}" in examples[0]


def run_encdec(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "encdec", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
    )


def test_python_m_encdec_help_lists_every_verb():
    result = run_encdec("--help")
    assert result.returncode == 0, result.stderr
    assert all(verb in result.stdout for verb in VERBS)


def test_python_m_encdec_error_exits_2_without_traceback(tmp_path):
    result = run_encdec("translate", str(tmp_path / "missing.pt"))
    assert result.returncode == 2
    assert_one_line_error(result.stderr, "translate", "checkpoint not found")
