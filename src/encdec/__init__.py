"""encdec: recurrent encoder-decoder models for machine translation.

`Translator`, `train` and `load_config` are imported on first use, so that `import encdec`
(and `import encdec.search`) stays light: no spaCy, no training loop until they are asked for.
"""

from __future__ import annotations

import importlib
import re
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING

from encdec.errors import EncdecError

if TYPE_CHECKING:
    from encdec.config import Config, load_config
    from encdec.training import train
    from encdec.translator import Translator

__all__ = ["Config", "EncdecError", "Translator", "load_config", "train"]


def _version() -> str:
    """The installed version, or the checkout's when src/ is used without installing it."""
    try:
        return version("encdec")
    except PackageNotFoundError:  # e.g. PYTHONPATH=src on a machine that cannot pip install
        pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
        found = re.search(r'^version = "(.+)"$', pyproject.read_text(encoding="utf-8"), re.M)
        return found.group(1)


__version__ = _version()

# public name -> the module that defines it
_LAZY = {
    "Config": "encdec.config",
    "load_config": "encdec.config",
    "train": "encdec.training",
    "Translator": "encdec.translator",
}


def __getattr__(name: str) -> object:
    if name not in _LAZY:
        raise AttributeError(f"module 'encdec' has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
