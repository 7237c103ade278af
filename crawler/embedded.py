"""The embedded single-process crawl: intake -> dedupe -> runner -> store -> export.

The same runner, limiter and store as the Celery workers; with no CRAWLER_REDIS_URL they
run on an in-process fakeredis, so `crawler crawl` needs no server.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from crawler.backend import check_redis, redis_client
from crawler.engines import make_engine
from crawler.export import Format, export
from crawler.extract import Extractor, check_extract
from crawler.feed import claimed_batches
from crawler.frontier import LinkPolicy, LocalFrontier
from crawler.hooks import post_status
from crawler.jobs import new_job_id
from crawler.politeness import polite_fetcher, robots_cache
from crawler.ratelimit import AsyncRateLimiter
from crawler.ratelimit.sole import SoleRateLimiter
from crawler.request import by_priority
from crawler.retention import expire_crawl
from crawler.runner import BatchRunner, RunnerOptions, RunStats
from crawler.seeding import with_sitemaps
from crawler.settings import Settings
from crawler.store import ResultStore
from crawler.urls import IntakeStats

log = logging.getLogger(__name__)

INTAKE_BATCH = 1000  # URLs read (in a thread) and deduplicated (one Redis round trip) at a time


@dataclass
class CrawlSummary:
    """What a finished embedded crawl reports."""

    job_id: str
    stats: RunStats
    intake: IntakeStats
    counters: dict[str, int] = field(default_factory=dict)
    exported: int = 0
    store_calls: int = 0


async def _highest_first(batches: AsyncIterator[list[str]]) -> AsyncIterator[list[str]]:
    """One process, one job: line priorities order each intake batch (1,000 lines), highest
    first; reading stays streamed, so there is no order across batches."""
    async for batch in batches:
        yield [e for _, part in by_priority(batch) for e in part]


async def crawl(
    urls: Iterator[str],
    settings: Settings,
    *,
    intake: IntakeStats | None = None,
    out: IO[bytes] | None = None,
    fmt: Format = "jsonl",
    job_id: str | None = None,
    on_start: Callable[[BatchRunner], Any] | None = None,
) -> CrawlSummary:
    """Crawl `urls` (canonical, e.g. from `crawler.urls.iter_urls`) and export to `out`."""
    intake = intake or IntakeStats()
    client = redis_client(settings.redis_url, patience=settings.redis_patience,
                          name="crawler-crawl")
    stack = contextlib.ExitStack()
    try:
        await check_redis(client, settings.redis_url)
        bloom = settings.bloom_params()
        if bloom is not None and settings.redis_url is None:
            # fakeredis copies a whole bitmap per SETBIT (22 URLs/s at the default size); in one
            # process the exact set costs this process's memory only, and dies with it.
            log.warning("--dedupe bloom needs a Redis server (CRAWLER_REDIS_URL); the "
                        "in-process crawl dedupes with the exact set")
            bloom = None
        store = ResultStore(client, job_id or new_job_id(), prefix=settings.key_prefix,
                            bloom=bloom)
        limiter_config = settings.limiter_config(settings.key_prefix)
        # In-process fakeredis: nobody else writes host state, so known answers skip the call.
        limiter = (SoleRateLimiter(client, limiter_config) if settings.redis_url is None
                   else AsyncRateLimiter(client, limiter_config))
        policy = LinkPolicy(client, settings.key_prefix, store.job_id, settings)
        frontier = LocalFrontier(store, policy, settings) if settings.follows_links else None
        extractor = None
        if settings.extract is not None:
            check_extract(settings.extract)  # before any fetch: one line, exit 2
            extractor = stack.enter_context(contextlib.closing(Extractor(settings.extract)))
        async with make_engine(settings.mode, settings.fetch_config()) as engine:
            robots = robots_cache(client, settings.key_prefix, store.job_id, settings, engine,
                                  limiter)
            runner = BatchRunner(engine, limiter, RunnerOptions.for_job(
                settings, concurrency=settings.concurrency, worker=settings.worker_label),
                frontier=frontier, robots=robots, extractor=extractor)
            if on_start is not None:
                on_start(runner)
            seeds = _highest_first(claimed_batches(
                urls, store, intake, INTAKE_BATCH, cap=settings.max_pages,
                on_accepted=policy.add_seeds))
            if settings.sitemaps:
                seeds = with_sitemaps(seeds, fetch=polite_fetcher(engine, limiter),
                                      robots=robots, policy=policy, store=store,
                                      cap=settings.max_pages)
            stats = await runner.run(seeds, store)
        await store.add_counter("rejected", intake.rejected)
        summary = CrawlSummary(store.job_id, stats, intake, store_calls=store.calls)
        if out is not None:
            summary.exported = await export(store.iter_records(), out, fmt)
        summary.counters = await store.counters()
        if settings.redis_url is not None:  # a shared Redis: the crawl's keys expire
            await expire_crawl(client, settings.key_prefix, store.job_id, settings.ttl)
        if settings.on_finish:  # the same hook as a distributed job's, with the counters
            await post_status(settings.on_finish, {"job_id": store.job_id, "state": "finished",
                                                   **summary.counters}, settings.fetch_config())
        return summary
    finally:
        stack.close()
        await client.aclose()
