"""Tests for encdec.config: defaults, YAML files, --set overrides and validation."""

import re
from pathlib import Path

import pytest

from encdec.config import (
    Config,
    DecodingConfig,
    check_every_key_counts,
    decoding_with,
    load_config,
    parse_override,
)
from encdec.errors import EncdecError
from encdec.model import build_model

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIGS = REPO_ROOT / "configs"
SEED_CONFIG = CONFIGS / "multi30k_seed.yaml"


def write(folder: Path, text: str) -> Path:
    path = folder / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda path: path.name)
def test_every_recipe_loads_and_builds_its_model(path):
    config = load_config(path)
    src_vocab_size = 40 if config.model.share_embeddings else 30  # one joint vocabulary
    model = build_model(config.model, src_vocab_size=src_vocab_size, trg_vocab_size=40)
    assert model.decoder.fc_out.out_features == 40
    if config.decoding.unk_replace:  # it copies the source word that attention points at
        assert model.decoder.attention is not None


def test_defaults_are_the_textbook_recipe():
    config = load_config()
    assert (config.data.dataset, config.data.src_lang, config.data.trg_lang) == (
        "multi30k",
        "de",
        "en",
    )
    assert config.data.tokenizer == "spacy"
    assert config.data.lowercase is True
    assert config.data.reverse_src is True
    assert config.data.min_freq == 2
    assert config.model.cell == "lstm"
    assert (config.model.embedding_dim, config.model.hidden_dim) == (256, 512)
    assert config.model.num_layers == 2
    assert config.model.dropout == 0.5
    assert (config.training.epochs, config.training.batch_size) == (10, 128)
    assert config.training.lr == 0.001
    assert config.training.clip == 1.0
    assert config.training.teacher_forcing_ratio == 0.5
    assert config.training.seed == 1234
    decoding = config.decoding
    assert (decoding.max_len_a, decoding.max_len_b, decoding.max_len) == (1.5, 10, None)
    assert config.decoding.temperature == 0.0


def test_seed_config_loads_and_equals_the_defaults():
    assert load_config(SEED_CONFIG) == Config()


def test_empty_file_gives_the_defaults(tmp_path):
    assert load_config(write(tmp_path, "")) == Config()


def test_file_values_are_applied(tmp_path):
    config = load_config(write(tmp_path, "model:\n  cell: gru\n  hidden_dim: 64\n"))
    assert config.model.cell == "gru"
    assert config.model.hidden_dim == 64
    assert config.model.embedding_dim == 256


def test_overrides_parse_yaml_values():
    config = load_config(
        None, ["model.dropout=0.5", "data.lowercase=false", "data.max_len=null", "model.cell=gru"]
    )
    assert config.model.dropout == 0.5
    assert config.data.lowercase is False
    assert config.data.max_len is None
    assert config.model.cell == "gru"


def test_parse_override_reads_true_null_and_numbers():
    assert parse_override("data.reverse_src=true") == ("data", "reverse_src", True)
    assert parse_override("data.max_len=null") == ("data", "max_len", None)
    assert parse_override("training.lr=0.5") == ("training", "lr", 0.5)
    assert parse_override("training.epochs=3") == ("training", "epochs", 3)


def test_overrides_win_over_the_file(tmp_path):
    path = write(tmp_path, "training:\n  epochs: 3\n")
    assert load_config(path, ["training.epochs=7"]).training.epochs == 7


def test_override_without_section_is_an_error():
    with pytest.raises(EncdecError, match="section.key=value"):
        load_config(None, ["epochs=3"])


def test_unknown_key_suggests_the_closest_key():
    with pytest.raises(EncdecError, match="training.epoch'.*'epochs'"):
        load_config(None, ["training.epoch=3"])


def test_unknown_key_in_file_suggests_the_closest_key(tmp_path):
    with pytest.raises(EncdecError, match="hidden_dim"):
        load_config(write(tmp_path, "model:\n  hiden_dim: 64\n"))


def test_unknown_section_suggests_the_closest_section():
    with pytest.raises(EncdecError, match="'trainig'.*'training'"):
        load_config(None, ["trainig.epochs=3"])


def test_section_that_is_not_a_mapping_is_an_error(tmp_path):
    with pytest.raises(EncdecError, match="model"):
        load_config(write(tmp_path, "model: 3\n"))


@pytest.mark.parametrize(
    "override, field",
    [
        ('training.epochs="a"', "training.epochs"),
        ("training.epochs=2.5", "training.epochs"),
        ("training.epochs=true", "training.epochs"),
        ("training.lr=fast", "training.lr"),
        ("data.lowercase=3", "data.lowercase"),
        ("data.data_dir=5", "data.data_dir"),
    ],
)
def test_wrong_type_names_the_field(override, field):
    with pytest.raises(EncdecError, match=field):
        load_config(None, [override])


@pytest.mark.parametrize(
    "override, field",
    [
        ("model.dropout=1.5", "model.dropout"),
        ("training.teacher_forcing_ratio=-0.1", "training.teacher_forcing_ratio"),
        ("model.cell=rnn", "model.cell"),
        ("data.tokenizer=bpe", "data.tokenizer"),
        ("training.batch_size=0", "training.batch_size"),
        ("training.lr=-0.001", "training.lr"),
        ("data.max_len=0", "data.max_len"),
        ("training.label_smoothing=-0.1", "training.label_smoothing"),
        ("training.lr_schedule=cosine", "training.lr_schedule"),
        ("training.select_by=accuracy", "training.select_by"),
        ("training.lr_decay_factor=0", "training.lr_decay_factor"),
        ("training.lr_decay_factor=1", "training.lr_decay_factor"),
        ("training.lr_patience=-1", "training.lr_patience"),
        ("training.min_lr=-1e-5", "training.min_lr"),
        ("training.warmup_steps=0", "training.warmup_steps"),
        ("training.patience=0", "training.patience"),
        ("decoding.coverage_penalty=-0.2", "decoding.coverage_penalty"),
    ],
)
def test_out_of_range_names_the_field(override, field):
    with pytest.raises(EncdecError, match=field):
        load_config(None, [override])


def test_fraction_bounds_are_allowed():
    config = load_config(None, ["model.dropout=0", "training.teacher_forcing_ratio=1"])
    assert config.model.dropout == 0.0
    assert config.training.teacher_forcing_ratio == 1.0


def test_label_smoothing_of_one_is_an_error_naming_the_field():
    with pytest.raises(EncdecError, match="training.label_smoothing' must be below 1"):
        load_config(None, ["training.label_smoothing=1"])


def test_quality_keys_default_to_the_plain_textbook_loop():
    training = load_config().training
    assert training.label_smoothing == 0.0
    assert (training.lr_schedule, training.select_by, training.patience) == ("none", "loss", None)
    assert (training.lr_decay_factor, training.lr_patience, training.min_lr) == (0.5, 1, 1e-5)
    assert training.warmup_steps == 500


def test_quality_keys_accept_their_bounds_and_choices():
    overrides = ["training.label_smoothing=0", "training.lr_patience=0", "training.min_lr=0"]
    overrides += ["training.lr_schedule=warmup_decay", "training.select_by=bleu"]
    training = load_config(None, [*overrides, "training.patience=1"]).training
    assert (training.label_smoothing, training.lr_patience, training.min_lr) == (0.0, 0, 0.0)
    assert (training.lr_schedule, training.select_by, training.patience) == (
        "warmup_decay",
        "bleu",
        1,
    )


def test_int_is_accepted_for_float_fields():
    config = load_config(None, ["training.lr=1", "decoding.temperature=2"])
    assert config.training.lr == 1.0
    assert isinstance(config.training.lr, float)
    assert isinstance(config.decoding.temperature, float)


def test_null_is_accepted_for_optional_fields_only():
    assert load_config(None, ["training.max_steps=null"]).training.max_steps is None
    with pytest.raises(EncdecError, match="training.epochs"):
        load_config(None, ["training.epochs=null"])


def test_missing_file_names_the_file(tmp_path):
    path = tmp_path / "nowhere.yaml"
    with pytest.raises(EncdecError, match="nowhere.yaml"):
        load_config(path)


def test_invalid_yaml_names_the_file(tmp_path):
    path = write(tmp_path, "model: [1, 2\n")
    with pytest.raises(EncdecError, match=re.escape(str(path))):
        load_config(path)


def test_yaml_that_is_not_a_mapping_names_the_file(tmp_path):
    path = write(tmp_path, "- data\n- model\n")
    with pytest.raises(EncdecError, match=re.escape(str(path))):
        load_config(path)


def test_file_that_is_not_utf8_names_the_file(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("data:\n  src_lang: d\xe9\n".encode("latin-1"))
    with pytest.raises(EncdecError, match="latin1.yaml"):
        load_config(path)


def test_folder_instead_of_file_names_the_folder(tmp_path):
    with pytest.raises(EncdecError, match=re.escape(str(tmp_path))):
        load_config(tmp_path)


def test_section_with_every_key_commented_out_keeps_the_defaults(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("decoding:\n  # max_len: 20\ntraining:\n  epochs: 3\n", encoding="utf-8")
    config = load_config(path)
    assert config.decoding == DecodingConfig()
    assert config.training.epochs == 3


def test_exponent_without_a_dot_is_read_as_a_float(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("training:\n  lr: 5e-4\n  min_lr: 1e-05\n", encoding="utf-8")
    config = load_config(path)
    assert config.training.lr == 0.0005 and config.training.min_lr == 0.00001


def test_text_that_is_no_number_is_still_a_wrong_type():
    with pytest.raises(EncdecError, match="training.lr"):
        load_config(None, ["training.lr=fast"])


RECIPES = [*sorted(CONFIGS.glob("*.yaml")), REPO_ROOT / "examples/dna_to_protein/config.yaml"]


@pytest.mark.parametrize("path", RECIPES, ids=lambda path: path.name)
def test_every_key_of_every_recipe_counts(path):
    check_every_key_counts(load_config(path))


@pytest.mark.parametrize(
    ("overrides", "key", "remedy"),
    [
        (["data.train_src=a.de", "data.train_trg=a.en"], "data.train_src", "data.dataset: files"),
        (["data.test_tsv=test.tsv"], "data.test_tsv", "data.dataset: files"),
        (["data.dataset=toy", "data.data_dir=multi30k"], "data.data_dir", "dataset: multi30k"),
        (["data.subword_vocab_size=4000"], "data.subword_vocab_size", "data.subwords: bpe"),
        (["data.long_pairs=truncate"], "data.long_pairs", "data.max_len"),
        (["model.share_embeddings=true"], "model.share_embeddings", "data.joint_vocab: true"),
        (["training.lr_patience=0"], "training.lr_patience", "lr_schedule: plateau"),
        (["training.warmup_steps=100"], "training.warmup_steps", "lr_schedule: warmup_decay"),
        (["decoding.temperature=0.8", "decoding.beam_size=5"], "decoding.temperature", "size: 1"),
        (["decoding.top_k=5"], "decoding.top_k", "decoding.temperature above 0"),
        (["decoding.length_penalty=0.6"], "decoding.length_penalty", "beam_size above 1"),
        (["model.input_feeding=true"], "model.input_feeding", "model.attention: dot"),
        (["decoding.unk_replace=true"], "decoding.unk_replace", "model.attention: dot"),
        (
            ["decoding.beam_size=5", "decoding.coverage_penalty=0.2"],
            "decoding.coverage_penalty",
            "beam_size above 1 and model.attention",
        ),
        (
            ["model.attention=general", "model.context_every_step=true"],
            "model.context_every_step",
            "model.attention: none",
        ),
    ],
)
def test_a_key_that_has_no_effect_is_an_error_naming_what_would_make_it_count(
    overrides, key, remedy
):
    with pytest.raises(EncdecError, match=f"'{re.escape(key)}' .*no effect.*{re.escape(remedy)}"):
        check_every_key_counts(load_config(SEED_CONFIG, overrides))


def test_a_key_set_beside_what_makes_it_count_is_accepted():
    overrides = ["data.dataset=files", "data.train_src=a.de", "training.lr_schedule=plateau"]
    check_every_key_counts(load_config(SEED_CONFIG, [*overrides, "training.lr_patience=0"]))


def test_shared_embeddings_with_a_joint_vocabulary_are_accepted():
    overrides = ["data.joint_vocab=true", "model.share_embeddings=true"]
    check_every_key_counts(load_config(SEED_CONFIG, overrides))


@pytest.mark.parametrize(
    ("checkpoints", "asked", "beam_size", "temperature"),
    [
        ({"beam_size": 4}, {"temperature": 0.8}, 1, 0.8),  # sampling asked: the beam gives way
        ({"temperature": 0.8}, {"beam_size": 3}, 3, 0.0),  # beams asked: sampling gives way
        ({"beam_size": 4}, {"temperature": 0.0}, 4, 0.0),  # greedy's temperature keeps the beam
        ({"beam_size": 4}, {"temperature": None, "beam_size": None}, 4, 0.0),  # None: unasked
        ({"temperature": 0.8}, {"beam_size": 1, "temperature": 0.5}, 1, 0.5),
    ],
)
def test_asking_to_sample_or_to_search_overrides_the_checkpoints_other_choice(
    checkpoints, asked, beam_size, temperature
):
    decoding = decoding_with(DecodingConfig(**checkpoints), asked)
    assert (decoding.beam_size, decoding.temperature) == (beam_size, temperature)


def test_settings_of_a_kind_of_decoding_not_asked_for_are_refused():
    with pytest.raises(EncdecError, match="sampling .* and beam search .* do not mix"):
        decoding_with(DecodingConfig(), {"temperature": 0.8, "beam_size": 3})
    with pytest.raises(EncdecError, match="a top-k counts only when sampling"):
        decoding_with(DecodingConfig(), {"top_k": 5})
    with pytest.raises(EncdecError, match="a top-k counts only when sampling"):
        decoding_with(DecodingConfig(temperature=0.8), {"top_k": 5, "beam_size": 3})
    assert decoding_with(DecodingConfig(temperature=0.8), {"top_k": 5}).top_k == 5
    for penalty in ("length_penalty", "coverage_penalty"):
        with pytest.raises(EncdecError, match="penalty ranks the translations of a beam"):
            decoding_with(DecodingConfig(beam_size=4), {penalty: 0.5, "temperature": 0.8})
        assert getattr(decoding_with(DecodingConfig(beam_size=4), {penalty: 0.5}), penalty) == 0.5
    with pytest.raises(EncdecError, match="config field 'decoding.beam_size' must be positive"):
        decoding_with(DecodingConfig(), {"beam_size": 0})


def test_a_temperature_beyond_100_is_refused_naming_the_bound():
    with pytest.raises(EncdecError, match=r"temperature' must be at most 100, got 1e\+308"):
        load_config(None, ["decoding.temperature=1e308"])
    assert load_config(None, ["decoding.temperature=100"]).decoding.temperature == 100.0
