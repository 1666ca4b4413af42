"""Tests for encdec.training: label smoothing, lr schedules, early stopping, best-epoch choice."""

import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from pairs import pairs_of_examples, update_on
from torch import nn
from torch.nn import functional as F

from encdec.batching import collate
from encdec.checkpoint import average_checkpoints, load_checkpoint, save_checkpoint
from encdec.config import Config, ModelConfig, TrainingConfig, from_dict
from encdec.corpus import build_corpus
from encdec.errors import EncdecError
from encdec.model import build_model
from encdec.steps import (
    batch_scheduler,
    epoch_scheduler,
    make_optimizer,
    teacher_forcing_coins,
    token_losses,
)
from encdec.training import evaluate_split, train
from encdec.translator import Translator

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PAD, VOCAB_SIZE = 1, 12  # <pad> is id 1 in every encdec vocabulary
# (source, target) ids with <sos>=2 and <eos>=3; different lengths, so the batch has padding
EXAMPLES = pairs_of_examples(
    [
        ([2, 4, 5, 6, 3], [2, 7, 8, 3]),
        ([2, 9, 3], [2, 10, 11, 4, 5, 3]),
        ([2, 6, 7, 8, 9, 10, 3], [2, 11, 3]),
    ]
)
TINY_MODEL = ModelConfig(embedding_dim=8, hidden_dim=16, num_layers=1, dropout=0.0)


def toy_config(**training) -> Config:
    """A tiny model on the demo's toy phrases; each epoch is two batches."""
    return from_dict(
        {
            "data": {"dataset": "toy", "src_lang": "en", "trg_lang": "es", "min_freq": 1},
            "model": {"embedding_dim": 8, "hidden_dim": 16, "num_layers": 1, "dropout": 0.0},
            "training": {"epochs": 4, "batch_size": 16, "max_steps": 2, **training},
            "decoding": {"max_len": 5},
        }
    )


def script_validation(monkeypatch, losses: list[float], bleus: list[float]) -> None:
    """Replace validation with these scores, one per epoch, so selection is certain and fast."""
    scores = iter(zip(losses, bleus))

    def scripted(model, corpus, split, config) -> dict:
        loss, bleu = next(scores) if split == "valid" else (1.0, 0.0)
        keys = ("loss", "ppl", "teacher_forced_loss", "teacher_forced_ppl", "bleu", "chrf")
        values = (loss, math.exp(loss), loss, math.exp(loss), bleu, bleu)
        return {f"{split}_{key}": value for key, value in zip(keys, values)}

    monkeypatch.setattr("encdec.training.evaluate_split", scripted)


def read_records(out_dir: Path) -> list[dict]:
    lines = (out_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def random_logits_and_targets() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 3, VOCAB_SIZE, generator=generator, requires_grad=True)  # (T-1, B, V)
    targets = torch.randint(2, VOCAB_SIZE, (5, 3), generator=generator)  # (T-1, B)
    targets[3:, 0] = PAD
    targets[4:, 2] = PAD
    return logits, targets


def test_unsmoothed_loss_equals_cross_entropy_loss():
    logits, targets = random_logits_and_targets()
    reported, trained = token_losses(logits, targets, PAD, label_smoothing=0.0)
    criterion = nn.CrossEntropyLoss(ignore_index=PAD, reduction="sum")
    expected = criterion(logits.flatten(0, 1), targets.flatten())
    torch.testing.assert_close(reported, expected)
    torch.testing.assert_close(trained, expected)


def test_smoothed_loss_equals_torch_label_smoothing_and_ignores_padding():
    logits, targets = random_logits_and_targets()
    reported, trained = token_losses(logits, targets, PAD, label_smoothing=0.1)
    flat_logits, flat_targets = logits.flatten(0, 1), targets.flatten()
    smoothed = F.cross_entropy(
        flat_logits, flat_targets, ignore_index=PAD, label_smoothing=0.1, reduction="sum"
    )
    plain = F.cross_entropy(flat_logits, flat_targets, ignore_index=PAD, reduction="sum")
    torch.testing.assert_close(trained, smoothed)
    torch.testing.assert_close(reported, plain)


def gradients_after_one_batch(label_smoothing: float) -> tuple[nn.Module, float, list]:
    """A fresh tiny model, its reported loss and its gradient after one training step."""
    torch.manual_seed(0)
    model = build_model(TINY_MODEL, VOCAB_SIZE, VOCAB_SIZE)
    optimizer = make_optimizer(model, 0.0)  # keeps the weights and the gradient
    loss = update_on(
        model,
        EXAMPLES,
        [0, 1, 2],
        optimizer,
        teacher_forcing_ratio=1.0,
        clip=1e9,
        label_smoothing=label_smoothing,
    )
    return model, loss, [parameter.grad.clone() for parameter in model.parameters()]


def test_label_smoothing_changes_gradient_not_reported_loss():
    model, reported, gradients = gradients_after_one_batch(label_smoothing=0.1)
    batch = collate(EXAMPLES, [0, 1, 2], PAD)
    model.zero_grad()
    logits = model(batch.src, batch.src_lengths, batch.trg, 1.0)  # (T-1, B, V)
    flat_logits, targets = logits.flatten(0, 1), batch.trg[1:].flatten()
    smoothed = F.cross_entropy(
        flat_logits, targets, ignore_index=PAD, label_smoothing=0.1, reduction="sum"
    )
    (smoothed / batch.n_target_tokens).backward()
    for parameter, gradient in zip(model.parameters(), gradients):
        torch.testing.assert_close(gradient, parameter.grad)
    plain = F.cross_entropy(flat_logits, targets, ignore_index=PAD).item()
    assert reported == pytest.approx(plain)

    _, unsmoothed_reported, unsmoothed_gradients = gradients_after_one_batch(label_smoothing=0.0)
    assert reported == pytest.approx(unsmoothed_reported)
    assert not all(torch.allclose(a, b) for a, b in zip(gradients, unsmoothed_gradients))


def toy_optimizer() -> torch.optim.Optimizer:
    return torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)


def test_warmup_decay_rises_linearly_then_decays_as_inverse_square_root():
    optimizer = toy_optimizer()
    settings = TrainingConfig(lr_schedule="warmup_decay", warmup_steps=4)
    scheduler = batch_scheduler(optimizer, settings)
    assert epoch_scheduler(optimizer, settings) is None
    lrs = []
    for _ in range(8):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    expected = [0.25, 0.5, 0.75, 1.0] + [math.sqrt(4 / step) for step in (5, 6, 7, 8)]
    assert lrs == pytest.approx(expected)


def plateau_lrs(settings: TrainingConfig, metrics: list[float]) -> list[float]:
    """The lr after each epoch's plateau check on `metrics`, starting from lr 1."""
    optimizer = toy_optimizer()
    scheduler = epoch_scheduler(optimizer, settings)
    assert batch_scheduler(optimizer, settings) is None
    lrs = []
    for metric in metrics:
        scheduler.step(metric)
        lrs.append(optimizer.param_groups[0]["lr"])
    return lrs


def test_plateau_cuts_lr_after_lr_patience_stalled_epochs_down_to_min_lr():
    settings = TrainingConfig(lr_schedule="plateau", lr_decay_factor=0.5, lr_patience=1, min_lr=0.2)
    losses = [1.0, 0.9, 0.95, 0.95, 0.95, 0.95, 0.95, 0.95]
    assert plateau_lrs(settings, losses) == pytest.approx([1, 1, 1, 0.5, 0.5, 0.25, 0.25, 0.2])


def test_plateau_on_bleu_cuts_lr_only_when_bleu_stops_rising():
    settings = TrainingConfig(lr_schedule="plateau", select_by="bleu", lr_patience=0)
    assert plateau_lrs(settings, [10, 12, 11, 13, 13]) == pytest.approx([1, 1, 0.5, 0.5, 0.25])


def test_no_schedule_keeps_lr_and_logs_it_each_epoch(tmp_path, monkeypatch):
    settings = TrainingConfig()
    assert settings.lr_schedule == "none"
    assert batch_scheduler(toy_optimizer(), settings) is None
    assert epoch_scheduler(toy_optimizer(), settings) is None
    script_validation(monkeypatch, [4.0, 3.0, 2.0], [1.0, 2.0, 3.0])
    train(toy_config(epochs=3, lr=0.002), tmp_path, quiet=True)
    assert [record["lr"] for record in read_records(tmp_path)] == [0.002] * 3
    epoch_lines = [
        line for line in (tmp_path / "train.log").read_text().splitlines() if "| lr " in line
    ]
    assert len(epoch_lines) == 3 and all("lr 2.00e-03" in line for line in epoch_lines)


def test_warmup_decay_steps_the_lr_each_batch_in_training(tmp_path, monkeypatch):
    script_validation(monkeypatch, [4.0, 3.0, 2.0], [1.0, 2.0, 3.0])
    config = toy_config(epochs=3, lr=1.0, lr_schedule="warmup_decay", warmup_steps=4)
    train(config, tmp_path, quiet=True)
    # two batches per epoch: the lr after 2, 4 and 6 updates
    lrs = [record["lr"] for record in read_records(tmp_path)]
    assert lrs == pytest.approx([0.75, math.sqrt(4 / 5), math.sqrt(4 / 7)])


def test_plateau_in_training_follows_the_selection_metric(tmp_path, monkeypatch):
    # valid loss keeps falling while BLEU stalls at epoch 3: with select_by bleu, the lr is cut
    script_validation(monkeypatch, [4.0, 3.0, 2.0, 1.0], [1.0, 2.0, 2.0, 3.0])
    config = toy_config(select_by="bleu", lr_schedule="plateau", lr_patience=0, lr=0.002)
    train(config, tmp_path, quiet=True)
    assert [record["lr"] for record in read_records(tmp_path)] == [0.002, 0.002, 0.002, 0.001]


def test_training_stops_after_patience_epochs_without_improvement(tmp_path, monkeypatch):
    script_validation(monkeypatch, [3.0, 2.0, 2.5, 2.2, 1.0, 0.5], [0.0] * 6)
    train(toy_config(epochs=6, patience=2), tmp_path, quiet=True)
    assert [record["epoch"] for record in read_records(tmp_path)] == [1, 2, 3, 4]
    log_text = (tmp_path / "train.log").read_text(encoding="utf-8")
    assert "early stopping after epoch 4: valid loss has not improved for 2 epochs" in log_text
    assert load_checkpoint(tmp_path / "best.pt")["epoch"] == 2


def test_training_without_patience_runs_every_epoch(tmp_path, monkeypatch):
    script_validation(monkeypatch, [3.0, 4.0, 5.0, 6.0], [0.0] * 4)
    train(toy_config(epochs=4), tmp_path, quiet=True)
    assert len(read_records(tmp_path)) == 4
    assert "early stopping" not in (tmp_path / "train.log").read_text(encoding="utf-8")


@pytest.mark.parametrize("select_by, best_epoch", [("bleu", 2), ("loss", 4)])
def test_select_by_keeps_the_epoch_with_the_best_selection_metric(
    tmp_path, monkeypatch, select_by, best_epoch
):
    losses, bleus = [4.0, 3.0, 2.0, 1.0], [5.0, 20.0, 10.0, 15.0]
    script_validation(monkeypatch, losses, bleus)
    train(toy_config(select_by=select_by), tmp_path, quiet=True)
    checkpoint = load_checkpoint(tmp_path / "best.pt")
    assert checkpoint["epoch"] == best_epoch
    expected = bleus if select_by == "bleu" else losses
    assert checkpoint[f"valid_{select_by}"] == expected[best_epoch - 1]


def test_evaluate_split_reports_bleu_and_chrf():
    config = toy_config()
    corpus = build_corpus(config.data)
    torch.manual_seed(0)
    model = build_model(config.model, len(corpus.src_vocab), len(corpus.trg_vocab))
    scores = evaluate_split(model, corpus, "valid", config)
    assert {"valid_loss", "valid_ppl", "valid_bleu", "valid_chrf"} <= set(scores)
    assert 0 <= scores["valid_chrf"] <= 100


def test_keep_checkpoints_keeps_the_last_epochs_weights(tmp_path, monkeypatch):
    script_validation(monkeypatch, [4.0, 3.0, 2.0, 1.0], [1.0, 2.0, 3.0, 4.0])
    train(toy_config(keep_checkpoints=2), tmp_path, quiet=True)
    assert sorted(p.name for p in tmp_path.glob("epoch_*.pt")) == ["epoch_003.pt", "epoch_004.pt"]
    last_epoch = load_checkpoint(tmp_path / "epoch_004.pt")
    assert "optimizer" not in last_epoch  # weights to translate with, not training state
    for name, tensor in load_checkpoint(tmp_path / "last.pt")["model"].items():
        assert torch.equal(last_epoch["model"][name], tensor)


def test_averaged_checkpoint_holds_the_mean_weights_and_translates(tmp_path, monkeypatch):
    script_validation(monkeypatch, [4.0, 3.0, 2.0, 1.0], [1.0, 2.0, 3.0, 4.0])
    train(toy_config(keep_checkpoints=3), tmp_path, quiet=True)
    paths = sorted(tmp_path.glob("epoch_*.pt"))
    averaged = average_checkpoints(paths)
    weights = [load_checkpoint(path)["model"] for path in paths]
    for name, tensor in averaged["model"].items():
        expected = sum(w[name].double() for w in weights) / 3
        torch.testing.assert_close(tensor, expected.float())
        assert not torch.equal(tensor, weights[-1][name])
    save_checkpoint(averaged, tmp_path / "avg.pt")
    assert len(Translator.load(tmp_path / "avg.pt").translate(["good morning"])) == 1


def test_averaging_checkpoints_of_other_models_is_an_error(tmp_path, monkeypatch):
    script_validation(monkeypatch, [4.0, 3.0, 2.0, 1.0] * 2, [1.0, 2.0, 3.0, 4.0] * 2)
    train(toy_config(), tmp_path / "small", quiet=True)
    wider = toy_config()
    wider.model.hidden_dim = 24
    train(wider, tmp_path / "wide", quiet=True)
    with pytest.raises(EncdecError, match="another model config"):
        average_checkpoints([tmp_path / "small/best.pt", tmp_path / "wide/best.pt"])


def test_a_ratio_of_0_or_1_draws_no_coins_from_any_generator():
    torch.manual_seed(0)
    model = build_model(TINY_MODEL, VOCAB_SIZE, VOCAB_SIZE)
    coins = torch.Generator().manual_seed(0)
    before = (coins.get_state(), torch.get_rng_state(), random.getstate())
    for ratio in (0.0, 1.0):
        assert teacher_forcing_coins(ratio, EXAMPLES, [0, 1, 2], coins) is None
        update_on(model, EXAMPLES, [0, 1], make_optimizer(model, 0.01), teacher_forcing_ratio=ratio)
    after = (coins.get_state(), torch.get_rng_state(), random.getstate())
    assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])
    assert before[2] == after[2]


def test_the_same_seed_draws_the_same_coins_one_per_step_of_the_longest_target():
    def coins(seed: int) -> torch.Tensor:
        return teacher_forcing_coins(0.5, EXAMPLES, [0, 1, 2], torch.Generator().manual_seed(seed))

    assert coins(1).shape == (6 - 2,)  # the longest target: <sos> 10 11 4 5 <eos>
    assert torch.equal(coins(1), coins(1))
    assert not torch.equal(coins(1), coins(2))


def test_a_share_of_a_batch_reads_the_first_of_the_batchs_coins():
    torch.manual_seed(0)
    model = build_model(TINY_MODEL, VOCAB_SIZE, VOCAB_SIZE).eval()
    coins = torch.tensor([0.9, 0.1, 0.1, 0.9])  # free, forced, forced, free at ratio 0.5
    whole = collate(EXAMPLES, [0, 1, 2], PAD)
    share = collate(EXAMPLES, [0, 2], PAD)  # targets of 4 and 3 tokens: reads 2 coins
    with torch.no_grad():
        whole_logits = model(whole.src, whole.src_lengths, whole.trg, 0.5, coins)
        share_logits = model(share.src, share.src_lengths, share.trg, 0.5, coins)
        reading_the_last_coins = model(share.src, share.src_lengths, share.trg, 0.5, coins[2:])
    torch.testing.assert_close(share_logits, whole_logits[:3, [0, 2]], atol=1e-6, rtol=0)
    assert not torch.allclose(share_logits, reading_the_last_coins, atol=1e-4)


def test_a_ratio_between_0_and_1_needs_coins():
    model = build_model(TINY_MODEL, VOCAB_SIZE, VOCAB_SIZE)
    batch = collate(EXAMPLES, [0, 1, 2], PAD)
    with pytest.raises(EncdecError, match="teacher_forcing_ratio 0.5 needs coins"):
        model(batch.src, batch.src_lengths, batch.trg, 0.5)
    with pytest.raises(EncdecError, match="teacher_forcing_ratio 0.5 needs a generator"):
        teacher_forcing_coins(0.5, EXAMPLES, [0, 1, 2], None)


def test_max_steps_ends_each_epoch_and_max_updates_the_whole_run(tmp_path):
    # toy epochs are 7 batches of 16
    train(toy_config(epochs=3, max_steps=2), tmp_path / "steps", quiet=True, device="cpu")
    assert [record["update"] for record in read_records(tmp_path / "steps")] == [2, 4, 6]
    train(toy_config(max_steps=None, max_updates=10), tmp_path / "updates", quiet=True)
    records = read_records(tmp_path / "updates")
    assert [(record["epoch"], record["update"]) for record in records] == [(1, 7), (2, 10)]
    last = load_checkpoint(tmp_path / "updates" / "last.pt")
    assert (last["epoch"], last["step"], last["updates"], last["finished"]) == (2, 3, 10, True)
    assert "training.max_updates 10 reached in epoch 2" in read_log(tmp_path / "updates")


def read_log(run_dir: Path) -> str:
    return (run_dir / "train.log").read_text(encoding="utf-8")


def test_a_budget_that_epochs_end_first_is_warned_of(tmp_path):
    train(toy_config(epochs=1, max_updates=10), tmp_path, quiet=True, device="cpu")
    assert "training.max_updates 10 will not be reached: training.epochs 1 of 2 batches" in (
        read_log(tmp_path)
    )


def test_validating_every_n_updates_counts_patience_and_plateau_in_validations(
    tmp_path, monkeypatch
):
    # validations at updates 3, 6, 7 (epoch 1's end), 9: the loss stalls twice after update 6
    script_validation(monkeypatch, [3.0, 2.0, 2.5, 2.2, 1.0], [0.0] * 5)
    settings = {"max_steps": None, "validate_every_updates": 3, "patience": 2, "lr": 0.002}
    settings |= {"lr_schedule": "plateau", "lr_patience": 0}
    train(toy_config(**settings), tmp_path, quiet=True, device="cpu")
    records = read_records(tmp_path)
    assert [(record["epoch"], record["update"]) for record in records] == [
        (1, 3),
        (1, 6),
        (1, 7),
        (2, 9),
    ]
    assert [record["epoch_end"] for record in records] == [False, False, True, False]
    assert [record["lr"] for record in records] == [0.002, 0.002, 0.002, 0.001]
    best = load_checkpoint(tmp_path / "best.pt")
    assert (best["epoch"], best["update"]) == (1, 6)
    assert (
        "early stopping at update 9: valid loss has not improved for 2 validations "
        "(best 2.000 at update 6)" in read_log(tmp_path)
    )
    assert load_checkpoint(tmp_path / "last.pt")["finished"]


def test_a_progress_line_every_log_every_updates_updates(tmp_path):
    train(toy_config(epochs=2, max_steps=None, log_every_updates=3), tmp_path, quiet=True)
    lines = [line for line in read_log(tmp_path).splitlines() if "(epoch so far)" in line]
    assert [line.split(" | ")[1] for line in lines] == [f"update {n}" for n in (3, 6, 9, 12)]


def test_progress_lines_reach_a_stderr_that_is_not_a_terminal(tmp_path):
    # as under nohup or in a batch job: no bars are drawn there, but the log lines are
    config_path = tmp_path / "config.yaml"
    raw = toy_config(epochs=1, max_steps=None, log_every_updates=2).to_dict()
    config_path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    command = [sys.executable, "-m", "encdec", "train", "--config", str(config_path)]
    command += ["--out", str(tmp_path / "run"), "--device", "cpu"]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "epoch  1/1 | update 6 | train loss" in done.stderr
    assert "epoch  1/1 | update 7 | 0m" in done.stderr  # the epoch's validation
