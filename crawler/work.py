"""The vocabulary of a run: a URL on its way, the run's counters and options, the hooks a
crawl plugs in (a frontier for found links, a hand-off for long-deferred hosts)."""

from __future__ import annotations

import time
from bisect import bisect_left
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import urlsplit

from crawler.options import CrawlOptions
from crawler.request import CrawlRequest, decode
from crawler.retry import RetryPolicy


@dataclass(slots=True)
class Work:
    """One URL on its way through the loop; `req` is its structured request (method, headers,
    body, meta), None for a plain GET."""

    url: str
    host: str
    depth: int = 0
    attempts: int = 0
    req: CrawlRequest | None = None

    @classmethod
    def of(cls, entry: str, depth: int = 0) -> Work:
        """The work for a batch entry (crawler.request): a URL, or a JSON request."""
        if not entry.startswith("{"):
            return cls(entry, host_of(entry), depth)
        req = decode(entry)
        return cls(req.url, host_of(req.url), depth, req=req)

    @property
    def entry(self) -> str:
        """Back to the batch entry it came from (a hand-back, a stop)."""
        return self.url if self.req is None else self.req.entry


# Upper bounds (s) of the fetch-duration buckets (the last, +Inf, is implicit): a fetch costs
# one bisect and two additions here; crawler.metrics publishes them as a histogram.
FETCH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass
class RunStats:
    """Live counters of one run, read by progress displays and the metrics publisher (never
    locked: one loop writes them); the store holds the truth."""

    started: float = field(default_factory=time.monotonic)
    finished: float | None = None
    queued: int = 0
    done: int = 0
    ok: int = 0
    failed: int = 0
    bytes: int = 0
    retries: int = 0
    penalties: int = 0
    deferred_host: int = 0
    deferred_global: int = 0
    limiter_calls: int = 0
    store_calls: int = 0
    late_slots: int = 0  # granted slots given up because the process woke too late
    written: int = 0
    inflight: int = 0
    links_found: int = 0  # links of fetched pages (before scope and dedupe)
    links_new: int = 0  # of them, new to the job and fetched by this run (embedded)
    robots_disallowed: int = 0
    handed_off: int = 0  # URLs of long-deferred hosts given back to the job (delayed batches)
    fetches: int = 0  # requests made (attempts: a retried URL counts each)
    fetch_seconds: float = 0.0  # their total duration
    fetch_buckets: list[int] = field(default_factory=lambda: [0] * (len(FETCH_BUCKETS) + 1))
    limiter_wait: float = 0.0  # s granted URLs were told to wait for their slot
    errors: Counter[str] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)

    def fetched(self, elapsed_ms: float) -> None:
        """Count one request and its duration (the histogram's bucket and sum)."""
        s = elapsed_ms / 1000.0
        self.fetches += 1
        self.fetch_seconds += s
        self.fetch_buckets[bisect_left(FETCH_BUCKETS, s)] += 1

    @property
    def elapsed(self) -> float:
        return (self.finished or time.monotonic()) - self.started

    @property
    def rate(self) -> float:
        return self.done / self.elapsed if self.elapsed > 0 else 0.0


class Frontier(Protocol):
    """Where found links go (crawler.frontier): claimed into the job before their pages'
    records are written; returns the ones this run fetches itself, with their depth."""

    async def add(self, pages: Sequence[tuple[int, list[str]]]) -> list[tuple[str, int]]: ...

    async def level_completed(self) -> None: ...


# Hands URLs (of one depth) back to the job, to run no sooner than the delay (s) from now.
Defer = Callable[[list[str], int, float], Awaitable[None]]


@dataclass(frozen=True, slots=True, kw_only=True)
class RunnerOptions:
    concurrency: int = 100
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    worker: str = ""
    host_interval: float = 0.0  # s, configured per-host interval: when to re-ask a parked host
    body_store_max: int | None = None  # keep at most this many body bytes; None = no bodies
    max_pending: int = 10_000  # URLs held in memory (ready + parked + retrying + in flight)
    host_cap: int = 0  # slots one host may hold (0: half of them); see crawler.slots
    handoff_after: float = 30.0  # s: a host deferred longer gives its URLs back (with `defer`)
    depth_limit: int = 0  # links followed from pages of depth < this; -1 = any depth
    level_barrier: bool = False  # fetch depth d only when every URL of depth < d is recorded
    lease_period: float = 0.02  # s of demand one limiter call reserves (global limit); 0 = off

    @classmethod
    def for_job(cls, options: CrawlOptions, *, concurrency: int, worker: str) -> RunnerOptions:
        """The runner's view of a job's options, for a process with `concurrency` slots."""
        return cls(
            concurrency=concurrency,
            policy=options.retry_policy(),
            worker=worker,
            host_interval=1.0 / options.per_host_qps if options.per_host_qps else 0.0,
            body_store_max=options.body_store_max_bytes if options.store_body else None,
            max_pending=max(10 * concurrency, 10_000),
            host_cap=options.limit_per_host,
            handoff_after=options.handoff_after,
            depth_limit=options.depth,
            level_barrier=options.level_barrier,
            lease_period=options.lease_period,
        )


def host_of(url: str) -> str:
    """The host of a canonical URL (lower case, no userinfo, port or brackets).

    String slicing, not urlsplit: this runs for every URL and intake already validated it.
    """
    _scheme, sep, rest = url.partition("://")
    if not sep:
        return urlsplit(url).hostname or ""
    netloc = rest.split("/", 1)[0].split("?", 1)[0].rpartition("@")[2]
    if netloc.startswith("["):
        return netloc[1 : netloc.find("]")].lower()
    return netloc.partition(":")[0].lower()
