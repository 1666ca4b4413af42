"""Tests for encdec.ensemble: several checkpoints translating as one model."""

import copy
import json

import pytest
import torch

from encdec.checkpoint import load_checkpoint, save_checkpoint
from encdec.cli import main
from encdec.data import toy_phrases
from encdec.ensemble import Ensemble, EnsembleState
from encdec.errors import EncdecError
from encdec.model import DecoderState
from encdec.translator import Translator

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SENTENCES = ["let's go.", "i am cold.", "he is tall.", "we won.", "call me."]


@pytest.fixture(scope="module")
def other_checkpoint(demo_checkpoint, tmp_path_factory):
    """The demo model with every weight nudged: another model with the same vocabularies."""
    state = load_checkpoint(demo_checkpoint)
    generator = torch.Generator().manual_seed(7)
    state["model"] = {
        name: weight + 0.3 * weight.std() * torch.randn(weight.shape, generator=generator)
        for name, weight in state["model"].items()
    }
    path = tmp_path_factory.mktemp("other") / "other.pt"
    save_checkpoint(state, path)
    return path


def changed_copy(checkpoint, tmp_path, change) -> str:
    state = copy.deepcopy(load_checkpoint(checkpoint))
    change(state)
    path = tmp_path / "changed.pt"
    save_checkpoint(state, path)
    return str(path)


@pytest.mark.parametrize("options", [{}, {"beam_size": 3}])
def test_a_model_ensembled_with_itself_translates_like_the_model(demo_checkpoint, options):
    single = Translator.load(demo_checkpoint, device="cpu")
    doubled = Translator.load([demo_checkpoint, demo_checkpoint], device="cpu")
    assert isinstance(doubled.model, Ensemble)
    for alone, together in zip(
        single.translations(SENTENCES, **options), doubled.translations(SENTENCES, **options)
    ):
        assert alone[0].tokens == together[0].tokens
        assert together[0].score == pytest.approx(alone[0].score, abs=1e-4)


def test_a_model_ensembled_with_itself_has_the_models_loss(demo_checkpoint):
    pairs = toy_phrases()["train"][:40]
    single = Translator.load(demo_checkpoint, device="cpu").evaluate(pairs)
    doubled = Translator.load([demo_checkpoint] * 2, device="cpu").evaluate(pairs)
    assert doubled["loss"] == pytest.approx(single["loss"], rel=1e-5)
    assert doubled["bleu"] == pytest.approx(single["bleu"])


def test_an_ensemble_step_scores_the_log_of_the_members_mean_probability(
    demo_checkpoint, other_checkpoint
):
    first, second = (
        Translator.load(path, device="cpu").model for path in [demo_checkpoint, other_checkpoint]
    )
    ensemble = Translator.load([demo_checkpoint, other_checkpoint], device="cpu").model
    src = torch.tensor([[2, 2], [5, 9], [7, 4], [3, 6], [1, 3]])  # (S=5, B=2), the first padded
    lengths, tokens = torch.tensor([4, 5]), torch.tensor([[2, 2], [8, 5]])  # (steps=2, B)
    with torch.no_grad():
        scores, _ = ensemble.decoder(tokens, ensemble.encode(src, lengths))
        expected = (
            sum(
                torch.softmax(model.decoder(tokens, model.encode(src, lengths))[0], -1)
                for model in (first, second)
            )
            / 2
        )
    torch.testing.assert_close(scores.exp(), expected)
    assert not torch.allclose(
        scores.exp(), torch.softmax(first.decoder(tokens, first.encode(src, lengths))[0], -1)
    )


def test_an_ensemble_attends_where_its_attending_members_do_on_average():
    def state(weights):
        return DecoderState(rnn=torch.zeros(1, 2, 4), attention=weights)

    first, second = torch.rand(3, 2, 5), torch.rand(3, 2, 5)
    assert torch.equal(EnsembleState([state(first), state(None)]).attention, first)
    torch.testing.assert_close(
        EnsembleState([state(first), state(second)]).attention, (first + second) / 2
    )
    assert EnsembleState([state(None), state(None)]).attention is None


def test_translate_and_evaluate_take_several_checkpoints(
    demo_checkpoint, other_checkpoint, tmp_path, capsys
):
    source, reference = tmp_path / "source.txt", tmp_path / "reference.txt"
    pairs = toy_phrases()["train"][:20]
    source.write_text("".join(f"{english}\n" for english, _ in pairs))
    reference.write_text("".join(f"{spanish}\n" for _, spanish in pairs))
    checkpoints = [str(demo_checkpoint), str(other_checkpoint)]
    output = tmp_path / "translations.txt"
    common = ["--device", "cpu", "--quiet"]
    assert (
        main(["translate", *checkpoints, "--input", str(source), "--output", str(output), *common])
        == 0
    )
    ensemble = Translator.load(checkpoints, device="cpu")
    assert output.read_text().splitlines() == ensemble.translate([english for english, _ in pairs])
    arguments = ["evaluate", *checkpoints, "--src", str(source), "--ref", str(reference), "--json"]
    assert main([*arguments, *common]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores == pytest.approx(ensemble.evaluate(pairs))


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (lambda state: state["trg_vocab"].reverse(), "trg vocab"),
        (lambda state: state["config"]["data"].update(reverse_src=False), "data.reverse_src"),
        (lambda state: state["config"]["data"].update(reverse_trg=True), "data.reverse_trg"),
    ],
)
def test_checkpoints_that_read_text_differently_make_no_ensemble(
    demo_checkpoint, tmp_path, change, named
):
    other = changed_copy(demo_checkpoint, tmp_path, change)
    with pytest.raises(EncdecError, match=f"{other}.*{named}|{named}.*{demo_checkpoint}"):
        Translator.load([demo_checkpoint, other], device="cpu")


def test_a_checkpoint_from_before_a_data_setting_counts_as_its_default(demo_checkpoint, tmp_path):
    older = changed_copy(
        demo_checkpoint, tmp_path, lambda state: state["config"]["data"].pop("reverse_trg")
    )
    ensemble = Translator.load([demo_checkpoint, older], device="cpu")
    assert ensemble.translate(SENTENCES) == Translator.load(
        demo_checkpoint, device="cpu"
    ).translate(SENTENCES)
