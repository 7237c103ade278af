"""The frontier: links found on fetched pages become new URLs of the same job.

A page's links are filtered here (scope, --allow/--deny) and claimed into the job
(`ResultStore.claim`: once per job across the cluster, at most `max_pages` in all) *before*
the page's record is written, so `total` always grows before `done` and a job is never
finished early, and a worker that dies in between loses nothing (its page is fetched again,
its links found again). Depth: a link found on a page at depth d has depth d + 1; pages at the
job's depth limit are fetched, their links not followed.

Two frontiers, one policy:

* `LocalFrontier` (embedded crawl): accepted links go straight back to the running
  `BatchRunner`.
* `QueueFrontier` (workers): accepted links are stored as a new batch with a pending lease and
  sent to the queue, so any worker may fetch them (see claim.lua for the crash windows).

Depth-limited jobs run level by level (a batch of depth d waits until every URL of depth < d has
a record), so a URL is always first reached by a shortest path and `--depth N` is exact however
many workers race; jobs without a depth limit need no barrier and never wait.

Scope: `host` keeps links whose host is a seed's host, `domain` those whose registered domain
(public suffix list) is a seed's, `any` all. The seeds' hosts or domains are a Redis set of the
job (`scope`), so every worker judges alike.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from crawler.keys import job_key
from crawler.options import CrawlOptions
from crawler.request import entry_url
from crawler.scope import UrlFilter, scope_key
from crawler.store import BatchTarget, ResultStore
from crawler.work import host_of


class LinkPolicy:
    """Which found links a job keeps: scope against the seeds, then --allow/--deny."""

    def __init__(self, client: Any, prefix: str, job_id: str, options: CrawlOptions) -> None:
        self.client = client
        self.mode = options.scope
        self.key = job_key(prefix, job_id, "scope")
        self.filter = UrlFilter(options.allow, options.deny)
        self._in: set[str] = set()  # keys known to be in scope (a seed may come later: no "out")

    async def add_seeds(self, urls: Sequence[str]) -> None:
        """Record the scope keys of accepted seeds (submit and the embedded crawl call this)."""
        if self.mode == "any" or not urls:
            return
        keys = {scope_key(host_of(u), self.mode) for u in urls}
        await self.client.sadd(self.key, *keys)
        self._in.update(keys)

    async def keep(self, links: Sequence[str]) -> list[str]:
        """The links (entries: URLs, or JSON requests from --extract) the job keeps."""
        passed = [u for u in links if self.filter.allows(entry_url(u))]
        if self.mode == "any" or not passed:
            return passed
        keys = [scope_key(host_of(entry_url(u)), self.mode) for u in passed]
        unknown = sorted({k for k in keys if k not in self._in})
        if unknown:
            found = await self.client.smismember(self.key, unknown)
            self._in.update(k for k, f in zip(unknown, found, strict=True) if f)
        return [u for u, k in zip(passed, keys, strict=True) if k in self._in]


class LocalFrontier:
    """Embedded crawl: accepted links are fetched by the same run."""

    def __init__(self, store: ResultStore, policy: LinkPolicy, options: CrawlOptions) -> None:
        self.store = store
        self.policy = policy
        self.cap = options.max_pages
        self.found = 0

    async def add(self, pages: Sequence[tuple[int, list[str]]]) -> list[tuple[str, int]]:
        """Links found on pages (page depth, links) -> URLs to fetch now, with their depth."""
        out: list[tuple[str, int]] = []
        for depth, links in _by_depth(pages).items():
            kept = await self.policy.keep(links)
            fresh = await self.store.claim(kept, cap=self.cap, depth=depth)
            out += [(u, depth) for u in fresh]
        self.found += len(out)
        return out

    async def level_completed(self) -> None:
        """Levels are the runner's own business in one process."""


class QueueFrontier:
    """Workers: accepted links become new batches on the queue, for any worker to fetch."""

    def __init__(
        self, store: ResultStore, policy: LinkPolicy, options: CrawlOptions, *,
        new_batch: Callable[[], Awaitable[int]], key: Callable[[str], str],
        pending_lease_ms: int,
        send: Callable[[list[int], str, Sequence[str] | None], Awaitable[None]],
        release: Callable[[], Awaitable[list[int]]],
    ) -> None:
        self.store = store
        self.policy = policy
        self.cap = options.max_pages
        self.new_batch = new_batch
        self.key = key
        self.pending_lease_ms = pending_lease_ms
        self.send = send
        self.release = release
        self.found = 0
        self.batches = 0

    async def add(self, pages: Sequence[tuple[int, list[str]]]) -> list[tuple[str, int]]:
        for depth, links in _by_depth(pages).items():
            kept = await self.policy.keep(links)
            if not kept:
                continue
            number = await self.new_batch()
            target = BatchTarget(
                number, self.key(f"batch:{number}"), self.key("leases"), self.key("owners"),
                self.key("depths"), self.pending_lease_ms)
            fresh = await self.store.claim(kept, cap=self.cap, depth=depth, batch=target)
            if fresh:
                self.found += len(fresh)
                self.batches += 1
                await self.send([number], "links", fresh)
        return []

    async def level_completed(self) -> None:
        """A link level is complete: batches held at the barrier may run now."""
        held = await self.release()
        if held:
            await self.send(held, "released", None)


def _by_depth(pages: Sequence[tuple[int, list[str]]]) -> dict[int, list[str]]:
    """Links grouped by the depth they get (their page's depth + 1)."""
    out: dict[int, list[str]] = {}
    for depth, links in pages:
        out.setdefault(depth + 1, []).extend(links)
    return out
