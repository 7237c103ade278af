"""Feeding accepted URLs into a job: read in a thread, dedupe in Redis, yield batches.

Shared by the embedded crawl and `submit`, so both accept exactly the same URLs.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

from crawler.store import ResultStore
from crawler.urls import IntakeStats


async def claimed_batches(
    urls: Iterator[str], store: ResultStore, intake: IntakeStats, size: int = 1000
) -> AsyncIterator[list[str]]:
    """Batches of up to `size` URLs new to the job; reading runs in a thread (stdin may block)."""
    loop = asyncio.get_running_loop()

    def next_chunk() -> list[str]:
        chunk = []
        for url in urls:
            chunk.append(url)
            if len(chunk) >= size:
                break
        return chunk

    while chunk := await loop.run_in_executor(None, next_chunk):
        fresh = await store.claim(chunk)
        intake.duplicates += len(chunk) - len(fresh)
        if fresh:
            yield fresh
