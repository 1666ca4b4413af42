"""Tests for encdec prepare and training on a prepared folder (prepare.py, prepared.py)."""

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from encdec import prepare as prepare_module
from encdec.checkpoint import load_checkpoint
from encdec.cli import main
from encdec.config import DataConfig, check_every_key_counts, from_dict
from encdec.corpus import build_corpus
from encdec.errors import EncdecError
from encdec.prepare import MANIFEST, prepare
from encdec.training import train
from encdec.translator import Translator

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TOY = {"dataset": "toy", "src_lang": "en", "trg_lang": "es", "min_freq": 1}
TINY = {
    "model": {"embedding_dim": 16, "hidden_dim": 16, "num_layers": 1, "dropout": 0.1},
    "training": {"epochs": 2, "batch_size": 16, "teacher_forcing_ratio": 0.5},
    "decoding": {"max_len": 10},
}


def files_config(tmp_path: Path, pairs: list[tuple[str, str]], **data) -> DataConfig:
    """A files config whose three splits are the same two parallel files of `pairs`."""
    (tmp_path / "src.txt").write_text("".join(f"{s}\n" for s, _ in pairs), encoding="utf-8")
    (tmp_path / "trg.txt").write_text("".join(f"{t}\n" for _, t in pairs), encoding="utf-8")
    paths = {
        f"{split}_{side}": str(tmp_path / f"{side}.txt")
        for split in ("train", "valid", "test")
        for side in ("src", "trg")
    }
    return DataConfig(dataset="files", src_lang="en", trg_lang="es", min_freq=1, **paths, **data)


PAIRS = [("the dog runs", "el perro corre"), ("a cat sleeps", "un gato duerme")] * 20


def leftovers(folder: Path) -> list[str]:
    """Entries of `folder` a prepare could have left: the folder and its partial siblings."""
    return sorted(path.name for path in folder.iterdir() if "out" in path.name)


@pytest.fixture(scope="module")
def multi30k_prepared(tmp_path_factory, multi30k_dir) -> Path:
    out = tmp_path_factory.mktemp("prepared") / "de-en"
    prepare(DataConfig(data_dir=str(multi30k_dir)), out, workers=2)
    return out


def test_multi30k_prepared_in_parallel_gives_the_textbook_vocabularies_and_the_same_ids(
    multi30k_prepared, multi30k_dir
):
    config = DataConfig(data_dir=str(multi30k_dir))
    prepared = build_corpus(DataConfig(data_dir=str(multi30k_dir), prepared=str(multi30k_prepared)))
    from_text = build_corpus(config)
    assert (len(prepared.src_vocab), len(prepared.trg_vocab)) == (7853, 5893)
    assert prepared.src_vocab == from_text.src_vocab and prepared.trg_vocab == from_text.trg_vocab
    for split, pairs in from_text.ids.items():
        for side in ("src", "trg"):
            mapped, in_memory = getattr(prepared.ids[split], side), getattr(pairs, side)
            assert isinstance(mapped.ids, np.memmap)  # read from disk as needed, not loaded
            assert np.array_equal(mapped.ids, in_memory.ids)
            assert np.array_equal(mapped.offsets, in_memory.offsets)
    assert prepared.pairs == from_text.pairs  # valid and test text, which BLEU reads
    manifest = json.loads((multi30k_prepared / MANIFEST).read_text(encoding="utf-8"))
    assert manifest["pairs"] == {"train": 29000, "valid": 1014, "test": 1000}
    assert manifest["vocab_sizes"] == {"src": 7853, "trg": 5893}


def test_training_on_a_prepared_folder_repeats_training_on_the_text(
    tmp_path, multi30k_prepared, multi30k_dir
):
    raw = {
        "data": {"data_dir": str(multi30k_dir)},
        "model": {"embedding_dim": 16, "hidden_dim": 16, "num_layers": 1, "dropout": 0.2},
        "training": {"epochs": 2, "max_steps": 3, "batch_size": 64},
        "decoding": {"max_len": 12},
    }
    train(from_dict(raw), tmp_path / "text", quiet=True, device="cpu")
    raw["data"]["prepared"] = str(multi30k_prepared)
    train(from_dict(raw), tmp_path / "prepared", quiet=True, device="cpu")
    runs = [
        [json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        for run in ("text", "prepared")
    ]
    for key in ("train_loss", "valid_loss", "valid_teacher_forced_loss", "valid_bleu"):
        assert [record[key] for record in runs[0]] == [record[key] for record in runs[1]]
    best = [load_checkpoint(tmp_path / run / "best.pt") for run in ("text", "prepared")]
    assert all(torch.equal(best[0]["model"][k], best[1]["model"][k]) for k in best[0]["model"])
    assert best[1]["src_vocab"] == best[0]["src_vocab"]  # the checkpoint alone translates


def test_train_prepared_adopts_the_folders_settings(tmp_path):
    prepare(DataConfig(**TOY, tokenizer="whitespace"), tmp_path / "toy")
    config = from_dict({"data": {"prepared": str(tmp_path / "toy")}, **TINY})
    train(config, tmp_path / "run", quiet=True, device="cpu")
    data = load_checkpoint(tmp_path / "run" / "best.pt")["config"]["data"]
    assert (data["tokenizer"], data["src_lang"], data["trg_lang"]) == ("whitespace", "en", "es")


def test_parallel_files_of_different_lengths_are_refused_before_anything_is_written(tmp_path):
    config = files_config(tmp_path, PAIRS)
    (tmp_path / "trg.txt").write_text("one line\n", encoding="utf-8")
    with pytest.raises(EncdecError, match=r"src.txt has 40 lines but .*trg.txt has 1"):
        prepare(config, tmp_path / "out")
    assert leftovers(tmp_path) == []


def test_a_line_that_is_not_utf8_is_named_and_no_folder_is_left(tmp_path):
    config = files_config(tmp_path, PAIRS)
    lines = (tmp_path / "src.txt").read_bytes().split(b"\n")
    lines[6] = b"caf\xe9"
    (tmp_path / "src.txt").write_bytes(b"\n".join(lines))
    with pytest.raises(EncdecError, match=r"src.txt:7: not valid UTF-8"):
        prepare(config, tmp_path / "out")
    assert leftovers(tmp_path) == []


def test_an_interrupted_prepare_leaves_no_folder_that_looks_finished(tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(prepare_module, "_write_side", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare(files_config(tmp_path, PAIRS), tmp_path / "out")
    assert leftovers(tmp_path) == []


def test_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(prepare_module, "_write_side", disk_full)
    with pytest.raises(EncdecError, match=r"cannot write the prepared corpus .*No space left"):
        prepare(files_config(tmp_path, PAIRS), tmp_path / "out")
    assert leftovers(tmp_path) == []


def test_an_existing_folder_is_kept_unless_overwrite_is_asked(tmp_path):
    config = files_config(tmp_path, PAIRS)
    prepare(config, tmp_path / "out")
    with pytest.raises(EncdecError, match="exists.*--overwrite"):
        prepare(config, tmp_path / "out")
    prepare(DataConfig(**{**config.__dict__, "min_freq": 20}), tmp_path / "out", overwrite=True)
    manifest = json.loads((tmp_path / "out" / MANIFEST).read_text(encoding="utf-8"))
    assert manifest["settings"]["min_freq"] == 20
    assert leftovers(tmp_path) == ["out"]


@pytest.fixture(scope="module")
def toy_prepared(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("toy") / "toy"
    prepare(DataConfig(**TOY), out, workers=1)
    return out


def test_a_folder_made_with_other_settings_is_refused_naming_each(toy_prepared):
    config = DataConfig(**{**TOY, "min_freq": 2, "lowercase": False}, prepared=str(toy_prepared))
    with pytest.raises(EncdecError) as error:
        build_corpus(config)
    message = str(error.value)
    assert "data.min_freq 1 there, 2 in the config" in message
    assert "data.lowercase True there, False in the config" in message
    assert "encdec prepare" in message and "\n" not in message


def copy_of(folder: Path, destination: Path) -> Path:
    destination.mkdir()
    for path in folder.iterdir():
        (destination / path.name).write_bytes(path.read_bytes())
    return destination


def test_another_format_version_is_refused_with_how_to_rebuild(toy_prepared, tmp_path):
    copy = copy_of(toy_prepared, tmp_path / "old")
    manifest = json.loads((copy / MANIFEST).read_text(encoding="utf-8"))
    (copy / MANIFEST).write_text(json.dumps({**manifest, "format_version": 0}), encoding="utf-8")
    with pytest.raises(EncdecError, match=r"format 0, this encdec reads format 1; rebuild"):
        build_corpus(DataConfig(**TOY, prepared=str(copy)))


def test_a_cut_short_or_changed_array_is_refused(toy_prepared, tmp_path):
    cut = copy_of(toy_prepared, tmp_path / "cut")
    ids = cut / "train.src.ids.npy"
    ids.write_bytes(ids.read_bytes()[:-10])
    with pytest.raises(EncdecError, match=r"train.src.ids.npy has .* bytes, .* expected"):
        build_corpus(DataConfig(**TOY, prepared=str(cut)))
    changed = copy_of(toy_prepared, tmp_path / "changed")
    ids = changed / "train.trg.ids.npy"
    data = bytearray(ids.read_bytes())
    data[-1] ^= 1
    ids.write_bytes(bytes(data))
    with pytest.raises(EncdecError, match=r"train.trg.ids.npy fails its checksum"):
        build_corpus(DataConfig(**TOY, prepared=str(changed)))


def test_a_folder_without_manifest_is_not_taken_for_a_prepared_corpus(toy_prepared, tmp_path):
    copy = copy_of(toy_prepared, tmp_path / "half")
    (copy / MANIFEST).unlink()
    with pytest.raises(EncdecError, match=r"not a finished prepared corpus"):
        build_corpus(DataConfig(**TOY, prepared=str(copy)))


def test_whitespace_tokenized_text_with_a_given_subword_model(tmp_path, toy_prepared):
    learnt = build_corpus(DataConfig(**TOY, subwords="bpe", subword_vocab_size=120))
    model_path = tmp_path / "bpe.json"
    model_path.write_text(learnt.src_tokenizer.subwords.serialized, encoding="utf-8")
    pairs = [("Das  ist gut .", "that is good ."), ("Gut !", "good !")] * 3
    config = files_config(tmp_path, pairs, subwords="bpe", subword_model=str(model_path))
    corpus = build_corpus(DataConfig(**{**config.__dict__, "tokenizer": "whitespace"}))
    serialized = learnt.src_tokenizer.subwords.serialized
    assert corpus.src_tokenizer.subwords.serialized == serialized
    assert corpus.trg_tokenizer.subwords.serialized == serialized
    words = corpus.trg_tokenizer.to_words(corpus.trg_vocab.decode(corpus.ids["train"].pair(1)[1]))
    assert words == ["good", "!"]


def test_a_subword_model_without_subwords_is_refused():
    config = from_dict({"data": {"subword_model": "bpe.json"}})
    with pytest.raises(EncdecError, match="subword_model.*data.subwords: bpe or unigram"):
        check_every_key_counts(config)


def test_prepare_train_and_evaluate_from_the_command_line(tmp_path, capsys):
    out, run = tmp_path / "toy", tmp_path / "run"
    settings = [f"--set=data.{key}={value}" for key, value in TOY.items()]
    assert main(["prepare", *settings, "--out", str(out), "--workers", "2", "--quiet"]) == 0
    assert "train 107, valid 10, test 10 pairs" in capsys.readouterr().out
    config_path = tmp_path / "tiny.yaml"
    config_path.write_text(yaml.safe_dump(TINY), encoding="utf-8")
    options = ["--prepared", str(out), "--out", str(run), "--device", "cpu", "--quiet"]
    assert main(["train", "--config", str(config_path), *options]) == 0
    assert main(["evaluate", str(run), "--split", "valid", "--json", "--device", "cpu"]) == 0
    scores = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert scores["bleu"] >= 0 and np.isfinite(scores["loss"])
    assert main(["evaluate", str(run), "--split", "train", "--device", "cpu"]) != 0
    assert "keeps the text of valid and test only" in capsys.readouterr().err


def test_a_killed_run_on_a_prepared_folder_resumes_to_the_uninterrupted_weights(
    tmp_path, toy_prepared
):
    raw = {
        "data": {"prepared": str(toy_prepared)},
        **TINY,
        "training": {**TINY["training"], "epochs": 3, "save_every_steps": 1, "batch_size": 8},
    }
    train(from_dict(raw), tmp_path / "whole", quiet=True, device="cpu")
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    command = [sys.executable, "-m", "encdec", "train", "--config", str(config_path)]
    options = ["--out", str(tmp_path / "killed"), "--device", "cpu", "--quiet"]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([*command, *options], env=environment)
    last = tmp_path / "killed" / "last.pt"
    deadline = time.monotonic() + 120
    while not (last.is_file() and load_checkpoint(last)["epoch"] >= 2):
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=60)
    assert not load_checkpoint(last)["finished"]
    resume = [sys.executable, "-m", "encdec", "train", "--resume", str(tmp_path / "killed")]
    done = subprocess.run([*resume, "--device", "cpu", "--quiet"], env=environment, timeout=300)
    assert done.returncode == 0
    whole = load_checkpoint(tmp_path / "whole" / "last.pt")["model"]
    resumed = load_checkpoint(last)["model"]
    assert all(torch.equal(whole[name], resumed[name]) for name in whole)


def test_a_run_on_a_prepared_folder_translates_without_the_folder(tmp_path, toy_prepared):
    raw = {"data": {"prepared": str(toy_prepared)}, **TINY}
    train(from_dict(raw), tmp_path / "run", quiet=True, device="cpu")
    moved = toy_prepared.with_name("moved")
    toy_prepared.rename(moved)  # the checkpoint holds the vocabularies and data settings
    try:
        translator = Translator.load(tmp_path / "run" / "best.pt", device="cpu")
        assert translator.translate(["let's go", "thank you"]) == translator.translate(
            ["let's go", "thank you"]
        )
        assert (
            len(translator.src_vocab)
            == json.loads((moved / MANIFEST).read_text())["vocab_sizes"]["src"]
        )
    finally:
        moved.rename(toy_prepared)


def test_gzipped_parallel_files_are_read_line_for_line(tmp_path):
    for side, text in (("src", "a b\nc d\n" * 5), ("trg", "x y\nz w\n" * 5)):
        with gzip.open(tmp_path / f"{side}.gz", "wt", encoding="utf-8") as file:
            file.write(text)
    paths = {
        f"{split}_{side}": str(tmp_path / f"{side}.gz")
        for split in ("train", "valid", "test")
        for side in ("src", "trg")
    }
    config = DataConfig(dataset="files", tokenizer="whitespace", min_freq=1, **paths)
    manifest = prepare(config, tmp_path / "out")
    assert manifest["pairs"]["train"] == 10 and manifest["tokens"]["train"] == {
        "src": 20,
        "trg": 20,
    }
