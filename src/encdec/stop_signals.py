"""SIGINT and SIGTERM while training: finish the step, save last.pt, say how to resume."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

from encdec.distributed import Processes, sum_across
from encdec.reporting import FILE_ONLY

if TYPE_CHECKING:
    from encdec.run_state import Run

log = logging.getLogger("encdec")


class TrainingStopped(KeyboardInterrupt):
    """Training stopped on SIGINT or SIGTERM after saving last.pt; exit with `exit_code`."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code  # 128 + the signal's number, as a shell reports it


class StopSignals:
    """SIGINT and SIGTERM ask training to stop after the current step; a second SIGINT at once."""

    def __init__(self) -> None:
        self.signal_number: int | None = None

    def handle(self, signal_number: int, frame: object) -> None:
        # no logging or printing here: a handler may interrupt the very stream it would write to
        if self.signal_number is not None and signal_number == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal_number = signal_number

    def vote(self) -> float:
        """1.0 when a signal came to this process, else 0.0: summed over processes, a stop vote."""
        return float(self.signal_number is not None)

    def requested(self, processes: Processes) -> bool:
        """Whether a signal came to any process: all of them stop at the same point."""
        (votes,) = sum_across([self.vote()], processes)
        return votes > 0

    def raise_stopped(self, run: Run) -> None:
        """Raise TrainingStopped; last.pt must hold the current state."""
        number = self.signal_number or signal.SIGTERM  # the signal may have come to another rank
        progress, name = run.progress, signal.Signals(number).name
        message = (
            f"stopped by {name} at epoch {progress.epoch}, step {progress.step} of "
            f"{len(progress.batches)}; last.pt is saved: continue with "
            f"`encdec train --resume {run.out_dir}`"
        )
        log.info(message, extra={FILE_ONLY: True})  # the exception's message reaches stderr
        raise TrainingStopped(message, 128 + number)


@contextlib.contextmanager
def catching_stop_signals() -> Iterator[StopSignals]:
    """Catch SIGINT and SIGTERM while training (only the main thread may), then restore them."""
    stop = StopSignals()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    numbers = (signal.SIGINT, signal.SIGTERM)
    previous = {number: signal.signal(number, stop.handle) for number in numbers}
    try:
        yield stop
    finally:
        for number, handler in previous.items():
            signal.signal(number, signal.SIG_DFL if handler is None else handler)
