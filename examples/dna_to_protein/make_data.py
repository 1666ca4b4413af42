"""A toy parallel corpus for a character-level model: DNA coding sequences -> their proteins.

Each source line is a random gene (ATG, random sense codons, a stop codon); its target is the
protein the standard genetic code reads from it. Same seed, same files:

    python examples/dna_to_protein/make_data.py --out examples/dna_to_protein/data
"""

from __future__ import annotations

import argparse
import itertools
import random
from pathlib import Path

BASES = "TCAG"  # the order of the genetic-code table: the first base varies slowest
# NCBI translation table 1 (the standard code): the amino acid of each codon in table order
AMINO_ACIDS = "FFLLSSSSYY**CC*WLLLLPPPPHHQQRRRRIIIMTTTTNNKKSSRRVVVVAAAADDEEGGGG"
STOP = "*"
GENETIC_CODE = {
    "".join(codon): amino_acid
    for codon, amino_acid in zip(itertools.product(BASES, repeat=3), AMINO_ACIDS)
}
START_CODON = "ATG"
SENSE_CODONS = [codon for codon, amino_acid in GENETIC_CODE.items() if amino_acid != STOP]
STOP_CODONS = [codon for codon, amino_acid in GENETIC_CODE.items() if amino_acid == STOP]
SPLIT_SIZES = {"train": 5000, "valid": 200, "test": 200}


def translate(dna: str) -> str:
    """The protein `dna` encodes: read codon by codon from its start, up to the first stop."""
    protein = []
    for start in range(0, len(dna) - 2, 3):
        amino_acid = GENETIC_CODE[dna[start : start + 3]]
        if amino_acid == STOP:
            break
        protein.append(amino_acid)
    return "".join(protein)


def random_gene(rng: random.Random, min_codons: int, max_codons: int) -> str:
    """ATG, between `min_codons` and `max_codons` random sense codons, then a stop codon."""
    body = rng.choices(SENSE_CODONS, k=rng.randint(min_codons, max_codons))
    return START_CODON + "".join(body) + rng.choice(STOP_CODONS)


def make_corpus(
    out_dir: Path,
    sizes: dict[str, int] = SPLIT_SIZES,
    seed: int = 1,
    min_codons: int = 4,
    max_codons: int = 16,
) -> dict[str, Path]:
    """Write out_dir/{split}.tsv (dna<TAB>protein); no gene appears twice across the splits."""
    rng, seen = random.Random(seed), set()
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, size in sizes.items():
        genes = []
        while len(genes) < size:
            gene = random_gene(rng, min_codons, max_codons)
            if gene not in seen:
                seen.add(gene)
                genes.append(gene)
        paths[split] = out_dir / f"{split}.tsv"
        paths[split].write_text("".join(f"{g}\t{translate(g)}\n" for g in genes), encoding="utf-8")
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "data", help="folder for the TSV files"
    )
    parser.add_argument("--seed", type=int, default=1, help="same seed, same files")
    parser.add_argument("--train", type=int, default=SPLIT_SIZES["train"], help="training pairs")
    parser.add_argument("--valid", type=int, default=SPLIT_SIZES["valid"])
    parser.add_argument("--test", type=int, default=SPLIT_SIZES["test"])
    parser.add_argument(
        "--min-codons", type=int, default=4, help="fewest codons between ATG and stop"
    )
    parser.add_argument(
        "--max-codons", type=int, default=16, help="most codons between ATG and stop"
    )
    args = parser.parse_args(argv)
    sizes = {"train": args.train, "valid": args.valid, "test": args.test}
    for path in make_corpus(args.out, sizes, args.seed, args.min_codons, args.max_codons).values():
        print(path)


if __name__ == "__main__":
    main()
