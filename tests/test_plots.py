"""Tests for plots.py and `encdec plot`: learning curves, attention heatmaps, atomic PNG writes."""

import json
from pathlib import Path

import pytest
import torch
from matplotlib.figure import Figure

from encdec import plots
from encdec.cli import DEMO_CONFIG, main
from encdec.config import from_dict
from encdec.errors import EncdecError
from encdec.translator import Translation, Translator

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SENTENCE = "thank you very much"


def epoch_record(epoch: int, with_chrf: bool = True) -> dict:
    """A plausible metrics.jsonl line: valid loss without teacher forcing well above the rest."""
    record = {
        "epoch": epoch,
        "train_loss": 5.0 / epoch,
        "valid_loss": 5.5 - 0.2 * epoch,
        "valid_teacher_forced_loss": 3.3 / epoch**0.5,
        "valid_bleu": 8.0 + 3.0 * epoch,
    }
    for name in ("train", "valid", "valid_teacher_forced"):
        record[f"{name}_ppl"] = 2.718281828 ** record[f"{name}_loss"]
    if with_chrf:
        record |= {"valid_chrf": 25.0 + 3.0 * epoch, "lr": 0.001}
    return record


def write_metrics(run_dir: Path, lines: list[str]) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "metrics.jsonl"
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def assert_png(path: Path, min_bytes: int = 1) -> None:
    content = path.read_bytes()
    assert content.startswith(PNG_SIGNATURE)
    assert len(content) > min_bytes


@pytest.fixture(scope="module")
def attention_checkpoint(tmp_path_factory) -> Path:
    """best.pt of a tiny Luong (general) attention model on the toy phrases (~2 s).

    Two epochs leave it answering <eos> at once (nothing to plot); twenty give a few words."""
    from encdec.training import train

    model = {"attention": "general", "embedding_dim": 16, "hidden_dim": 32, "num_layers": 1}
    config = DEMO_CONFIG | {"model": model | {"dropout": 0.0}}
    config["training"] = DEMO_CONFIG["training"] | {"epochs": 20, "lr": 0.01}
    out_dir = tmp_path_factory.mktemp("attention_run")
    train(from_dict(config), out_dir, quiet=True)
    return out_dir / "best.pt"


def test_curves_png_from_metrics_jsonl(tmp_path):
    write_metrics(tmp_path, [json.dumps(epoch_record(epoch)) for epoch in range(1, 6)])
    written = plots.plot_curves(tmp_path)
    assert written == tmp_path / "curves.png"
    assert_png(written, min_bytes=10_000)


def test_curves_without_chrf_to_a_chosen_file(tmp_path):
    lines = [json.dumps(epoch_record(epoch, with_chrf=False)) for epoch in (1, 2)]
    write_metrics(tmp_path / "run", lines)
    written = plots.plot_curves(tmp_path / "run", tmp_path / "mine.png")
    assert_png(written, min_bytes=10_000)
    assert not (tmp_path / "run" / "curves.png").exists()


def test_curves_panels_are_labelled():
    figure = plots.learning_curves([epoch_record(epoch) for epoch in (1, 2, 3)])
    assert figure.axes[1].get_yscale() == "log"
    assert all(axes.get_xlabel() == "epoch" and axes.get_ylabel() for axes in figure.axes)
    assert [axes.get_title() for axes in figure.axes] == ["Loss", "Perplexity", "Validation scores"]
    legend_labels = [text.get_text() for text in figure.legends[0].get_texts()]
    assert legend_labels == [
        "train",
        "valid, teacher forcing off",
        "valid, teacher-forced",
        "valid BLEU",
        "valid chrF",
    ]


def visible_epoch_ticks(figure: Figure) -> list[list[float]]:
    figure.canvas.draw()
    ticks = []
    for axes in figure.axes:
        low, high = axes.get_xlim()
        ticks.append([tick for tick in axes.get_xticks() if low <= tick <= high])
    return ticks


@pytest.mark.parametrize("epochs", [1, 2, 7, 40])
def test_epoch_ticks_are_whole_numbers(epochs):
    figure = plots.learning_curves([epoch_record(epoch) for epoch in range(1, epochs + 1)])
    plots.FigureCanvasAgg(figure)
    for ticks in visible_epoch_ticks(figure):
        assert ticks and all(float(tick).is_integer() for tick in ticks), ticks
    if epochs == 1:
        assert visible_epoch_ticks(figure) == [[1.0]] * 3


@pytest.mark.parametrize("epochs", [3, 100])
def test_every_curve_of_a_panel_has_its_own_style_and_few_markers(epochs):
    figure = plots.learning_curves([epoch_record(epoch) for epoch in range(1, epochs + 1)])
    for axes in figure.axes:
        lines = axes.get_lines()
        looks = {(line.get_linestyle(), line.get_marker()) for line in lines}
        assert len(looks) == len(lines), looks  # same values would still show two lines
        for line in lines:
            assert len(line.get_xdata()[:: line.get_markevery()]) <= plots.MOST_MARKERS


def test_missing_metrics_names_the_file(tmp_path):
    with pytest.raises(EncdecError, match="metrics.jsonl: no such file"):
        plots.plot_curves(tmp_path)


def test_empty_metrics_is_an_error(tmp_path):
    write_metrics(tmp_path, [""])
    with pytest.raises(EncdecError, match="metrics.jsonl is empty"):
        plots.plot_curves(tmp_path)


def test_malformed_line_names_file_and_line(tmp_path):
    path = write_metrics(tmp_path, [json.dumps(epoch_record(1)), '{"epoch": 2, "train_lo'])
    with pytest.raises(EncdecError, match=r"metrics\.jsonl, line 2: not valid JSON") as caught:
        plots.read_metrics(path)
    assert str(path) in str(caught.value)


def test_line_without_a_metric_names_the_key(tmp_path):
    record = epoch_record(1)
    del record["valid_bleu"]
    write_metrics(tmp_path, [json.dumps(record)])
    with pytest.raises(EncdecError, match="line 1: no number for valid_bleu"):
        plots.plot_curves(tmp_path)


def test_png_gets_the_mode_of_any_new_file(tmp_path):
    metrics = write_metrics(tmp_path, [json.dumps(epoch_record(1))])
    written = plots.plot_curves(tmp_path)
    assert written.stat().st_mode == metrics.stat().st_mode


def test_failed_render_leaves_no_file(tmp_path, monkeypatch):
    def crash_halfway(self, file, **options):
        file.write(PNG_SIGNATURE)  # half a PNG, into the temporary file
        raise RuntimeError("renderer died")

    monkeypatch.setattr(Figure, "savefig", crash_halfway)
    with pytest.raises(RuntimeError):
        plots.save_png(Figure(), tmp_path / "curves.png")
    assert list(tmp_path.iterdir()) == []


def test_attention_heatmap_png(attention_checkpoint, tmp_path):
    written = plots.plot_attention(attention_checkpoint, SENTENCE, tmp_path / "attn.png", 3)
    assert_png(written, min_bytes=5_000)


def test_heatmap_axes_show_both_sentences(attention_checkpoint):
    best = Translator.load(attention_checkpoint).translations([SENTENCE])[0][0]
    axes = plots.attention_heatmap(best, SENTENCE).axes[0]
    assert [label.get_text() for label in axes.get_xticklabels()] == best.source_tokens
    assert [label.get_text() for label in axes.get_yticklabels()] == best.tokens
    assert SENTENCE in axes.get_title()


def test_empty_translation_is_a_clear_error():
    empty = Translation("", [], -0.1, ["<sos>", "hello", "<eos>"], torch.zeros(0, 3))
    with pytest.raises(EncdecError, match="translation of 'hello' is empty"):
        plots.attention_heatmap(empty, "hello")


def test_model_without_attention_is_a_clear_error(demo_checkpoint, tmp_path):
    with pytest.raises(EncdecError, match=r"has no attention \(model.attention is none\)"):
        plots.plot_attention(demo_checkpoint, SENTENCE, tmp_path / "attn.png")
    assert not (tmp_path / "attn.png").exists()


def test_cli_plot_curves_writes_png(tmp_path, capsys):
    write_metrics(tmp_path, [json.dumps(epoch_record(epoch)) for epoch in (1, 2, 3)])
    assert main(["plot", "curves", str(tmp_path)]) == 0
    assert_png(tmp_path / "curves.png", min_bytes=10_000)
    assert capsys.readouterr().out.strip() == str(tmp_path / "curves.png")


def test_cli_plot_curves_missing_file_returns_2(tmp_path, capsys):
    assert main(["plot", "curves", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("encdec plot: error:") and "metrics.jsonl" in error


def test_cli_plot_attention_writes_png(attention_checkpoint, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["plot", "attention", str(attention_checkpoint), SENTENCE, "--beam", "2"]) == 0
    assert_png(tmp_path / "attention.png")


def test_cli_plot_attention_of_a_run_folder_reads_its_best_pt(attention_checkpoint, tmp_path):
    output = tmp_path / "from_folder.png"
    argv = [
        "plot",
        "attention",
        str(attention_checkpoint.parent),
        SENTENCE,
        "--output",
        str(output),
    ]
    assert main(argv) == 0
    assert_png(output)


def test_cli_plot_to_a_missing_folder_is_one_line_error(tmp_path, capsys):
    write_metrics(tmp_path, [json.dumps(epoch_record(1))])
    assert main(["plot", "curves", str(tmp_path), "--output", str(tmp_path / "no/c.png")]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_cli_plot_attention_without_attention_returns_2(demo_checkpoint, tmp_path, capsys):
    output = tmp_path / "attn.png"
    argv = ["plot", "attention", str(demo_checkpoint), SENTENCE, "--output", str(output)]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "model.attention is none" in error
    assert not output.exists()


@pytest.mark.parametrize("sentence", ["", "   "])
def test_cli_plot_attention_of_an_empty_sentence_is_refused_before_loading(
    sentence, tmp_path, capsys
):
    output = tmp_path / "attn.png"
    argv = ["plot", "attention", str(tmp_path / "not_loaded.pt"), sentence, "--output", str(output)]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "the sentence to plot is empty" in error
    assert not output.exists()
