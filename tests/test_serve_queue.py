"""Tests for serve_queue.BatchingQueue: what a batch may hold."""

import asyncio

from encdec.serve_queue import BatchingQueue


def test_a_request_decoded_alone_still_keeps_to_the_batch_cap():
    batches = []

    def decode(sentences: list[str], options: str) -> list[str]:
        batches.append(list(sentences))
        return [sentence.upper() for sentence in sentences]

    async def requests() -> tuple[list, list]:
        queue = BatchingQueue(decode, max_batch_sentences=3, max_wait_ms=20)
        async with queue.running():
            return await asyncio.gather(
                queue.translate(list("abcdefg"), "seeded", alone=True),
                queue.translate(["x"], "seeded"),
            )

    seeded, other = asyncio.run(requests())
    assert seeded == list("ABCDEFG") and other == ["X"]
    assert max(map(len, batches)) <= 3
    assert sorted(batches) == [["a", "b", "c"], ["d", "e", "f"], ["g"], ["x"]]  # alone: no "x"
