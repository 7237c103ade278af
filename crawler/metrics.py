"""Prometheus metrics of a worker process: its runners count, a publisher copies once a second.

The fetch path only bumps plain integers in `RunStats` (a prometheus_client counter costs
3-5 us an update in multi-process mode: 2-4 % of a page's CPU at 8,000 pages/s). Once a second
`MetricsPublisher.publish` adds each running batch's increments to the prometheus_client
metrics, which serve them on `--metrics-port`.

Several workers on one machine may share one port: with `--metrics-dir DIR`
(prometheus_client's multi-process mode, `PROMETHEUS_MULTIPROC_DIR`) every process writes
its values under DIR, and whichever process holds the port serves the sum of all of them; the
others try to take the port over every `TAKEOVER_EVERY` seconds, so the endpoint survives
the death of the process that served it. Metric names and labels: README, "Metrics".
"""

from __future__ import annotations

import errno
import logging
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
)
from prometheus_client import multiprocess as mp

from crawler.work import FETCH_BUCKETS, RunStats

log = logging.getLogger(__name__)

TAKEOVER_EVERY = 5.0  # s between a sharing process's attempts to take the port over
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# RunStats field -> counter name: the plain counts published as they are.
_PLAIN = {
    "fetches": "crawler_fetches_total",
    "bytes": "crawler_response_bytes_total",
    "retries": "crawler_retries_total",
    "penalties": "crawler_penalties_total",
    "limiter_calls": "crawler_limiter_calls_total",
    "late_slots": "crawler_late_slots_total",
    "store_calls": "crawler_store_calls_total",
    "links_found": "crawler_links_found_total",
    "robots_disallowed": "crawler_robots_disallowed_total",
}
_HELP = {
    "crawler_fetches_total": "HTTP requests made (each attempt of a retried URL counts)",
    "crawler_response_bytes_total": "Body bytes of recorded pages",
    "crawler_retries_total": "Attempts that were retried (timeouts, 429/5xx, ...)",
    "crawler_penalties_total": "Back-offs a host's answer put on that host for every worker",
    "crawler_limiter_calls_total": "Round trips to the shared rate limiter",
    "crawler_late_slots_total": "Granted slots given up because the process woke too late",
    "crawler_store_calls_total": "Round trips writing records to the job store",
    "crawler_links_found_total": "Links found on fetched pages (before scope and dedupe)",
    "crawler_robots_disallowed_total": "URLs not fetched because robots.txt disallows them",
}


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


class CrawlMetrics:
    """The metric objects of one process, registered in `registry`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        def counter(name: str, doc: str, labels: Iterable[str] = ()) -> Counter:
            return Counter(name, doc, list(labels), registry=registry)

        self.plain = {f: counter(n, _HELP[n]) for f, n in _PLAIN.items()}
        self.pages = counter("crawler_pages_total", "Records written, by job and outcome",
                             ("job", "outcome"))
        self.responses = counter("crawler_responses_total",
                                 "Recorded pages by HTTP status class (none: no response)",
                                 ("status_class",))
        self.errors = counter("crawler_errors_total", "Failed pages by error class", ("error",))
        self.defers = counter("crawler_limiter_defers_total",
                              "Limiter answers 'not now', by the limit that said it",
                              ("scope",))
        self.limiter_wait = counter("crawler_limiter_wait_seconds_total",
                                    "Seconds granted requests waited for their slot")
        self.batches = counter("crawler_batches_total", "Batch runs ended, by outcome",
                               ("outcome",))
        self.duration = Histogram("crawler_fetch_duration_seconds",
                                  "Duration of one request (redirects included)",
                                  buckets=FETCH_BUCKETS, registry=registry)
        self.inflight = Gauge("crawler_inflight_requests", "Requests in flight",
                              registry=registry, multiprocess_mode="livesum")
        self.running = Gauge("crawler_batches_running", "Batches running",
                             registry=registry, multiprocess_mode="livesum")
        self.slots = Gauge("crawler_concurrency", "Requests this process may have in flight",
                           registry=registry, multiprocess_mode="livesum")


@dataclass
class _Seen:
    """What was already published of one run's RunStats."""

    counts: dict[str, float] = field(default_factory=dict)  # RunStats field -> value
    fetch_seconds: float = 0.0
    buckets: list[int] = field(default_factory=lambda: [0] * (len(FETCH_BUCKETS) + 1))
    statuses: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)


class MetricsPublisher:
    """Adds what each run counted since the last call to the metrics. One thread calls it."""

    def __init__(self, metrics: CrawlMetrics) -> None:
        self.m = metrics
        self._seen: dict[int, _Seen] = {}

    def _counters(self, job_id: str) -> list[tuple[str, Any]]:
        """(RunStats field, the counter child it adds to)."""
        m = self.m
        return [*m.plain.items(),
                ("ok", m.pages.labels(job_id, "ok")), ("failed", m.pages.labels(job_id, "failed")),
                ("deferred_host", m.defers.labels("host")),
                ("deferred_global", m.defers.labels("global")),
                ("limiter_wait", m.limiter_wait)]

    def publish(self, job_id: str, stats: RunStats) -> None:
        seen = self._seen.setdefault(id(stats), _Seen())
        for name, child in self._counters(job_id):
            now, before = getattr(stats, name), seen.counts.get(name, 0)
            if now != before:
                child.inc(now - before)
                seen.counts[name] = now
        _add_counts(self.m.responses, stats.statuses, seen.statuses)
        _add_counts(self.m.errors, stats.errors, seen.errors)
        if stats.fetch_buckets != seen.buckets:
            _add_to_histogram(self.m.duration, stats.fetch_buckets, seen.buckets,
                              stats.fetch_seconds - seen.fetch_seconds)
            seen.buckets = list(stats.fetch_buckets)
            seen.fetch_seconds = stats.fetch_seconds

    def finish(self, job_id: str, stats: RunStats) -> None:
        """A run ended: publish its last counts and forget it."""
        self.publish(job_id, stats)
        self._seen.pop(id(stats), None)

    def batch_ended(self, outcome: str) -> None:
        self.m.batches.labels(outcome).inc()

    def gauges(self, *, inflight: int, running: int, concurrency: int) -> None:
        self.m.inflight.set(inflight)
        self.m.running.set(running)
        self.m.slots.set(concurrency)


def _add_counts(metric: Counter, counts: dict[str, int], seen: dict[str, int]) -> None:
    for key, now in counts.items():
        before = seen.get(key, 0)
        if now != before:
            metric.labels(key).inc(now - before)
            seen[key] = now


def _add_to_histogram(h: Histogram, buckets: list[int], seen: list[int], total: float) -> None:
    """Add bucket counts to a histogram without one observe() per fetch.

    prometheus_client has no public call for this; its histogram keeps one value per bucket
    (non-cumulative) and one for the sum, in both single- and multi-process mode, and
    tests/test_metrics.py checks the exposition against observe()."""
    values: Any = h._buckets
    for i, (now, before) in enumerate(zip(buckets, seen, strict=True)):
        if now != before:
            values[i].inc(now - before)
    h._sum.inc(total)


class MetricsServer:
    """Serves the process's metrics (or, in multi-process mode, every process's) on a port."""

    def __init__(self, port: int, address: str = "127.0.0.1") -> None:
        self.port = port
        self.address = address
        self.shared = multiprocess_dir()
        self.registry = CollectorRegistry()
        self.metrics = CrawlMetrics(self.registry)
        self.serving = False
        self._stop = threading.Event()
        self._server: Any = None

    def start(self) -> None:
        """Bind the port, or, when it is shared and taken, keep trying in the background.
        Without sharing a taken port is an error (OSError), as for any server."""
        if self._try_bind() or not self.shared:
            return
        threading.Thread(target=self._take_over, name="metrics-takeover", daemon=True).start()

    def _try_bind(self) -> bool:
        registry = self.registry
        if self.shared:
            registry = CollectorRegistry()  # the sum over every process's files
            mp.MultiProcessCollector(registry)
        try:
            self._server, _ = start_http_server(self.port, self.address, registry=registry)
        except OSError as exc:
            if not self.shared or exc.errno != errno.EADDRINUSE:
                raise
            return False
        self.serving = True
        shared = f" (every worker process sharing {self.shared})" if self.shared else ""
        log.info("metrics on http://%s:%d/metrics%s", self.address, self.port, shared)
        return True

    def _take_over(self) -> None:
        while not self._stop.wait(TAKEOVER_EVERY):
            try:
                if self._try_bind():
                    return
            except OSError as exc:
                log.warning("metrics port %d: %s", self.port, exc)
                return

    def close(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self.shared:
            mp.mark_process_dead(os.getpid())  # its live gauges leave the sum
