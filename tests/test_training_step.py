"""Tests for the training step's traffic with the device: host reads, the non-finite guard, and
batches fed ahead (steps.py, feeding.py)."""

import threading

import numpy as np
import pytest
import torch
from pairs import pairs_of_examples

from encdec import training
from encdec.batching import collate
from encdec.config import ModelConfig, from_dict
from encdec.errors import EncdecError
from encdec.feeding import fed_ahead
from encdec.model import build_model
from encdec.steps import NonFiniteLoss, StepTally, make_optimizer, optimizer_step

pytestmark = pytest.mark.usefixtures("one_torch_thread")

EXAMPLES = pairs_of_examples(
    [([2, 4, 5, 3], [2, 6, 7, 3]), ([2, 8, 3], [2, 9, 10, 11, 3]), ([2, 5, 5, 5, 3], [2, 6, 3])]
)
TINY = ModelConfig(embedding_dim=8, hidden_dim=8, num_layers=1, dropout=0.0)
HOST_READS = ("item", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__")


def counting_host_reads(monkeypatch) -> list[str]:
    """Every call that reads a tensor's values into Python from now on, by method name."""
    calls: list[str] = []
    for name in HOST_READS:
        real = getattr(torch.Tensor, name)

        def counted(tensor, *args, _real=real, _name=name, **kwargs):
            if counting.is_set():
                calls.append(_name)
            return _real(tensor, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return calls


counting = threading.Event()


def toy_recipe(**training_settings) -> dict:
    return {
        "data": {"dataset": "toy", "src_lang": "en", "trg_lang": "es", "min_freq": 1},
        "model": {"embedding_dim": 16, "hidden_dim": 16, "num_layers": 1, "dropout": 0.1},
        "training": {"teacher_forcing_ratio": 1.0, "label_smoothing": 0.1, **training_settings},
        "decoding": {"max_len": 8},
    }


def test_fifty_training_steps_read_the_device_once_per_log_line(tmp_path, monkeypatch):
    calls = counting_host_reads(monkeypatch)
    real_step, steps = training._train_step, []

    def counted_step(run, indices, batch, stop):
        counting.set()  # from the first step on ...
        stopping = real_step(run, indices, batch, stop)
        steps.append(len(calls))
        if len(steps) == 50:
            counting.clear()  # ... to the fiftieth: validation's reads are not the step's
        return stopping

    monkeypatch.setattr(training, "_train_step", counted_step)
    recipe = toy_recipe(batch_size=2, max_updates=50, log_every_updates=10)
    try:
        training.train(from_dict(recipe), tmp_path, quiet=True, device="cpu")
    finally:
        counting.clear()
    assert len(steps) == 50, steps
    assert steps[-1] <= 50 // 10, steps
    assert steps[-1] > 0  # the log lines did read (the count is not blind)
    assert steps[8] == 0  # the first nine steps, before any log line, read nothing


def step_with_loss_times(factor: float, model, optimizer, tally: StepTally) -> None:
    """One optimizer step on a loss of the model's, multiplied by `factor`."""
    batch = collate(EXAMPLES, [0, 2], 1)
    logits = model(batch.src, batch.src_lengths, batch.trg, 1.0)
    loss = logits.float().logsumexp(-1).mean() * factor
    optimizer_step(model, loss, optimizer, 1.0, None, tally)


def test_a_non_finite_step_skips_it_and_every_later_update_and_is_named_when_read():
    torch.manual_seed(0)
    model = build_model(TINY, 12, 12)
    optimizer, tally = make_optimizer(model, 0.01), StepTally(torch.device("cpu"))
    step_with_loss_times(1.0, model, optimizer, tally)
    after_the_good_step = {name: weights.clone() for name, weights in model.state_dict().items()}
    step_with_loss_times(float("nan"), model, optimizer, tally)  # step 2: bad
    step_with_loss_times(1.0, model, optimizer, tally)  # step 3: finite, skipped all the same
    for name, weights in model.state_dict().items():
        assert torch.equal(weights, after_the_good_step[name]), name
    assert optimizer.state_dict()["state"][0]["step"] == 1  # Adam's count did not move
    with pytest.raises(NonFiniteLoss, match=r"^step 2: the loss is nan"):
        tally.read(steps_done=3)


def test_a_tally_read_returns_the_summed_loss_and_starts_again():
    tally = StepTally(torch.device("cpu"))
    tally.add(torch.tensor(2.5))
    tally.add(torch.tensor(1.0))
    assert tally.read(steps_done=2) == 3.5
    assert tally.read(steps_done=2) == 0.0


def test_batches_fed_ahead_arrive_in_order_as_made():
    batches = [np.array([0]), np.array([2, 1]), np.array([1, 0, 2])]
    fed = list(fed_ahead(batches, lambda indices: collate(EXAMPLES, indices, 1), pin=False))
    assert [indices.tolist() for indices, _ in fed] == [[0], [2, 1], [1, 0, 2]]
    for indices, batch in fed:
        assert torch.equal(batch.src, collate(EXAMPLES, indices, 1).src)


def test_an_error_making_a_batch_reaches_the_training_loop():
    def broken(indices):
        raise EncdecError("cannot pad")

    with pytest.raises(EncdecError, match="cannot pad"):
        list(fed_ahead([np.array([0])], broken, pin=False))


def test_a_loop_that_stops_early_ends_the_feeding_thread():
    batches = [np.array([0])] * 50
    fed = fed_ahead(batches, lambda indices: collate(EXAMPLES, indices, 1), pin=False)
    next(fed)
    fed.close()
    assert not [t for t in threading.enumerate() if t.name == "encdec-batches"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_training_steps_never_wait_for_the_device(tmp_path, monkeypatch):
    real_step = training._train_step

    def watched_step(run, indices, batch, stop):
        torch.cuda.set_sync_debug_mode("error")  # a synchronizing call in the step raises
        try:
            return real_step(run, indices, batch, stop)
        finally:
            torch.cuda.set_sync_debug_mode("default")

    monkeypatch.setattr(training, "_train_step", watched_step)
    recipe = toy_recipe(batch_size=4, max_updates=30, log_every_updates=10)
    training.train(from_dict(recipe), tmp_path, quiet=True, device="cuda")
