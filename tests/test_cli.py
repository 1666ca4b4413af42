"""Tests for the `encdec` command: every verb end to end, help texts, and one-line errors."""

import importlib.metadata
import io
import json
import logging
import math
import re
import shutil
import signal
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from encdec import data
from encdec.cli import DEMO_CONFIG, main
from encdec.config import from_dict
from encdec.distributed import Processes
from encdec.errors import EncdecError
from encdec.reporting import setup_logging
from encdec.run_state import Progress
from encdec.stop_signals import StopSignals

REPO_ROOT = Path(__file__).resolve().parent.parent
SEED_CONFIG = REPO_ROOT / "configs" / "multi30k_seed.yaml"
VERBS = ["train", "translate", "evaluate", "data-stats", "demo", "download", "plot", "serve"]
VERBS += ["score"]
EVALUATE_SCORES = {"loss", "ppl", "teacher_forced_loss", "teacher_forced_ppl", "bleu", "bleu_tok"}
EVALUATE_SCORES |= {"chrf", "bleu_signature", "bleu_tok_signature", "chrf_signature"}
EVALUATE_SCORES |= {"truncated"}  # translations cut at the length limit
GERMAN = ["Ein Mann fährt Fahrrad.", "Zwei Hunde spielen im Schnee."]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, multi30k_dir) -> Path:
    """One textbook-size training step on Multi30k through the command line (~40 s).

    Translations stop at 12 tokens: untrained, the model would otherwise write 50 for each of
    the 2,000 validation and test sentences it translates.
    """
    run_dir = tmp_path_factory.mktemp("cli") / "run"
    argv = ["train", "--config", str(SEED_CONFIG), "--data-dir", str(multi30k_dir)]
    argv += ["--max-steps", "1", "--epochs", "1", "--set", "decoding.max_len=12"]
    argv += ["--out", str(run_dir), "--quiet"]
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


def stdin_of(monkeypatch, content: bytes) -> None:
    """Give the command `content` on stdin, as bytes under a text stream like the real one."""
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(content), encoding="utf-8"))


def test_translate_reads_stdin_and_prints_one_line_per_input_line(smoke_run, monkeypatch, capsys):
    stdin_of(monkeypatch, ("".join(s + "\n" for s in GERMAN) + "\n").encode("utf-8"))
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


def test_gzipped_input_and_output_files_are_read_and_written_gzipped(
    demo_checkpoint, tmp_path, capsys
):
    import gzip

    source = tmp_path / "in.en.gz"
    source.write_bytes(gzip.compress(b"good morning\nlet's go\n"))
    argv = ["translate", str(demo_checkpoint), "--device", "cpu", "--input", str(source)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert printed == "buenos días\nvamos\n"
    assert main([*argv, "--output", str(tmp_path / "out.es.gz")]) == 0
    assert gzip.decompress((tmp_path / "out.es.gz").read_bytes()).decode("utf-8") == printed
    reference = tmp_path / "ref.es.gz"
    reference.write_bytes(gzip.compress("buenos días\nvamos\n".encode()))
    argv = ["evaluate", str(demo_checkpoint), "--device", "cpu", "--src", str(source)]
    argv += ["--ref", str(reference), "--output", str(tmp_path / "scored.es.gz"), "--json"]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["chrf"] == pytest.approx(100)
    assert gzip.decompress((tmp_path / "scored.es.gz").read_bytes()).decode("utf-8") == printed


def test_n_best_lines_are_the_apis_n_best_lists_and_their_first_is_the_translation(
    demo_checkpoint, monkeypatch, capsys
):
    from encdec.translator import Translator

    sentences = ["good morning", "", "let's go"]
    stdin = "".join(sentence + "\n" for sentence in sentences).encode("utf-8")
    argv = ["translate", str(demo_checkpoint), "--device", "cpu", "--beam", "4"]
    stdin_of(monkeypatch, stdin)
    assert main([*argv, "--n-best", "3"]) == 0
    rows = [line.split(" ||| ") for line in capsys.readouterr().out.splitlines()]
    stdin_of(monkeypatch, stdin)
    assert main(argv) == 0
    best_texts = capsys.readouterr().out.splitlines()

    api = Translator.load(demo_checkpoint, device="cpu")
    expected = []
    for line, translations in enumerate(api.translations(sentences, n_best=3, beam=4)):
        scored = [(t.text, t.score) for t in translations] if sentences[line] else [("", 0.0)]
        expected += [[str(line), text, f"{score:.4f}"] for text, score in scored]
    assert rows == expected
    assert [line for line, *_ in rows] == ["0", "0", "0", "1", "2", "2", "2"]  # blank: one
    first_of_each_line = {}
    for line, text, _ in rows:
        first_of_each_line.setdefault(line, text)
    assert list(first_of_each_line.values()) == best_texts == ["buenos días", "", "vamos"]


def test_a_temperature_with_a_beam_is_a_one_line_error(demo_checkpoint, monkeypatch, capsys):
    stdin_of(monkeypatch, b"good morning\n")
    options = ["--device", "cpu", "--temperature", "0.8", "--beam", "3"]
    assert main(["translate", str(demo_checkpoint), *options]) == 2
    assert_one_line_error(capsys.readouterr().err, "translate", "do not mix: ask for one of them")


def test_at_a_terminal_each_line_is_translated_as_soon_as_it_is_typed(demo_checkpoint):
    import os
    import pty
    import select

    terminal, typing_end = pty.openpty()  # stdin is a terminal, as when a user types
    process = subprocess.Popen(
        [sys.executable, "-m", "encdec", "translate", str(demo_checkpoint), "--device", "cpu"],
        stdin=typing_end,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    os.close(typing_end)

    def type_and_read_a_line(typed: bytes) -> str:
        os.write(terminal, typed)
        ready, _, _ = select.select([process.stdout], [], [], 60)
        assert ready, f"no translation of {typed!r} while the input stays open"
        return process.stdout.readline().decode("utf-8")

    try:
        assert type_and_read_a_line(b"good morning\n") == "buenos d\u00edas\n"
        assert type_and_read_a_line(b"\xff\xfe\nlet's go\n") == "vamos\n"  # a bad line skipped
        os.write(terminal, b"\x04")  # Ctrl-D at the start of a line: the end of the input
        assert process.wait(timeout=60) == 0
        stderr = process.stderr.read().decode("utf-8")
    finally:
        process.kill()
        os.close(terminal)
    assert "type a sentence and press Enter; Ctrl-D ends" in stderr
    assert "stdin:2: not valid UTF-8" in stderr


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--n-best", "3"], "--n-best 3 needs a beam at least as wide: add --beam 3 or more"),
        (["--n-best", "3", "--beam", "2"], "--n-best 3 needs a beam at least as wide"),
        (["--n-best", "0"], "--n-best must be at least 1, got 0"),
    ],
)
def test_n_best_wider_than_the_beam_is_a_one_line_error(
    demo_checkpoint, monkeypatch, capsys, options, message
):
    stdin_of(monkeypatch, b"good morning\n")
    assert main(["translate", str(demo_checkpoint), "--device", "cpu", *options]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert_one_line_error(captured.err, "translate", message)


def test_evaluate_test_split_prints_json_scores(smoke_run, multi30k_dir, capsys):
    argv = ["evaluate", str(smoke_run / "best.pt"), "--split", "test"]
    assert main([*argv, "--data-dir", str(multi30k_dir), "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert set(scores) == EVALUATE_SCORES
    # one training step: barely better than a uniform guess over the 5893 English words
    assert 5.0 < scores["loss"] < math.log(5893) + 1
    assert scores["ppl"] == pytest.approx(math.exp(scores["loss"]))
    assert 0 <= scores["bleu"] < 5


def test_evaluate_source_and_reference_files(smoke_run, test_split_head, capsys):
    source, reference = test_split_head
    argv = ["evaluate", str(smoke_run / "best.pt"), "--src", str(source), "--ref", str(reference)]
    assert main([*argv, "--json"]) == 0
    assert set(json.loads(capsys.readouterr().out)) == EVALUATE_SCORES
    assert main(argv) == 0
    line = capsys.readouterr().out.splitlines()[0]
    assert line.startswith(f"{source}: teacher forcing off loss ")
    assert "| teacher-forced loss " in line and "| BLEU " in line
    assert "| BLEU (tokenized) " in line and "| chrF " in line


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
    stdin_of(monkeypatch, b"Ein Hund.\n")
    assert main(["translate", str(tmp_path / "missing.pt")]) == 2
    assert_one_line_error(capsys.readouterr().err, "translate", "checkpoint not found")


def refuse_downloads(monkeypatch) -> list[str]:
    """The URLs encdec tries to download from; each try fails at once."""
    tried = []

    def download(url, dest, sha256):
        tried.append(url)
        raise EncdecError(f"could not download {url}")

    monkeypatch.setattr(data, "download_file", download)
    return tried


@pytest.mark.parametrize("missing", ["train.de.gz", "val.en.gz"])
def test_a_data_dir_missing_a_file_is_one_line_error_naming_it(
    missing, tmp_path, multi30k_dir, monkeypatch, capsys
):
    monkeypatch.setenv("ENCDEC_CACHE", str(tmp_path / "cache"))
    tried = refuse_downloads(monkeypatch)
    folder = tmp_path / "multi30k"
    folder.mkdir()
    for name in ("train.de.gz", "train.en.gz", "val.de.gz", "val.en.gz"):
        if name != missing:
            (folder / name).symlink_to(multi30k_dir / name)
    assert main([*STATS_ARGV, "--data-dir", str(folder)]) == 2
    assert tried == []
    err = capsys.readouterr().err
    assert_one_line_error(err, "data-stats", f"{folder / missing} not found", "encdec download")


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


# --- what a new user trips over (issue 13) ------------------------------------------------------


def test_stdin_that_is_not_utf8_is_a_one_line_error_naming_the_line(
    demo_checkpoint, monkeypatch, capsys
):
    stdin_of(monkeypatch, b"good morning\nthank you \xff\xfe very much\n")
    assert main(["translate", str(demo_checkpoint), "--device", "cpu"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert_one_line_error(captured.err, "translate", "stdin:2: not valid UTF-8")


@pytest.mark.parametrize("output", ["missing/out.txt", "."], ids=["missing folder", "a folder"])
def test_output_path_that_cannot_be_a_file_is_a_one_line_error(
    demo_checkpoint, tmp_path, monkeypatch, capsys, output
):
    stdin_of(monkeypatch, b"good morning\n")
    argv = [
        "translate",
        str(demo_checkpoint),
        "--device",
        "cpu",
        "--output",
        str(tmp_path / output),
    ]
    assert main(argv) == 2
    assert_one_line_error(capsys.readouterr().err, "translate", f"cannot write {tmp_path}")
    assert sorted(path.name for path in tmp_path.iterdir()) == []


def test_a_run_folder_means_its_best_pt(demo_checkpoint, tmp_path, monkeypatch, capsys):
    run_dir = demo_checkpoint.parent
    stdin_of(monkeypatch, b"let's go\n")
    assert main(["translate", str(run_dir), "--device", "cpu"]) == 0
    assert capsys.readouterr().out == "vamos\n"
    source, reference = tmp_path / "src.en", tmp_path / "ref.es"
    source.write_text("let's go\n", encoding="utf-8")
    reference.write_text("vamos\n", encoding="utf-8")
    argv = ["evaluate", str(run_dir), "--src", str(source), "--ref", str(reference), "--json"]
    assert main([*argv, "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["chrf"] == pytest.approx(100)
    assert main(["average", str(run_dir), str(run_dir), "--output", str(tmp_path / "avg.pt")]) == 0


def test_evaluate_writes_the_translations_it_scored(demo_checkpoint, tmp_path, capsys):
    from encdec.metrics import bleu

    source, reference = tmp_path / "src.en", tmp_path / "ref.es"
    source.write_text("let's go\nthank you\nwhere is the cat\n", encoding="utf-8")
    reference.write_text("vamos\ngracias\ndónde está el gato\n", encoding="utf-8")
    written = tmp_path / "hypotheses.es"
    argv = ["evaluate", str(demo_checkpoint), "--src", str(source), "--ref", str(reference)]
    assert main([*argv, "--output", str(written), "--json", "--device", "cpu"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert "translations" not in scores
    assert main(["translate", str(demo_checkpoint), "--input", str(source), "--device", "cpu"]) == 0
    translations = written.read_text(encoding="utf-8")
    assert translations == capsys.readouterr().out and translations.count("\n") == 3
    references = reference.read_text(encoding="utf-8").splitlines()
    assert bleu(translations.splitlines(), references) == pytest.approx(scores["bleu"])
    nowhere = tmp_path / "missing" / "hypotheses.es"  # refused before anything is scored
    assert main([*argv, "--output", str(nowhere), "--device", "cpu"]) == 2
    assert_one_line_error(
        capsys.readouterr().err, "evaluate", f"folder {nowhere.parent} does not exist"
    )


def test_a_folder_without_best_pt_is_a_one_line_error_naming_it(tmp_path, monkeypatch, capsys):
    stdin_of(monkeypatch, b"Ein Hund.\n")
    assert main(["translate", str(tmp_path)]) == 2
    assert_one_line_error(capsys.readouterr().err, "translate", f"{tmp_path} is a folder without")


def help_text(*argv: str, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--help"])
    assert exit_info.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # unwrapped


@pytest.mark.parametrize(
    "argv",
    [[], *([verb] for verb in VERBS), ["average"], ["plot", "curves"], ["plot", "attention"]],
)
def test_help_shows_each_default_once_and_only_where_it_says_something(argv, capsys):
    text = help_text(*argv, capsys=capsys)
    assert "(default: None)" not in text and "(default: False)" not in text
    assert not re.search(r"\(default: [^)]*\) \(default:", text), text


def test_evaluate_split_and_download_langs_are_explained(capsys):
    assert re.search(
        r"--split \{train,valid,test\} the split .*\(default: test\)",
        help_text("evaluate", capsys=capsys),
    )
    assert "the languages to fetch" in help_text("download", capsys=capsys)


def test_version_is_the_installed_packages(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"encdec {version('encdec')}\n"


def test_a_mistyped_option_shows_the_usage_of_its_verb(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["translate", "best.pt", "--beams", "5"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: encdec translate ")
    assert "encdec translate: error: unrecognized arguments: --beams 5" in err


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["translate", "best.pt", "--beam", "0"], "--beam"),
        (["evaluate", "best.pt", "--max-len", "-3"], "--max-len"),
        (["translate", "best.pt", "--temperature", "-1"], "--temperature"),
        (["evaluate", "best.pt", "--coverage-penalty", "-1"], "--coverage-penalty"),
        (["train", "--out", "run", "--epochs", "0"], "--epochs"),
        (["train", "--out", "run", "--max-updates", "0"], "--max-updates"),
        (["translate", "best.pt", "--batch-size", "0"], "--batch-size"),
        (["evaluate", "best.pt", "--batch-size", "-2"], "--batch-size"),
    ],
)
def test_a_bad_option_value_names_the_option(argv, option, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert_one_line_error(err, argv[0], f"{option} must")
    assert "decoding." not in err and "training." not in err
    assert list(tmp_path.iterdir()) == []


def test_a_bad_language_code_leaves_no_run_folder(tmp_path, capsys):
    argv = ["train", "--set", "data.src_lang=dx", "--out", str(tmp_path / "run")]
    assert main(argv) == 2
    assert_one_line_error(capsys.readouterr().err, "train", "'dx'")
    assert not (tmp_path / "run").exists()


def test_a_key_the_dataset_does_not_read_is_a_one_line_error(tmp_path, multi30k_dir, capsys):
    argv = ["train", "--config", str(SEED_CONFIG), "--data-dir", str(multi30k_dir)]
    argv += ["--set", "data.train_src=a.de", "--set", "data.train_trg=a.en"]
    argv += ["--max-steps", "1", "--epochs", "1", "--out", str(tmp_path / "run"), "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert_one_line_error(err, "train", "'data.train_src'", "no effect", "data.dataset: files")
    assert not (tmp_path / "run").exists()


def test_a_stopped_run_says_how_to_go_on_once(tmp_path, monkeypatch, capsys):
    def training_stopped_by_ctrl_c(config, out_dir, quiet=False, device="auto", **options):
        out_dir = Path(out_dir)
        out_dir.mkdir()
        setup_logging(out_dir, quiet, Processes())
        stop = StopSignals()
        stop.handle(signal.SIGINT, None)
        run = SimpleNamespace(
            progress=Progress(epoch=1, step=3, batches=[[0]] * 5), out_dir=out_dir
        )
        stop.raise_stopped(run)

    monkeypatch.setattr("encdec.training.train", training_stopped_by_ctrl_c)
    try:
        assert main(["train", "--out", str(tmp_path / "run")]) == 130
    finally:
        logging.getLogger("encdec").handlers.clear()
    err = capsys.readouterr().err
    assert err.count("continue with `encdec train --resume") == 1, err
    log_text = (tmp_path / "run" / "train.log").read_text(encoding="utf-8")
    assert log_text.count("continue with `encdec train --resume") == 1


def test_the_version_comes_from_pyproject_when_encdec_runs_uninstalled(monkeypatch):
    import encdec

    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(encdec, "version", not_installed)
    assert encdec._version() == importlib.metadata.version("encdec")


@pytest.mark.parametrize(("given", "missing"), [("--src", "--ref"), ("--ref", "--src")])
def test_evaluate_src_without_ref_is_refused_not_scored_on_the_test_split(
    given, missing, tmp_path, capsys
):
    lines = tmp_path / "lines.txt"
    lines.write_text("good morning\n", encoding="utf-8")
    assert main(["evaluate", str(tmp_path / "best.pt"), given, str(lines)]) == 2
    assert_one_line_error(capsys.readouterr().err, "evaluate", f"{given} needs {missing}")


def test_evaluate_labels_both_perplexities_and_prints_the_sacrebleu_signatures(
    demo_checkpoint, tmp_path, capsys
):
    source, reference = tmp_path / "src.en", tmp_path / "ref.es"
    source.write_text("good morning\nthank you very much\n", encoding="utf-8")
    reference.write_text("buenos días\nmuchas gracias a ti\n", encoding="utf-8")
    argv = ["evaluate", str(demo_checkpoint), "--src", str(source), "--ref", str(reference)]
    assert main([*argv, "--device", "cpu", "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert set(scores) == EVALUATE_SCORES
    assert scores["teacher_forced_ppl"] == pytest.approx(math.exp(scores["teacher_forced_loss"]))
    assert scores["bleu_signature"].startswith("nrefs:1|case:lc|eff:no|tok:13a|")
    assert scores["chrf_signature"].startswith("nrefs:1|case:lc|eff:yes|nc:6|")
    assert main([*argv, "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(
        f"{source}: teacher forcing off loss {scores['loss']:.3f} ppl {scores['ppl']:.2f} | "
        f"teacher-forced loss {scores['teacher_forced_loss']:.3f} "
        f"ppl {scores['teacher_forced_ppl']:.2f} | BLEU "
    )
    assert lines[1:4] == [
        f"BLEU signature: {scores['bleu_signature']}",
        f"BLEU (tokenized) signature: {scores['bleu_tok_signature']}",
        f"chrF signature: {scores['chrf_signature']}",
    ]
    assert lines[4].startswith(f"translations cut at the length limit: {scores['truncated']} ")


def test_translate_and_evaluate_take_a_batch_size_and_decoding_settings(
    demo_checkpoint, tmp_path, capsys
):
    source, reference = tmp_path / "src.en", tmp_path / "ref.es"
    source.write_text("good morning\nthank you very much\nlet's go\n", encoding="utf-8")
    reference.write_text("buenos días\nmuchas gracias\nvamos\n", encoding="utf-8")
    translate = ["translate", str(demo_checkpoint), "--input", str(source), "--device", "cpu"]
    assert main(translate) == 0
    assert capsys.readouterr().out == "buenos días\nmuchas gracias\nvamos\n"
    assert main([*translate, "--batch-size", "1", "--set", "decoding.max_len=1"]) == 0
    assert capsys.readouterr().out == "buenos\nmuchas\nvamos\n"
    assert main([*translate, "--set", "decoding.max_len=1", "--max-len", "10"]) == 0
    assert capsys.readouterr().out == "buenos días\nmuchas gracias\nvamos\n"  # options win

    evaluate = ["evaluate", str(demo_checkpoint), "--src", str(source), "--ref", str(reference)]
    evaluate += ["--device", "cpu", "--json"]
    assert main([*evaluate, "--beam", "2"]) == 0
    with_beam = json.loads(capsys.readouterr().out)
    assert main([*evaluate, "--set", "decoding.beam_size=2", "--batch-size", "2"]) == 0
    assert json.loads(capsys.readouterr().out) == pytest.approx(with_beam)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("model.hidden_dim=3", "only decoding settings can change here"),
        ("decoding.beam=3", "unknown config key 'decoding.beam'; did you mean 'beam_size'"),
        ("decoding.max_len=0", "'decoding.max_len' must be positive"),
    ],
)
def test_a_bad_decoding_setting_is_a_one_line_error(
    setting, message, demo_checkpoint, tmp_path, capsys
):
    source = tmp_path / "src.en"
    source.write_text("good morning\n", encoding="utf-8")
    argv = ["translate", str(demo_checkpoint), "--input", str(source), "--device", "cpu"]
    assert main([*argv, "--set", setting]) == 2
    assert_one_line_error(capsys.readouterr().err, "translate", message)


@pytest.mark.parametrize("verb", ["translate", "evaluate", "serve"])
def test_help_lists_the_second_opinions_after_the_verbs_own_options(verb, capsys):
    text = help_text(verb, capsys=capsys)
    usage, options = text.split(" positional arguments: ")
    own = "--input" if verb == "translate" else "--device"
    assert usage.index(own) < usage.index("--rescore")
    assert options.index(own) < options.index("second opinions") < options.index("--rescore")


def test_a_config_that_is_not_yaml_is_named_with_the_line(tmp_path, capsys):
    config = tmp_path / "broken.yaml"
    config.write_text("training:\n  epochs: [1\n  lr: 0.1\n", encoding="utf-8")
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert_one_line_error(err, "train", f"config file {config}:3:5: not valid YAML: ")
    assert "<unicode string>" not in err


TINY_RUN = {
    "data": {"dataset": "toy", "src_lang": "en", "trg_lang": "es", "min_freq": 1},
    "model": {"embedding_dim": 8, "hidden_dim": 16, "num_layers": 1},
    "training": {"epochs": 1, "batch_size": 16, "max_steps": 2},
    "decoding": {"max_len": 5},
}


def train_argv(tmp_path: Path, run_dir: Path, raw: dict = TINY_RUN, *options: str) -> list[str]:
    """`encdec train` of `raw` (written as a config beside the run) on the CPU, quietly."""
    config_path = tmp_path / "tiny.yaml"
    config_path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    argv = ["train", "--config", str(config_path), "--device", "cpu", "--quiet"]
    return [*argv, *options, "--out", str(run_dir)]


def test_training_again_into_a_run_folder_is_refused_naming_both_remedies(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(train_argv(tmp_path, run_dir)) == 0
    saved = {name: (run_dir / name).read_bytes() for name in ("last.pt", "train.log")}
    capsys.readouterr()
    assert main(train_argv(tmp_path, run_dir)) == 2
    err = capsys.readouterr().err
    assert_one_line_error(err, "train", f"run folder {run_dir} already holds a run", "last.pt")
    assert f"encdec train --resume {run_dir}" in err and "--overwrite" in err
    assert saved == {name: (run_dir / name).read_bytes() for name in saved}


def test_overwrite_starts_afresh_clearing_only_the_old_runs_files(tmp_path):
    run_dir = tmp_path / "run"
    kept = {**TINY_RUN, "training": TINY_RUN["training"] | {"keep_checkpoints": 1}}
    assert main(train_argv(tmp_path, run_dir, kept)) == 0
    (run_dir / "notes.txt").write_text("mine", encoding="utf-8")
    assert (run_dir / "epoch_001.pt").is_file()
    assert main(train_argv(tmp_path, run_dir, TINY_RUN, "--overwrite")) == 0
    assert not (run_dir / "epoch_001.pt").exists()
    assert (run_dir / "notes.txt").read_text(encoding="utf-8") == "mine"
    log_text = (run_dir / "train.log").read_text(encoding="utf-8")
    assert log_text.count("run directory:") == 1
    assert len((run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()) == 1


def test_the_python_api_refuses_a_run_folder_too_unless_told_to_overwrite(tmp_path):
    from encdec.training import train

    config = from_dict(TINY_RUN)
    train(config, tmp_path, quiet=True, device="cpu")
    with pytest.raises(EncdecError, match=r"already holds a run .*overwrite=True"):
        train(config, tmp_path, quiet=True, device="cpu")
    train(config, tmp_path, quiet=True, device="cpu", overwrite=True)
    with pytest.raises(EncdecError, match="either resumed or overwritten"):
        train(None, tmp_path, quiet=True, device="cpu", resume=True, overwrite=True)


def test_an_empty_existing_folder_is_not_a_run(tmp_path):
    run_dir = tmp_path / "made beforehand"
    run_dir.mkdir()
    assert main(train_argv(tmp_path, run_dir)) == 0
    assert (run_dir / "best.pt").is_file()


def tsv_run(tmp_path: Path, train_lines: str) -> dict:
    """TINY_RUN on TSV files whose training file holds `train_lines`."""
    good = tmp_path / "good.tsv"
    good.write_text("a cat\tun gato\n", encoding="utf-8")
    bad = tmp_path / "train.tsv"
    bad.write_text(train_lines, encoding="utf-8")
    files = {"train_tsv": str(bad), "valid_tsv": str(good), "test_tsv": str(good)}
    return {**TINY_RUN, "data": TINY_RUN["data"] | {"dataset": "files", **files}}


@pytest.mark.parametrize(
    "problem",
    ["missing data", "a bad TSV line", "bf16 on the CPU", "cuda without CUDA", "a bad language"],
)
def test_a_run_that_cannot_start_leaves_no_run_folder(tmp_path, capsys, problem):
    run_dir, raw, options = tmp_path / "run", TINY_RUN, []
    if problem == "missing data":
        raw = tsv_run(tmp_path, "")
        Path(raw["data"]["train_tsv"]).unlink()
    elif problem == "a bad TSV line":
        raw = tsv_run(tmp_path, "a dog\tun perro\nno tab here\n")
    elif problem == "bf16 on the CPU":
        options = ["--set", "training.precision=bf16"]
    elif problem == "cuda without CUDA":
        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
        options = ["--device", "cuda"]
    else:
        options = ["--set", "data.src_lang=dx"]
    assert main(train_argv(tmp_path, run_dir, raw, *options)) == 2
    assert_one_line_error(capsys.readouterr().err, "train")
    assert not run_dir.exists()


def test_train_help_says_max_steps_is_per_epoch_and_max_updates_the_total(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "end EACH epoch after this many batches" in text
    assert "--max-updates MAX_UPDATES override training.max_updates: stop after" in text


def test_batch_tokens_splits_decoding_batches_and_changes_no_translation(
    demo_checkpoint, tmp_path, capsys, monkeypatch
):
    source = tmp_path / "src.en"
    source.write_text("good morning\nthank you very much\nlet's go\ni am hungry.\n", "utf-8")
    translate = ["translate", str(demo_checkpoint), "--input", str(source), "--device", "cpu"]
    assert main(translate) == 0
    whole = capsys.readouterr().out
    from encdec import search

    sizes, real = [], search.collate
    monkeypatch.setattr(
        search,
        "collate",
        lambda pairs, indices, pad: sizes.append(len(indices)) or real(pairs, indices, pad),
    )
    assert main([*translate, "--batch-tokens", "12"]) == 0
    assert capsys.readouterr().out == whole
    assert len(sizes) > 1 and max(sizes) < 4  # at most 12 padded source positions a batch
    assert main([*translate, "--batch-tokens", "0"]) == 2
    assert "--batch-tokens must be positive" in capsys.readouterr().err
