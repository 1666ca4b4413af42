"""encdec: recurrent encoder-decoder models for machine translation.

`Translator`, `train` and `load_config` are imported on first use, so that `import encdec`
(and `import encdec.search`) stays light: no spaCy, no training loop until they are asked for.
"""

from __future__ import annotations

import importlib
from importlib.metadata import version
from typing import TYPE_CHECKING

from encdec.errors import EncdecError

if TYPE_CHECKING:
    from encdec.config import Config, load_config
    from encdec.training import train
    from encdec.translator import Translator

__all__ = ["Config", "EncdecError", "Translator", "load_config", "train"]
__version__ = version("encdec")  # from pyproject.toml, as installed

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
