"""Feeding accepted URLs into a job: read in a thread, dedupe in Redis, yield batches.

Shared by the embedded crawl and `submit`, so both accept exactly the same URLs.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

from crawler.store import ResultStore
from crawler.urls import IntakeStats


async def claimed_batches(
    urls: Iterator[str], store: ResultStore, intake: IntakeStats, size: int = 1000, *,
    cap: int = 0, on_accepted: Callable[[list[str]], Awaitable[None]] | None = None,
) -> AsyncIterator[list[str]]:
    """Batches of up to `size` URLs new to the job (at most `cap` in all, 0 = any); reading runs
    in a thread (stdin may block)."""
    loop = asyncio.get_running_loop()

    def next_chunk() -> list[str]:
        chunk = []
        for url in urls:
            chunk.append(url)
            if len(chunk) >= size:
                break
        return chunk

    while chunk := await loop.run_in_executor(None, next_chunk):
        over = store.over_limit
        fresh = await store.claim(chunk, cap=cap)
        intake.over_limit += store.over_limit - over
        intake.duplicates += len(chunk) - len(fresh) - (store.over_limit - over)
        if fresh:
            if on_accepted is not None:
                await on_accepted(fresh)
            yield fresh
