"""Progress bars on stderr: drawn only on a terminal, and never inside `silence_bars()`."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator
from contextvars import ContextVar

from tqdm import tqdm

# Set by silence_bars; a context variable rather than a parameter, so that `--quiet` reaches
# every bar (training, validation, decoding) without threading a flag through each call.
_silenced: ContextVar[bool] = ContextVar("encdec_bars_silenced", default=False)


def progress_bar(iterable: Iterable | None = None, **options) -> tqdm:
    """A tqdm bar; off inside `silence_bars()`, and by itself when stderr is not a terminal."""
    # disable=None is tqdm's "off unless the output is a terminal" (pipes, files, CI logs)
    return tqdm(iterable, disable=True if _silenced.get() else None, **options)


@contextlib.contextmanager
def silence_bars(silent: bool = True) -> Iterator[None]:
    """Within this block no progress bar is drawn, when `silent`."""
    token = _silenced.set(silent or _silenced.get())
    try:
        yield
    finally:
        _silenced.reset(token)


class LogAboveBars(logging.StreamHandler):
    """Log lines to stderr, printed above any progress bars instead of through them."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # as logging.StreamHandler does: report, never raise
            self.handleError(record)
