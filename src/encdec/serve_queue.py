"""Dynamic batching: sentences of concurrent requests with the same options are decoded together."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any


@dataclass(eq=False)
class _Chunk:
    """Sentences of one request waiting for the decoder, and the future their answers go to."""

    request: int
    sentences: list[str]
    options: Hashable
    alone: bool  # decoded in a batch of its own
    arrived: float  # event-loop time
    answer: asyncio.Future = field(repr=False)


@dataclass
class BatchStats:
    """What the queue has done so far (shown by GET /info)."""

    batches: int = 0
    sentences: int = 0
    most_requests_in_one_batch: int = 0
    most_sentences_in_one_batch: int = 0
    waiting_sentences: int = 0


class BatchingQueue:
    """Collects sentences from many requests into batches for one `decode` function.

    A batch holds sentences with equal options, at most `max_batch_sentences`, and the oldest
    waits at most `max_wait_ms` for company. `decode(sentences, options)` returns one result per
    sentence and runs in a worker thread, one batch at a time, so the event loop stays free.
    """

    def __init__(
        self,
        decode: Callable[[list[str], Any], list[Any]],
        max_batch_sentences: int,
        max_wait_ms: float,
    ):
        self._decode = decode
        self.max_batch_sentences = max_batch_sentences
        self.max_wait_ms = max_wait_ms
        self.stats = BatchStats()
        self._pending: list[_Chunk] = []
        self._arrival = asyncio.Event()
        self._request_ids = itertools.count()
        self._executor: ThreadPoolExecutor | None = None

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[BatchingQueue]:
        """Decode batches in the background while the block runs."""
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="encdec-decode")
        worker = asyncio.create_task(self._work())
        try:
            yield self
        finally:
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker
            self._executor.shutdown(wait=True)

    async def translate(
        self, sentences: Sequence[str], options: Hashable, alone: bool = False
    ) -> list[Any]:
        """The results of `decode` for `sentences`, in order, once their batches have run.

        `alone` keeps the request's sentences in batches of their own; otherwise they may share
        batches with other requests. Either way a batch holds at most `max_batch_sentences`.
        """
        size = self.max_batch_sentences
        request = next(self._request_ids)
        chunks = [
            self._enqueue(request, list(sentences[start : start + size]), options, alone)
            for start in range(0, len(sentences), size)
        ]
        answers = await asyncio.gather(*(chunk.answer for chunk in chunks))
        return [result for answer in answers for result in answer]

    def _enqueue(
        self, request: int, sentences: list[str], options: Hashable, alone: bool
    ) -> _Chunk:
        loop = asyncio.get_running_loop()
        chunk = _Chunk(request, sentences, options, alone, loop.time(), loop.create_future())
        self._pending.append(chunk)
        self.stats.waiting_sentences += len(sentences)
        self._arrival.set()
        return chunk

    async def _work(self) -> None:
        while True:
            batch = await self._next_batch()
            if batch:
                await self._run(batch)

    async def _next_batch(self) -> list[_Chunk]:
        """The oldest chunk and the chunks that may join it, once it has waited long enough."""
        while not self._pending:
            self._arrival.clear()
            await self._arrival.wait()
        first = self._pending[0]
        deadline = first.arrived + self.max_wait_ms / 1000
        loop = asyncio.get_running_loop()
        while (
            not first.alone
            and self._sentences_joining(first) < self.max_batch_sentences
            and loop.time() < deadline
        ):
            self._arrival.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._arrival.wait(), deadline - loop.time())
        return self._take(first)

    def _joins(self, chunk: _Chunk, first: _Chunk) -> bool:
        return chunk is first or (
            not first.alone and not chunk.alone and chunk.options == first.options
        )

    def _sentences_joining(self, first: _Chunk) -> int:
        return sum(len(chunk.sentences) for chunk in self._pending if self._joins(chunk, first))

    def _take(self, first: _Chunk) -> list[_Chunk]:
        """Remove from the queue, in arrival order, the chunks of `first`'s batch."""
        batch, size = [], 0
        for chunk in list(self._pending):
            if not self._joins(chunk, first):
                continue
            if chunk is not first and size + len(chunk.sentences) > self.max_batch_sentences:
                break
            self._pending.remove(chunk)
            self.stats.waiting_sentences -= len(chunk.sentences)
            if not chunk.answer.done():  # a request whose client went away is not decoded
                batch.append(chunk)
                size += len(chunk.sentences)
        return batch

    async def _run(self, batch: list[_Chunk]) -> None:
        """Decode a batch; if it fails, decode its chunks one by one so only the bad one fails."""
        sentences = [sentence for chunk in batch for sentence in chunk.sentences]
        loop = asyncio.get_running_loop()
        try:
            results = await loop.run_in_executor(
                self._executor, self._decode, sentences, batch[0].options
            )
        except Exception as error:
            if len(batch) == 1:
                _settle(batch[0].answer, error=error)
                return
            for chunk in batch:
                await self._run([chunk])
            return
        self._count(batch, len(sentences))
        start = 0
        for chunk in batch:
            _settle(chunk.answer, results[start : start + len(chunk.sentences)])
            start += len(chunk.sentences)

    def _count(self, batch: list[_Chunk], sentences: int) -> None:
        requests = len({chunk.request for chunk in batch})
        self.stats.batches += 1
        self.stats.sentences += sentences
        self.stats.most_requests_in_one_batch = max(self.stats.most_requests_in_one_batch, requests)
        self.stats.most_sentences_in_one_batch = max(
            self.stats.most_sentences_in_one_batch, sentences
        )


def _settle(answer: asyncio.Future, result: Any = None, error: Exception | None = None) -> None:
    if answer.done():  # cancelled: the request is gone
        return
    if error is not None:
        answer.set_exception(error)
    else:
        answer.set_result(result)
