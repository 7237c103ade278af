"""Feeding input into a job: dedupe in Redis, batches, and submit's --max-queued stop."""

from __future__ import annotations

import fakeredis

from crawler.feed import claimed_batches
from crawler.store import ResultStore
from crawler.urls import IntakeStats, accept_urls

URLS = [f"http://a.example/{i}" for i in range(40)]
LINES = URLS[:10] + URLS[:10] + URLS[10:]  # lines 11-20 repeat 1-10


async def feed(limit: int, size: int = 1000) -> tuple[list[list[str]], IntakeStats]:
    intake = IntakeStats()
    store = ResultStore(fakeredis.FakeAsyncRedis(), "j")
    out = [b async for b in claimed_batches(accept_urls(LINES, intake), store, intake, size,
                                            limit=limit)]
    return out, intake


async def test_reading_stops_once_the_limit_is_accepted_and_names_the_next_line() -> None:
    batches, intake = await feed(limit=25)
    assert sum(map(len, batches)) == 25 and intake.duplicates == 10
    assert [u for b in batches for u in b] == URLS[:25]
    assert intake.stopped_at == 36 and intake.lines == 36  # line 36 was peeked, not queued


async def test_small_batches_stop_at_the_same_place() -> None:
    batches, intake = await feed(limit=30, size=7)
    assert max(map(len, batches)) <= 7 and sum(map(len, batches)) == 30
    assert intake.stopped_at == 41  # URL 30, the first line past the 30th new URL


async def test_no_stop_when_the_input_ends_at_or_within_the_limit() -> None:
    for limit in (0, 40, 41):  # 0: no limit; 40: the last line is the 40th new URL
        batches, intake = await feed(limit=limit, size=7)
        assert sum(map(len, batches)) == 40 and intake.stopped_at is None
