"""Configuration: one dataclass per YAML section, loaded from a file and `--set` overrides."""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from encdec.errors import EncdecError


@dataclass
class DataConfig:
    dataset: str = "multi30k"  # multi30k | files | toy
    src_lang: str = "de"
    trg_lang: str = "en"
    data_dir: str | None = None  # Multi30k folder; falls back to $ENCDEC_DATA, then the cache
    train_src: str | None = None  # plain-text files, line i <-> line i (dataset: files)
    train_trg: str | None = None
    valid_src: str | None = None
    valid_trg: str | None = None
    test_src: str | None = None
    test_trg: str | None = None
    train_tsv: str | None = None  # or one TSV file per split: source<TAB>target
    valid_tsv: str | None = None
    test_tsv: str | None = None
    prepared: str | None = None  # a folder `encdec prepare` made: the splits as ids, mapped
    tokenizer: str = "spacy"  # spacy | char | whitespace (text that is already tokenized)
    subwords: str = "none"  # none | bpe | unigram: split words into pieces learnt on train
    subword_vocab_size: int = 8000  # most pieces per side's subword model
    subword_model: str | None = None  # a `tokenizers` JSON model for both sides, not learnt
    joint_vocab: bool = False  # one vocabulary (and subword model) learnt on both sides
    lowercase: bool = True
    reverse_src: bool = True  # Sutskever et al. (2014): feed the source backwards
    reverse_trg: bool = False  # write the target right to left (a rescorer for n-best lists)
    min_freq: int = 2
    max_len: int | None = None  # longest sentence in tokens kept for training; None keeps all
    long_pairs: str = "drop"  # drop | truncate: what max_len does to a longer training pair


@dataclass
class ModelConfig:
    cell: str = "lstm"  # lstm | gru
    embedding_dim: int = 256
    hidden_dim: int = 512
    num_layers: int = 2
    dropout: float = 0.5
    bidirectional: bool = False  # encoder reads the source both ways; a bridge feeds the decoder
    attention: str = "none"  # none | dot | general (Luong) | additive (Bahdanau)
    input_feeding: bool = False  # feed the last attentional vector into the next decoder step
    context_every_step: bool = False  # without attention: the context vector feeds every step
    tie_embeddings: bool = False  # output layer shares the target embedding's weights
    share_embeddings: bool = False  # decoder's target embedding is the encoder's (joint vocab)
    word_dropout: float = 0.0  # training: each word becomes <unk> with this probability


@dataclass
class TrainingConfig:
    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.001
    clip: float = 1.0
    teacher_forcing_ratio: float = 0.5
    seed: int = 1234
    max_steps: int | None = None  # end EACH epoch after this many batches (smoke tests)
    max_updates: int | None = None  # stop after this many updates in all, or at `epochs` if sooner
    validate_every_updates: int | None = None  # also validate (and save) every N updates
    log_every_updates: int | None = 100  # a progress line in train.log and on stderr
    bucket_pool: int = 100  # batches per length-sorted pool; 1 means no bucketing
    batch_tokens: int | None = None  # also cap padded source + target positions per batch
    label_smoothing: float = 0.0  # share of each target's probability spread over the vocabulary
    lr_schedule: str = "none"  # none | plateau | warmup_decay
    lr_decay_factor: float = 0.5  # plateau: the lr is multiplied by this when the metric stalls
    lr_patience: int = 1  # plateau: stalled epochs tolerated; the lr is cut on the next one
    min_lr: float = 1e-5  # plateau: the lr is never cut below this
    warmup_steps: int = 500  # warmup_decay: batches of linear warmup, then 1/sqrt(step) decay
    patience: int | None = None  # stop after this many epochs without improvement; None: never
    select_by: str = "loss"  # loss | bleu: the validation metric for best.pt, plateau, stopping
    save_every_steps: int | None = None  # also write last.pt every this many batches; None: epochs
    keep_checkpoints: int = 0  # also keep the weights of the last N epochs, for averaging
    precision: str = "fp32"  # fp32 | bf16 | fp16: automatic mixed precision (CUDA only)
    compile: bool = False  # torch.compile the encoder and decoder
    deterministic: bool = False  # CUDA: kernels that repeat bit for bit, so runs and resumes do


@dataclass
class DecodingConfig:
    # a sentence's translation may have max_len_a * its source tokens + max_len_b tokens (the
    # defaults leave room for every Multi30k reference), and at most max_len when that is set
    max_len_a: float = 1.5
    max_len_b: int = 10
    max_len: int | None = None
    temperature: float = 0.0  # 0 means greedy (argmax); above 0, sample from softmax(logits / T)
    top_k: int | None = None  # when sampling, only among the k likeliest tokens
    beam_size: int = 1  # above 1, beam search with this many beams (then temperature must be 0)
    length_penalty: float = 1.0  # beams are ranked by log-probability / length ** this
    coverage_penalty: float = 0.0  # ... plus this * how fully they attended to the source
    unk_replace: bool = False  # replace each <unk> by the source word it attends to most
    batch_size: int = 128  # sentences translated at once
    batch_tokens: int | None = None  # also cap a batch's padded source positions (+2 a sentence)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    decoding: DecodingConfig = field(default_factory=DecodingConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


CHOICES = {
    ("data", "dataset"): ("multi30k", "files", "toy"),
    ("data", "tokenizer"): ("spacy", "char", "whitespace"),
    ("data", "subwords"): ("none", "bpe", "unigram"),
    ("data", "long_pairs"): ("drop", "truncate"),
    ("model", "cell"): ("lstm", "gru"),
    ("model", "attention"): ("none", "dot", "general", "additive"),
    ("training", "lr_schedule"): ("none", "plateau", "warmup_decay"),
    ("training", "select_by"): ("loss", "bleu"),
    ("training", "precision"): ("fp32", "bf16", "fp16"),
}
POSITIVE = {
    ("data", "min_freq"),
    ("data", "subword_vocab_size"),
    ("data", "max_len"),
    ("model", "embedding_dim"),
    ("model", "hidden_dim"),
    ("model", "num_layers"),
    ("training", "epochs"),
    ("training", "batch_size"),
    ("training", "lr"),
    ("training", "clip"),
    ("training", "max_steps"),
    ("training", "max_updates"),
    ("training", "validate_every_updates"),
    ("training", "log_every_updates"),
    ("training", "bucket_pool"),
    ("training", "batch_tokens"),
    ("training", "lr_decay_factor"),
    ("training", "warmup_steps"),
    ("training", "patience"),
    ("training", "save_every_steps"),
    ("decoding", "max_len"),
    ("decoding", "batch_size"),
    ("decoding", "batch_tokens"),
    ("decoding", "top_k"),
    ("decoding", "beam_size"),
}
NON_NEGATIVE = {
    ("training", "lr_patience"),
    ("training", "min_lr"),
    ("training", "keep_checkpoints"),
    ("decoding", "temperature"),
    ("decoding", "coverage_penalty"),
    ("decoding", "max_len_a"),
    ("decoding", "max_len_b"),
}
FRACTIONS = {
    ("model", "dropout"),
    ("model", "word_dropout"),
    ("training", "teacher_forcing_ratio"),
    ("training", "label_smoothing"),
    ("training", "lr_decay_factor"),
}
# beyond these the arithmetic overflows or means nothing (a temperature of 1e308 divides the
# logits to zero and overflows sampling)
AT_MOST = {("decoding", "temperature"): 100.0}
# 1 would leave no signal (smoothing, word dropout) or no decay (ReduceLROnPlateau refuses it)
BELOW_ONE = {
    ("model", "word_dropout"),
    ("training", "label_smoothing"),
    ("training", "lr_decay_factor"),
}


def _suggest(name: str, options: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(options), n=1)
    return f"; did you mean '{close[0]}'?" if close else ""


def _convert(value: object, kind: object, where: str) -> object:
    """Check `value` against a field's type, converting int -> float where harmless."""
    optional = isinstance(kind, types.UnionType) and type(None) in typing.get_args(kind)
    base = next(t for t in typing.get_args(kind) if t is not type(None)) if optional else kind
    if value is None and optional:
        return None
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if base is float and isinstance(value, str):
        value = _float_from_yaml_string(value)  # YAML 1.1 reads 1e-5 (no dot) as a string
    if base is int and isinstance(value, bool) or not isinstance(value, base):
        raise EncdecError(
            f"config field '{where}' must be {base.__name__}"
            f"{' or null' if optional else ''}, got {value!r}"
        )
    return value


def _float_from_yaml_string(text: str) -> float | str:
    """`text` as a float when it spells one (like '1e-5'); otherwise unchanged."""
    try:
        return float(text)
    except ValueError:
        return text


def _check_range(section: str, key: str, value: object) -> None:
    where = f"{section}.{key}"
    if (section, key) in CHOICES and value not in CHOICES[section, key]:
        raise EncdecError(
            f"config field '{where}' must be one of {CHOICES[section, key]}, got {value!r}"
        )
    if (section, key) in POSITIVE and value is not None and value <= 0:
        raise EncdecError(f"config field '{where}' must be positive, got {value!r}")
    if (section, key) in NON_NEGATIVE and value < 0:
        raise EncdecError(f"config field '{where}' must not be negative, got {value!r}")
    if (section, key) in FRACTIONS and not 0 <= value <= 1:
        raise EncdecError(f"config field '{where}' must lie in [0, 1], got {value!r}")
    if (section, key) in AT_MOST and value is not None and value > AT_MOST[section, key]:
        raise EncdecError(
            f"config field '{where}' must be at most {AT_MOST[section, key]:g}, got {value!r}"
        )
    if (section, key) in BELOW_ONE and value >= 1:
        raise EncdecError(f"config field '{where}' must be below 1, got {value!r}")


def from_dict(raw: dict) -> Config:
    """Build a checked Config from nested dicts; unknown keys are errors with a suggestion."""
    config = Config()
    sections = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    for section, values in (raw or {}).items():
        if section not in sections:
            raise EncdecError(f"unknown config section '{section}'{_suggest(section, sections)}")
        values = {} if values is None else values  # a section with every key commented out
        if not isinstance(values, dict):
            raise EncdecError(f"config section '{section}' must be a mapping of keys to values")
        target = sections[section]
        types_by_key = typing.get_type_hints(type(target))
        for key, value in values.items():
            if key not in types_by_key:
                raise EncdecError(
                    f"unknown config key '{section}.{key}'{_suggest(key, types_by_key)}"
                )
            value = _convert(value, types_by_key[key], f"{section}.{key}")
            _check_range(section, key, value)
            setattr(target, key, value)
    return config


MULTI30K_KEY = ("data.dataset: multi30k", lambda config: config.data.dataset == "multi30k")
FILES_KEY = ("data.dataset: files", lambda config: config.data.dataset == "files")
PLATEAU_KEY = (
    "training.lr_schedule: plateau",
    lambda config: config.training.lr_schedule == "plateau",
)
BEAMS_KEY = ("decoding.beam_size above 1", lambda config: config.decoding.beam_size > 1)
ATTENTION_KEY = (
    "model.attention: dot, general or additive",
    lambda config: config.model.attention != "none",
)
# keys that count only beside another setting: (what makes them count, whether it is set)
COUNTS_ONLY_WITH = {
    ("data", "data_dir"): MULTI30K_KEY,
    **{
        ("data", f"{split}_{side}"): FILES_KEY
        for split in ("train", "valid", "test")
        for side in ("src", "trg", "tsv")
    },
    ("data", "subword_vocab_size"): (
        "data.subwords: bpe or unigram",
        lambda config: config.data.subwords != "none",
    ),
    ("data", "subword_model"): (
        "data.subwords: bpe or unigram (the model's kind)",
        lambda config: config.data.subwords != "none",
    ),
    ("data", "long_pairs"): ("data.max_len", lambda config: config.data.max_len is not None),
    ("model", "share_embeddings"): (
        "data.joint_vocab: true",
        lambda config: config.data.joint_vocab,
    ),
    ("training", "lr_decay_factor"): PLATEAU_KEY,
    ("training", "lr_patience"): PLATEAU_KEY,
    ("training", "min_lr"): PLATEAU_KEY,
    ("training", "warmup_steps"): (
        "training.lr_schedule: warmup_decay",
        lambda config: config.training.lr_schedule == "warmup_decay",
    ),
    ("decoding", "temperature"): (
        "decoding.beam_size: 1 (beam search does not sample)",
        lambda config: config.decoding.beam_size == 1,
    ),
    ("decoding", "top_k"): (
        "decoding.temperature above 0 (sampling)",
        lambda config: config.decoding.temperature > 0,
    ),
    ("model", "input_feeding"): ATTENTION_KEY,
    ("model", "context_every_step"): (
        "model.attention: none (attention reads a context every step already)",
        lambda config: config.model.attention == "none",
    ),
    ("decoding", "unk_replace"): ATTENTION_KEY,
    ("decoding", "length_penalty"): BEAMS_KEY,
    ("decoding", "coverage_penalty"): (
        "decoding.beam_size above 1 and model.attention",
        lambda config: BEAMS_KEY[1](config) and ATTENTION_KEY[1](config),
    ),
}


def check_every_key_counts(config: Config) -> None:
    """Refuse a key set away from its default where nothing reads it, naming what would.

    E.g. data.train_src with data.dataset: multi30k would train on Multi30k without a word.
    """
    defaults = Config()
    for (section, key), (remedy, counts) in COUNTS_ONLY_WITH.items():
        value = getattr(getattr(config, section), key)
        if value != getattr(getattr(defaults, section), key) and not counts(config):
            raise EncdecError(
                f"config key '{section}.{key}' is set ({value!r}) but has no effect: it counts "
                f"only with {remedy}; set that too, or leave {section}.{key} out"
            )


def decoding_with(decoding: DecodingConfig, overrides: dict) -> DecodingConfig:
    """`decoding` with a caller's checked `overrides` (None keeps a setting).

    Asking for a temperature above 0 asks for sampling, so a beam that `decoding` searches with
    gives way to it, and asking for a beam above 1 asks for beam search, so a temperature gives
    way to that; asking for both is refused, and so is changing a top-k where nothing samples or
    a length or coverage penalty where no beam is searched.
    """
    given = {key: value for key, value in overrides.items() if value is not None}
    sampling, searching = given.get("temperature", 0) > 0, given.get("beam_size", 1) > 1
    if sampling and searching:
        raise EncdecError(
            "sampling (a temperature above 0) and beam search (a beam above 1) do not mix: "
            "ask for one of them"
        )
    changed = {key for key, value in given.items() if value != getattr(decoding, key, value)}
    if sampling:
        given["beam_size"] = 1
    if searching:
        given["temperature"] = 0.0
    merged = from_dict({"decoding": dataclasses.asdict(decoding) | given}).decoding
    if "top_k" in changed and merged.temperature == 0:
        raise EncdecError("a top-k counts only when sampling: ask for a temperature above 0 too")
    for penalty in ("length_penalty", "coverage_penalty"):
        if penalty in changed and merged.beam_size == 1:
            raise EncdecError(
                f"a {penalty.replace('_', ' ')} ranks the translations of a beam: "
                "ask for a beam above 1 too"
            )
    return merged


def parse_override(assignment: str) -> tuple[str, str, object]:
    """Split 'section.key=value' and parse the value as YAML (so 0.5, true, null work)."""
    name, sep, text = assignment.partition("=")
    section, dot, key = name.strip().partition(".")
    if not sep or not dot:
        raise EncdecError(f"--set expects section.key=value, got '{assignment}'")
    return section, key, yaml.safe_load(text) if text.strip() else None


def _yaml_problem(path: str | Path, error: yaml.YAMLError) -> str:
    """`path:line:column: not valid YAML: problem`, where PyYAML knows the place."""
    mark = getattr(error, "problem_mark", None)
    if mark is None:
        return f"{path} is not valid YAML: {error}"
    return f"{path}:{mark.line + 1}:{mark.column + 1}: not valid YAML: {error.problem}"


def load_config(path: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> Config:
    """Read a YAML config (or the defaults when `path` is None) and apply `--set` overrides."""
    raw: dict = {}
    if path is not None:
        try:
            raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except FileNotFoundError:
            raise EncdecError(f"config file not found: {path}") from None
        except (OSError, UnicodeDecodeError) as error:  # a folder, no permission, not UTF-8
            raise EncdecError(f"config file {path} cannot be read: {error}") from None
        except yaml.YAMLError as error:
            raise EncdecError(f"config file {_yaml_problem(path, error)}") from None
        if not isinstance(raw, dict):
            raise EncdecError(f"config file {path} must hold a mapping of sections")
    for assignment in overrides:
        section, key, value = parse_override(assignment)
        raw.setdefault(section, {})
        if not isinstance(raw[section], dict):
            raise EncdecError(f"config section '{section}' must be a mapping of keys to values")
        raw[section][key] = value
    return from_dict(raw)
