"""The per-job crawl parts both the embedded crawl and the workers build: robots.txt through
the job's own engine and limiter, and the frontier's link policy.

Kept apart from `crawler.robots` (which takes a plain fetch callable) so that robots.txt
parsing and sharing know nothing of engines or the limiter.
"""

from __future__ import annotations

from typing import Any

from crawler.engines.base import Engine
from crawler.options import CrawlOptions
from crawler.pacing import polite_wait
from crawler.ratelimit import AsyncRateLimiter
from crawler.ratelimit.fallback import FallbackLimiter
from crawler.records import FetchResult
from crawler.robots import RobotsCache, RobotsRules
from crawler.work import host_of


def polite_fetcher(engine: Engine, limiter: AsyncRateLimiter | FallbackLimiter) -> Any:
    """A fetch of one URL that first takes a slot from the shared limiter, like any page."""

    async def fetch(url: str) -> FetchResult:
        await polite_wait(limiter, host_of(url))
        return await engine.fetch(url, before_hop=lambda hop: polite_wait(limiter, host_of(hop)))

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
