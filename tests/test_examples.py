"""Tests for examples/: the DNA -> protein generator, its config, a short run via the CLI."""

import importlib.util
from pathlib import Path

import pytest

from encdec.cli import main
from encdec.config import load_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")

EXAMPLE_DIR = Path(__file__).resolve().parent.parent / "examples" / "dna_to_protein"
CONFIG = EXAMPLE_DIR / "config.yaml"


def load_generator():
    """examples/dna_to_protein/make_data.py as a module (examples/ is not a package)."""
    spec = importlib.util.spec_from_file_location("make_data", EXAMPLE_DIR / "make_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_data = load_generator()


def read_pairs(path: Path) -> list[tuple[str, str]]:
    return [tuple(line.split("\t")) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize(
    ("codon", "amino_acid"),
    [("ATG", "M"), ("TGG", "W"), ("TTT", "F"), ("GCT", "A"), ("AAA", "K"), ("GGG", "G")]
    + [("TAA", "*"), ("TAG", "*"), ("TGA", "*")],
)
def test_genetic_code_matches_the_standard_table(codon, amino_acid):
    assert make_data.GENETIC_CODE[codon] == amino_acid


def test_genetic_code_has_61_sense_codons_for_20_amino_acids():
    assert len(make_data.GENETIC_CODE) == 64 and len(make_data.SENSE_CODONS) == 61
    assert len({make_data.GENETIC_CODE[codon] for codon in make_data.SENSE_CODONS}) == 20


def test_translation_reads_codons_up_to_the_first_stop():
    assert make_data.translate("ATGTAA") == "M"
    assert make_data.translate("ATGGCTTGGAAATAA") == "MAWK"
    assert make_data.translate("ATGTGATGG") == "M"  # nothing after a stop is read


def test_generated_proteins_translate_their_genes(tmp_path):
    paths = make_data.make_corpus(tmp_path, {"train": 50, "valid": 5, "test": 5}, seed=3)
    genes = []
    for path in paths.values():
        for dna, protein in read_pairs(path):
            assert dna.startswith("ATG") and dna[-3:] in make_data.STOP_CODONS
            assert len(dna) % 3 == 0 and protein == make_data.translate(dna)
            assert len(protein) == len(dna) // 3 - 1  # every codon but the stop
            genes.append(dna)
    assert len(genes) == 60 == len(set(genes))  # no gene is in two splits


def test_generator_is_deterministic_given_a_seed(tmp_path):
    sizes = {"train": 20, "valid": 2, "test": 2}
    first = make_data.make_corpus(tmp_path / "first", sizes, seed=7)
    again = make_data.make_corpus(tmp_path / "again", sizes, seed=7)
    other = make_data.make_corpus(tmp_path / "other", sizes, seed=8)
    assert first["train"].read_text() == again["train"].read_text()
    assert first["train"].read_text() != other["train"].read_text()


def test_dna_config_reads_characters_in_order_with_attention():
    config = load_config(str(CONFIG))
    data, model = config.data, config.model
    assert (data.dataset, data.tokenizer, data.min_freq) == ("files", "char", 1)
    assert not data.lowercase and not data.reverse_src
    assert model.attention == "general"


def test_dna_example_trains_and_translates_one_line_per_input(tmp_path, capsys):
    paths = make_data.make_corpus(tmp_path / "data", {"train": 64, "valid": 8, "test": 8})
    run_dir = tmp_path / "run"
    argv = ["train", "--config", str(CONFIG), "--out", str(run_dir), "--quiet"]
    argv += [f"--set=data.{split}_tsv={path}" for split, path in paths.items()]
    assert main([*argv, "--epochs", "1", "--max-steps", "2"]) == 0
    assert (run_dir / "best.pt").is_file()

    genes = [dna for dna, _ in read_pairs(paths["test"])]
    source = tmp_path / "genes.txt"
    source.write_text("".join(gene + "\n" for gene in genes), encoding="utf-8")
    capsys.readouterr()
    assert main(["translate", str(run_dir / "best.pt"), "--input", str(source), "--quiet"]) == 0
    translations = capsys.readouterr().out.splitlines()
    assert len(translations) == len(genes)
