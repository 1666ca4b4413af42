"""Fixtures shared by the test modules."""

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def multi30k_dir() -> Path:
    """The shared Multi30k copy: $ENCDEC_DATA, else ../shared/data/multi30k beside the repo."""
    repo_root = Path(__file__).resolve().parent.parent
    return Path(os.environ.get("ENCDEC_DATA") or repo_root.parent / "shared/data/multi30k")
