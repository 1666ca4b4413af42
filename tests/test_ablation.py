"""benchmarks/ablation.py: a plan's runs trained and kept, its decodings scored (toy data, CPU)."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from encdec.data import toy_phrases

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "ablation.py"
TOY_BASE = {
    "data": {"dataset": "toy", "src_lang": "en", "trg_lang": "es", "min_freq": 1},
    "model": {"embedding_dim": 16, "hidden_dim": 32, "num_layers": 1, "attention": "dot"},
    "training": {"epochs": 2, "batch_size": 16, "lr": 0.01, "keep_checkpoints": 2},
    "decoding": {"max_len": 8, "beam_size": 2},
}
PLAN = {
    "runs": {"forward": [], "backward": ["data.reverse_trg=true"]},
    "decodings": {"forward<backward": {"ensemble": ["forward"], "rescore": ["backward"]}},
}


def load_script():
    spec = importlib.util.spec_from_file_location("ablation", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["ablation"] = module  # its dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def write_plan(folder: Path, plan: dict) -> Path:
    (folder / "base.yaml").write_text(yaml.safe_dump(TOY_BASE), encoding="utf-8")
    path = folder / "plan.yaml"
    path.write_text(
        yaml.safe_dump({"base": str(folder / "base.yaml"), **plan}, sort_keys=False),
        encoding="utf-8",
    )
    return path


def test_each_pair_gets_its_languages_and_each_run_is_scored_alone(tmp_path):
    plan = write_plan(tmp_path, {**PLAN, "pairs": ["de-en", "fr-en"]})
    _, runs, decodings = load_script().read_plan(plan, tmp_path / "out")
    backward = [run for run in runs if run.name == "backward"]
    assert [run.overrides for run in backward] == [
        ["data.src_lang=de", "data.trg_lang=en", "data.reverse_trg=true"],
        ["data.src_lang=fr", "data.trg_lang=en", "data.reverse_trg=true"],
    ]
    assert backward[1].folder == tmp_path / "out" / "fr-en" / "backward"
    names = [(decoding.pair, decoding.name) for decoding in decodings]
    assert names.count(("de-en", "forward")) == 1 and ("fr-en", "forward<backward") in names


def test_a_run_that_names_another_starts_from_its_overrides(tmp_path):
    runs = {
        "wd": ["model.word_dropout=0.1"],
        "big": ["wd", "model.hidden_dim=64"],
        "big_r2l": ["big", "data.reverse_trg=true"],
    }
    _, planned, _ = load_script().read_plan(write_plan(tmp_path, {"runs": runs}), tmp_path)
    assert planned[2].overrides == [
        "model.word_dropout=0.1",
        "model.hidden_dim=64",
        "data.reverse_trg=true",
    ]


@pytest.mark.parametrize(
    ("runs", "message"),
    [
        ({"a": ["b"], "b": ["a"]}, r"run 'a' extends itself: a -> b -> a"),
        ({"a": ["seed2"]}, r"run 'a': 'seed2' is neither KEY=VALUE nor a run"),
    ],
)
def test_a_run_that_names_no_run_or_itself_is_refused(tmp_path, runs, message):
    with pytest.raises(SystemExit, match=message):
        load_script().read_plan(write_plan(tmp_path, {"runs": runs}), tmp_path)


def test_a_decodings_options_reach_encdec_evaluate(tmp_path, monkeypatch):
    plan = {**PLAN, "decodings": {"lp": {"ensemble": ["forward"], "options": ["--beam", 3]}}}
    script = load_script()
    _, _, decodings = script.read_plan(write_plan(tmp_path, plan), tmp_path)
    commands = []

    def evaluate(command, **kwargs):
        commands.append(command)
        return subprocess.CompletedProcess(command, 0, stdout='{"bleu": 1.0}')

    monkeypatch.setattr(script.subprocess, "run", evaluate)
    assert script.score(decodings[-1], tmp_path, "valid", None, "cpu") == {"bleu": 1.0}
    assert commands[0][-2:] == ["--beam", "3"]


def test_a_decodings_channel_runs_come_from_the_pair_that_translates_the_other_way(
    tmp_path, monkeypatch
):
    channel = {"ensemble": ["forward"], "channel": ["forward"], "channel_weight": 0.2}
    plan = {**PLAN, "pairs": ["en-de", "de-en", "fr-en"], "decodings": {"noisy": channel}}
    script = load_script()
    _, _, decodings = script.read_plan(write_plan(tmp_path, plan), tmp_path)
    noisy = [d for d in decodings if d.name == "noisy"]
    assert [d.pair for d in noisy] == ["en-de", "de-en"]  # no en-fr runs to explain fr-en
    assert noisy[0].runs() == [("en-de", "forward"), ("de-en", "forward")]
    commands = []

    def evaluate(command, **kwargs):
        commands.append(command)
        return subprocess.CompletedProcess(command, 0, stdout='{"bleu": 1.0}')

    monkeypatch.setattr(script.subprocess, "run", evaluate)
    script.score(noisy[0], tmp_path, "valid", None, "cpu")
    at = commands[0].index("--channel")
    assert commands[0][at : at + 4] == [
        "--channel",
        str(tmp_path / "de-en" / "forward" / "best.pt"),
        "--channel-weight",
        "0.2",
    ]
    as_configured = {**PLAN, "decodings": {"noisy": channel}}
    with pytest.raises(SystemExit, match="decoding 'noisy' needs pairs"):
        script.read_plan(write_plan(tmp_path, as_configured), tmp_path)


def test_runs_and_pairs_choose_runs_and_a_qualified_name_brings_a_channel_run(tmp_path):
    channel = {"ensemble": ["forward"], "channel": ["backward"]}
    plan = {**PLAN, "pairs": ["en-de", "de-en"], "decodings": {"noisy": channel}}
    script = load_script()
    _, runs, decodings = script.read_plan(write_plan(tmp_path, plan), tmp_path)

    def chosen(pairs, names):
        runs_chosen, decodings_chosen = script.select(runs, decodings, pairs, names)
        return (
            [(run.pair, run.name) for run in runs_chosen],
            [(d.pair, d.name) for d in decodings_chosen],
        )

    assert chosen("en-de", "forward") == ([("en-de", "forward")], [("en-de", "forward")])
    assert chosen("en-de", "forward,de-en/backward") == (
        [("en-de", "forward"), ("de-en", "backward")],
        [("en-de", "forward"), ("en-de", "noisy")],
    )
    assert len(chosen(None, None)[0]) == 4 and len(chosen(None, None)[1]) == 6


def test_a_decoding_that_names_no_run_is_refused(tmp_path):
    bad = {**PLAN, "decodings": {"x": {"ensemble": ["forward", "sideways"]}}}
    with pytest.raises(SystemExit, match=r"decoding 'x' names no run \['sideways'\]"):
        load_script().read_plan(write_plan(tmp_path, bad), tmp_path / "out")


def test_the_plan_trains_averages_and_scores_then_keeps_finished_runs(tmp_path, monkeypatch):
    out = tmp_path / "out"
    plan = {
        "runs": {**PLAN["runs"], "broken": ["model.cell=transformer"]},
        "decodings": {**PLAN["decodings"], "forward+broken": {"ensemble": ["forward", "broken"]}},
    }
    command = [sys.executable, str(SCRIPT), str(write_plan(tmp_path, plan)), "--out", str(out)]
    done = subprocess.run(
        [*command, "--device", "cpu", "--parallel", "2"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    # a failed run costs only the decodings that need it; the exit status says something failed
    assert done.returncode == 1, done.stderr[-3000:]
    broken_log = out / "as-configured" / "broken.out"
    assert "run as-configured/broken failed" in done.stdout and str(broken_log) in done.stdout
    assert "must be one of" in broken_log.read_text() and "forward+broken" not in done.stdout
    rows = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
    assert sorted((row["decoding"], row["split"]) for row in rows) == [
        ("backward", "valid"),
        ("forward", "valid"),
        ("forward<backward", "valid"),
    ]
    assert all(0 <= row["bleu"] <= 100 and row["loss"] > 0 for row in rows)
    for name in ("forward", "backward"):
        assert (out / "as-configured" / name / "avg.pt").is_file()
        assert f"as-configured  {name}" in done.stdout
    assert "training min" in done.stdout and "wall clock of this call" in done.stdout

    tested = subprocess.run(
        [*command, "--device", "cpu", "--runs", "forward", "--test"],
        capture_output=True,
        text=True,
        timeout=300,
    )  # the finished run is kept; only its decodings are scored again
    assert tested.returncode == 0, tested.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()][3:]
    assert [(row["decoding"], row["split"]) for row in rows] == [
        ("forward", "valid"),
        ("forward", "test"),
    ]
    translations = (out / "as-configured" / "test.forward.txt").read_text(encoding="utf-8")
    assert translations.count("\n") == len(toy_phrases()["test"])

    script = load_script()
    called = []
    monkeypatch.setattr(script.subprocess, "run", lambda *args, **kwargs: called.append(args))
    _, runs, _ = script.read_plan(tmp_path / "plan.yaml", out)
    for run in runs[:2]:
        script.train(run, str(tmp_path / "base.yaml"), "unused", "cpu")
    assert called == []  # finished and averaged: nothing trained again


def test_every_run_of_the_issue_plan_is_a_valid_config(multi30k_dir, monkeypatch):
    from encdec.config import load_config

    monkeypatch.chdir(SCRIPT.parent.parent)  # the plan names its base config from the repo root
    plan = SCRIPT.with_name("ablation.yaml")
    base, runs, decodings = load_script().read_plan(plan, Path("unused"))
    for run in runs:
        load_config(base, [*run.overrides, f"data.data_dir={multi30k_dir}"])
    assert {run.pair for run in runs} == {"de-en", "en-de", "fr-en"}
    assert len(decodings) > len(runs)


def test_the_best_decoding_on_valid_is_chosen_per_pair():
    script = load_script()
    decodings = [
        script.Decoding(pair, name, [name], [], 0.0)
        for pair, name in [("de-en", "a"), ("de-en", "b"), ("fr-en", "a"), ("fr-en", "c")]
    ]
    bleus = [{"bleu": 30.0}, {"bleu": 31.5}, {"bleu": 40.0}, {"error": "failed"}]
    valid = {id(decoding): result for decoding, result in zip(decodings, bleus)}
    chosen = script.best_on_valid(decodings, valid)
    assert [(decoding.pair, decoding.name) for decoding in chosen] == [
        ("de-en", "b"),
        ("fr-en", "a"),
    ]


@pytest.mark.parametrize(
    ("recipe", "pair", "run_name", "settings"),
    [
        ("multi30k_attention_bpe.yaml", "de-en", "bpe_wd", []),
        ("multi30k_attention_bpe.yaml", "de-en", "bpe_wd_seed2", ["training.seed=2"]),
        ("multi30k_attention_bpe.yaml", "de-en", "bpe_r2l", ["data.reverse_trg=true"]),
        ("multi30k_attention_bpe_big.yaml", "en-de", "bpe_wd_big", []),
        ("multi30k_attention_bpe_big.yaml", "en-de", "bpe_big_r2l", ["data.reverse_trg=true"]),
        ("multi30k_attention_r2l.yaml", "fr-en", "r2l", ["data.src_lang=fr"]),
    ],
)
def test_each_recipe_config_is_the_plan_run_it_was_measured_as(recipe, pair, run_name, settings):
    from encdec.config import load_config

    repo = SCRIPT.parent.parent
    base, runs, _ = load_script().read_plan(SCRIPT.with_name("ablation.yaml"), Path("unused"))
    (measured,) = [run for run in runs if (run.pair, run.name) == (pair, run_name)]
    assert load_config(repo / "configs" / recipe, settings) == load_config(
        repo / base, measured.overrides
    )
