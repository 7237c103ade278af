"""Seeds from sitemaps (`--sitemaps`): after the input URLs, the pages the seed hosts list.

For each origin of the seeds (up to `MAX_SITEMAP_ORIGINS`), the `Sitemap:` lines of its
robots.txt (read through the job's shared robots cache, so workers reuse the answer), or
`/sitemap.xml` when the job ignores robots.txt; sitemap indexes are followed and gzipped files
read (`crawler.sitemaps`). Their URLs are canonicalized, kept by the job's link policy (scope,
--allow/--deny) and claimed into the job at depth 0 like input URLs, so duplicates of the
input are dropped and `--max-pages` counts them. Sitemap files go through the job's engine
and limiter like pages; a file larger than `--max-bytes` is skipped.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import Any

from crawler.frontier import LinkPolicy
from crawler.robots import Kind, RobotsCache, origin_of
from crawler.sitemaps import expand_sitemaps, sitemaps_in_robots
from crawler.store import ResultStore
from crawler.urls import InvalidURL, canonicalize

MAX_SITEMAP_ORIGINS = 1000  # seed origins whose sitemaps are read


async def with_sitemaps(
    batches: AsyncIterable[list[str]], *, fetch: Callable[[str], Any],
    robots: RobotsCache | None, policy: LinkPolicy, store: ResultStore, cap: int,
    size: int = 1000,
) -> AsyncIterator[list[str]]:
    """`batches` (claimed seed batches) passed through, then claimed batches of sitemap URLs."""
    origins: dict[str, None] = {}
    async for batch in batches:
        for url in batch:
            if len(origins) < MAX_SITEMAP_ORIGINS:
                origins.setdefault(origin_of(url), None)
        yield batch
    roots: list[str] = []
    for origin in origins:
        if robots is None:
            roots.append(origin + "/sitemap.xml")
            continue
        rules = await robots.load(origin)
        if rules.entry.kind is Kind.RULES:
            roots += sitemaps_in_robots(rules.entry.text)

    async def get(url: str) -> tuple[int | None, bytes | None]:
        res = await fetch(url)
        return (res.status, res.body) if res.error is None else (None, None)

    chunk: list[str] = []
    async for raw in expand_sitemaps(roots, get):
        try:
            chunk.append(canonicalize(raw))
        except InvalidURL:
            continue
        if len(chunk) >= size:
            if fresh := await _claim(chunk, policy, store, cap):
                yield fresh
            chunk = []
    if chunk and (fresh := await _claim(chunk, policy, store, cap)):
        yield fresh


async def _claim(urls: list[str], policy: LinkPolicy, store: ResultStore, cap: int) -> list[str]:
    return await store.claim(await policy.keep(urls), cap=cap)
