"""encdec: recurrent encoder-decoder models for machine translation."""

from encdec.config import Config, load_config
from encdec.errors import EncdecError
from encdec.training import train
from encdec.translator import Translator

__all__ = ["Config", "EncdecError", "Translator", "load_config", "train"]
__version__ = "0.1.0"
