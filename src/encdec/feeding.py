"""Batches made ahead of the training step by a background thread: padded, pinned, queued.

While the device works on one step, the thread pads the next batches (numpy, which mostly runs
outside Python's lock) into page-locked memory, so the step's `non_blocking` copies to a GPU
overlap the work before them instead of waiting for the host.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch

from encdec.batching import Batch

_DONE = object()


def pinned(batch: Batch) -> Batch:
    """The batch with its id tensors in page-locked memory (what a non-blocking copy needs)."""
    return Batch(
        batch.src.pin_memory(),
        batch.src_lengths,  # read on the host by pack_padded_sequence
        batch.trg.pin_memory(),
        batch.n_target_tokens,
        batch.indices,
    )


def fed_ahead(
    batches: Sequence[np.ndarray],
    make: Callable[[np.ndarray], Batch],
    pin: bool,
    ahead: int = 2,
) -> Iterator[tuple[np.ndarray, Batch]]:
    """(indices, batch) for each of `batches` in order, `make` run up to `ahead` batches early."""
    ready: queue.Queue = queue.Queue(maxsize=ahead)
    stopping = threading.Event()

    def produce() -> None:
        try:
            for indices in batches:
                batch = make(indices)
                _put(ready, (indices, pinned(batch) if pin else batch), stopping)
            _put(ready, _DONE, stopping)
        except BaseException as error:  # handed to the consumer, which raises it
            _put(ready, error, stopping)

    thread = threading.Thread(target=produce, name="encdec-batches", daemon=True)
    thread.start()
    try:
        while (item := ready.get()) is not _DONE:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:  # the consumer stopped early (a stop signal, an error): let the thread end
        stopping.set()
        thread.join()


def _put(ready: queue.Queue, item: object, stopping: threading.Event) -> None:
    """Queue `item`, waiting for room unless the consumer has gone."""
    while not stopping.is_set():
        try:
            ready.put(item, timeout=0.05)
            return
        except queue.Full:
            continue


def pin_batches(device: torch.device) -> bool:
    """Whether batches for `device` are worth pinning: only for copies to a GPU."""
    return device.type == "cuda"
