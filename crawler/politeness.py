"""The per-job crawl parts both the embedded crawl and the workers build: robots.txt through
the job's own engine and limiter, and the frontier's link policy.

Kept apart from `crawler.robots` (which takes a plain fetch callable) so that robots.txt
parsing and sharing know nothing of engines or the limiter.
"""

from __future__ import annotations

import asyncio
from typing import Any

from crawler.engines.base import Engine
from crawler.options import CrawlOptions
from crawler.ratelimit import AsyncRateLimiter, Decision
from crawler.ratelimit.fallback import FallbackLimiter
from crawler.records import FetchResult
from crawler.robots import RobotsCache, RobotsRules
from crawler.runner import host_of

MAX_GLOBAL_WAIT = 1.0  # s a deferred robots.txt request sleeps before asking again


def polite_fetcher(engine: Engine, limiter: AsyncRateLimiter | FallbackLimiter) -> Any:
    """A fetch of one URL that first takes a slot from the shared limiter, like any page."""

    async def fetch(url: str) -> FetchResult:
        host = host_of(url)
        while True:
            grant = (await limiter.acquire_many([host]))[0]
            if grant.granted:
                if grant.wait > 0:
                    await asyncio.sleep(grant.wait)
                return await engine.fetch(url)
            wait = grant.wait if grant.decision is Decision.DEFER_HOST else min(
                grant.wait, MAX_GLOBAL_WAIT)
            await asyncio.sleep(max(wait, 0.001))

    return fetch


def robots_cache(
    client: Any, prefix: str, job_id: str, options: CrawlOptions, engine: Engine,
    limiter: AsyncRateLimiter | FallbackLimiter,
) -> RobotsCache | None:
    """The job's robots.txt cache, or None when the job does not obey robots.txt."""
    if not options.obeys_robots:
        return None

    async def crawl_delay(origin: str, rules: RobotsRules) -> None:
        delay = rules.crawl_delay
        if delay:
            await limiter.set_host_delay(host_of(origin + "/"), delay, options.robots_ttl)

    return RobotsCache(
        client, prefix, job_id, user_agent=options.user_agent,
        fetch=polite_fetcher(engine, limiter), on_fetched=crawl_delay, ttl=options.robots_ttl,
        hold=options.robots_hold, tries=options.robots_tries,
        lock_for=options.timeout + 30)
