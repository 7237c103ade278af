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
    cap: int = 0, limit: int = 0,
    on_accepted: Callable[[list[str]], Awaitable[None]] | None = None,
) -> AsyncIterator[list[str]]:
    """Batches of up to `size` URLs new to the job (at most `cap` in all, 0 = any, the rest
    counted over_limit); reading runs in a thread (stdin may block). With `limit`, reading
    stops once that many were accepted, and `intake.stopped_at` names the first line left
    unread if the input goes on (`submit --max-queued`: nothing beyond it is even read)."""
    loop = asyncio.get_running_loop()
    accepted = 0

    def next_chunk() -> list[str]:
        chunk: list[str] = []
        want = size if not limit else min(size, limit - accepted)
        if want <= 0:
            if next(urls, None) is not None:
                intake.stopped_at = intake.lines
            return chunk
        for url in urls:
            chunk.append(url)
            if len(chunk) >= want:
                break
        return chunk

    while chunk := await loop.run_in_executor(None, next_chunk):
        over = store.over_limit
        fresh = await store.claim(chunk, cap=cap)
        intake.over_limit += store.over_limit - over
        intake.duplicates += len(chunk) - len(fresh) - (store.over_limit - over)
        accepted += len(fresh)
        if fresh:
            if on_accepted is not None:
                await on_accepted(fresh)
            yield fresh
