"""Pictures of a run: learning curves from metrics.jsonl, attention heatmaps from a checkpoint."""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import LogFormatter, MaxNLocator

from encdec.checkpoint import atomic_file
from encdec.errors import EncdecError
from encdec.translator import Translation, Translator

CURVE_KEYS = (
    "epoch",
    "train_loss",
    "valid_loss",
    "valid_teacher_forced_loss",
    "train_ppl",
    "valid_ppl",
    "valid_teacher_forced_ppl",
    "valid_bleu",
)
# (key suffix, label, colour, line style, marker): the same three series in the loss and
# perplexity panels; a line on top of another leaves the other's style and markers visible
LOSS_SERIES = (
    ("train", "train", "tab:blue", "-", "o"),
    ("valid", "valid, teacher forcing off", "tab:orange", "--", "s"),
    ("valid_teacher_forced", "valid, teacher-forced", "tab:green", ":", "^"),
)
MOST_MARKERS = 12  # per line: more epochs get a marker on every n-th only


def read_metrics(path: str | Path) -> list[dict]:
    """The per-epoch records of a metrics.jsonl; a missing, empty or malformed file is an error."""
    path = Path(path)
    if not path.is_file():
        raise EncdecError(f"{path}: no such file (encdec train writes it into its --out folder)")
    lines = enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
    records = [_metrics_record(path, number, line) for number, line in lines if line.strip()]
    if not records:
        raise EncdecError(f"{path} is empty: no epoch has finished yet")
    return records


def _metrics_record(path: Path, line_number: int, line: str) -> dict:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise EncdecError(f"{path}, line {line_number}: not valid JSON ({error.msg})") from None
    if not isinstance(record, dict):
        raise EncdecError(f"{path}, line {line_number}: expected a JSON object")
    unusable = [key for key in CURVE_KEYS if not isinstance(record.get(key), (int, float))]
    if unusable:
        raise EncdecError(f"{path}, line {line_number}: no number for {', '.join(unusable)}")
    return record


def learning_curves(records: list[dict], title: str = "") -> Figure:
    """Loss, perplexity (log scale) and validation BLEU/chrF per epoch, side by side."""
    figure = Figure(figsize=(15, 4.6), layout="constrained")
    loss_axes, ppl_axes, score_axes = figure.subplots(1, 3)
    epochs = [record["epoch"] for record in records]
    for suffix, label, colour, style, marker in LOSS_SERIES:
        for axes, metric in ((loss_axes, "loss"), (ppl_axes, "ppl")):
            values = [record[f"{suffix}_{metric}"] for record in records]
            _plot_line(axes, epochs, values, style, marker, color=colour, label=label)
    _use_log_scale(ppl_axes)
    _plot_scores(score_axes, epochs, records)
    _label_epoch_axes(loss_axes, "Loss", "cross-entropy")
    _label_epoch_axes(ppl_axes, "Perplexity", "perplexity (log scale)")
    _label_epoch_axes(score_axes, "Validation scores", "score (0-100)")
    _add_shared_legend(figure, loss_axes, score_axes)
    if title:
        figure.suptitle(title)
    return figure


def _use_log_scale(axes) -> None:
    """A log y axis whose ticks read 20, 30, 100 rather than 2x10^1, 3x10^1, 10^2."""
    axes.set_yscale("log")
    axes.yaxis.set_major_formatter(LogFormatter(labelOnlyBase=False))
    axes.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False))


def _add_shared_legend(figure: Figure, *axes_with_labels) -> None:
    """One legend for every panel, under them, where it cannot hide a curve."""
    handles, labels = [], []
    for axes in axes_with_labels:
        axes_handles, axes_labels = axes.get_legend_handles_labels()
        handles, labels = handles + axes_handles, labels + axes_labels
    figure.legend(handles, labels, loc="outside lower center", ncols=len(labels))


def _plot_scores(axes, epochs: list[int], records: list[dict]) -> None:
    """Validation BLEU, and chrF where the run logged it (older runs did not)."""
    bleu = [record["valid_bleu"] for record in records]
    _plot_line(axes, epochs, bleu, "-", "o", color="tab:red", label="valid BLEU")
    if any("valid_chrf" in record for record in records):
        chrf = [record.get("valid_chrf", float("nan")) for record in records]
        _plot_line(axes, epochs, chrf, "--", "s", color="tab:purple", label="valid chrF")


def _plot_line(axes, epochs: list[int], values: list[float], style: str, marker: str, **kwargs):
    """One series: hollow markers (at most MOST_MARKERS), so lines that overlap stay apart."""
    every = max(1, math.ceil(len(epochs) / MOST_MARKERS))
    axes.plot(epochs, values, style, marker=marker, markevery=every, fillstyle="none", **kwargs)


def _label_epoch_axes(axes, title: str, y_label: str) -> None:
    axes.set_title(title)
    axes.set_xlabel("epoch")
    axes.set_ylabel(y_label)
    # min_n_ticks=1: a single epoch gets the tick 1, not fractions around it
    axes.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    axes.grid(alpha=0.3)


def attention_heatmap(
    translation: Translation, sentence: str, source_reversed: bool = False
) -> Figure:
    """Where each target token looked: target tokens down, source tokens across."""
    if translation.attention is None:
        raise EncdecError("the model has no attention (model.attention is none): nothing to plot")
    if not translation.tokens:
        raise EncdecError(f"the translation of {sentence!r} is empty: nothing to plot")
    weights = translation.attention.float().numpy()  # (len(tokens), len(source_tokens))
    rows, columns = weights.shape
    size = (max(5.0, 0.5 * columns + 2.5), max(3.5, 0.4 * rows + 2.0))
    figure = Figure(figsize=size, layout="constrained")
    axes = figure.subplots()
    image = axes.imshow(weights, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    axes.set_xticks(range(columns), translation.source_tokens, rotation=60, ha="right")
    axes.set_yticks(range(rows), translation.tokens)
    read_as = "source, as the model read it" + (" (reversed)" if source_reversed else "")
    axes.set_xlabel(read_as)
    axes.set_ylabel("translation")
    axes.set_title(textwrap.fill(f"attention: {sentence}", width=max(30, 6 * columns)))
    figure.colorbar(image, ax=axes, label="attention weight")
    return figure


def save_png(figure: Figure, path: str | Path) -> Path:
    """Render `figure` to a PNG at `path` atomically: a crash never leaves half a file."""
    path = Path(path)
    FigureCanvasAgg(figure)
    with atomic_file(path) as file:
        figure.savefig(file, format="png", dpi=120)
    return path


def plot_curves(run_dir: str | Path, output: str | Path | None = None) -> Path:
    """Learning curves of a training run, from RUN_DIR/metrics.jsonl; default RUN_DIR/curves.png."""
    run_dir = Path(run_dir)
    records = read_metrics(run_dir / "metrics.jsonl")
    figure = learning_curves(records, title=f"{run_dir.resolve().name}: learning curves")
    return save_png(figure, output or run_dir / "curves.png")


def plot_attention(
    checkpoint: str | Path,
    sentence: str,
    output: str | Path = "attention.png",
    beam_size: int | None = None,
) -> Path:
    """The attention heatmap of the checkpoint's best translation of `sentence`."""
    if not sentence.strip():
        raise EncdecError(
            "the sentence to plot is empty: give one in quotes, e.g. "
            'encdec plot attention CHECKPOINT "Ein Mann fährt Fahrrad."'
        )
    translator = Translator.load(checkpoint)
    if translator.model.decoder.attention is None:
        raise EncdecError(
            f"the checkpoint {checkpoint} has no attention (model.attention is none): "
            "nothing to plot; train with model.attention dot, general or additive"
        )
    best = translator.translations([sentence], beam_size=beam_size)[0][0]
    figure = attention_heatmap(best, sentence, translator.config.data.reverse_src)
    return save_png(figure, output)
