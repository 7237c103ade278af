"""What a worker process keeps for its whole life: one event loop, engines, limiters, slots.

Celery's `threads` pool runs several batch tasks at once; each task thread hands its batch
to this process's single event loop (`run_batch`) and blocks until it is done. So:

* one `aiohttp.ClientSession` (async engine) and one thread pool with thread-local
  `requests.Session`s (thread engine) per process and fetch configuration, reused by every
  batch, never made per task;
* several batches in flight share one `Slots` pool: the worker's concurrency bounds the
  total of in-flight requests, whatever the number of batches;
* a control poller notices pause/cancel of a running job within `CONTROL_POLL` seconds and
  stops its batches mid-way; a batch time limit hands the rest back the same way.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import Future
from dataclasses import replace
from typing import Any

from pydantic import ValidationError

from crawler import loops
from crawler.backend import redis_client
from crawler.broker import send_batches
from crawler.engines import make_engine
from crawler.engines.base import Engine
from crawler.engines.config import FetchConfig
from crawler.jobs import JobControl
from crawler.options import CrawlOptions
from crawler.ratelimit import AsyncRateLimiter, LimiterConfig
from crawler.runner import BatchRunner, RunnerOptions
from crawler.settings import Settings
from crawler.slots import Slots

log = logging.getLogger(__name__)

CONTROL_POLL = 0.5  # s between checks of paused/cancelled jobs that have batches running here
SPEC_CACHE_TTL = 30.0  # s a job's spec is reused without reading Redis again (specs never change)


async def _one(urls: Sequence[str]) -> AsyncIterator[Sequence[str]]:
    yield urls


class WorkerRuntime:
    """The per-process state behind every batch task. Thread-safe entry: `run_batch`."""

    def __init__(self, settings: Settings, *, batch_time_limit: float = 3600.0) -> None:
        self.settings = settings
        self.name = settings.worker_label
        self.batch_time_limit = batch_time_limit
        self.loop = loops.new_loop()
        self._thread = threading.Thread(target=self._serve, name="crawler-loop", daemon=True)
        self._ready = threading.Event()
        self._thread.start()
        self._ready.wait()
        self._init: Future[None] = asyncio.run_coroutine_threadsafe(self._setup(), self.loop)
        self._init.result()

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._ready.set)
        self.loop.run_forever()

    async def _setup(self) -> None:
        self.client = redis_client(self.settings.shared_redis_url)
        self.jobs = JobControl(self.client, self.settings.key_prefix)
        self.slots = Slots(self.settings.concurrency)
        self.engines: dict[tuple[str, FetchConfig], Engine] = {}
        self.limiters: dict[LimiterConfig, AsyncRateLimiter] = {}
        self.specs: dict[str, tuple[float, CrawlOptions]] = {}
        self.active: dict[str, set[BatchRunner]] = defaultdict(set)
        self._poller = asyncio.create_task(self._poll_controls())

    # --- entry from Celery task threads ---------------------------------------------------

    def run_batch(self, job_id: str, batch_no: int) -> dict[str, Any]:
        """Run one batch on the process loop; blocks the calling (task) thread until done."""
        fut = asyncio.run_coroutine_threadsafe(self._run_batch(job_id, batch_no), self.loop)
        return fut.result()

    def close(self) -> None:
        fut = asyncio.run_coroutine_threadsafe(self._close(), self.loop)
        fut.result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)

    # --- on the loop ------------------------------------------------------------------------

    async def _run_batch(self, job_id: str, batch_no: int) -> dict[str, Any]:
        t0 = time.monotonic()
        verdict = await self.jobs.batch_start(job_id, batch_no, self.name)
        summary: dict[str, Any] = {"job": job_id, "batch": batch_no, "worker": self.name}
        if verdict != "run":
            return summary | {"outcome": verdict}
        try:
            options = await self._options(job_id)
        except ValidationError as exc:
            # A spec this worker cannot trust is never executed; the batch stays queued.
            log.error("job %s: invalid spec, batch %d not run: %s", job_id, batch_no,
                      str(exc).splitlines()[0])
            return summary | {"outcome": "rejected_spec"}
        store = self.jobs.store(job_id)
        urls = await store.unrecorded(await self.jobs.batch_urls(job_id, batch_no))
        runner = BatchRunner(
            await self._engine(options), self._limiter(options), RunnerOptions.for_job(
                options, concurrency=self.settings.concurrency, worker=self.name),
            slots=self.slots,
        )
        self.active[job_id].add(runner)
        deadline = self.loop.call_later(self.batch_time_limit, runner.stop, "time_limit")
        try:
            stats = await runner.run(_one(urls), store)
        finally:
            deadline.cancel()
            self.active[job_id].discard(runner)
            if not self.active[job_id]:
                del self.active[job_id]
        outcome = await self.jobs.batch_end(job_id, batch_no, runner.leftover)
        if outcome == "requeue":
            await self.loop.run_in_executor(None, send_batches, self._broker(), job_id, [batch_no])
        return summary | {
            "outcome": outcome, "urls": len(urls), "fetched": stats.done, "ok": stats.ok,
            "failed": stats.failed, "bytes": stats.bytes, "left": len(runner.leftover),
            "elapsed_s": round(time.monotonic() - t0, 3),
        }

    async def _options(self, job_id: str) -> CrawlOptions:
        cached = self.specs.get(job_id)
        if cached and time.monotonic() - cached[0] < SPEC_CACHE_TTL:
            return cached[1]
        options = CrawlOptions.model_validate(await self.jobs.spec(job_id))
        self.specs[job_id] = (time.monotonic(), options)
        return options

    async def _engine(self, options: CrawlOptions) -> Engine:
        # The worker, not the job, decides how many requests this process has in flight.
        config = replace(options.fetch_config(), concurrency=self.settings.concurrency)
        key = (options.mode, config)
        engine = self.engines.get(key)
        if engine is None:
            engine = make_engine(options.mode, config)
            await engine.start()
            self.engines[key] = engine
        return engine

    def _limiter(self, options: CrawlOptions) -> AsyncRateLimiter:
        config = options.limiter_config(self.settings.key_prefix)
        limiter = self.limiters.get(config)
        if limiter is None:
            limiter = self.limiters[config] = AsyncRateLimiter(self.client, config)
        return limiter

    def _broker(self) -> str:
        return self.settings.shared_broker_url

    async def _poll_controls(self) -> None:
        """Stop the running batches of jobs that were paused or cancelled."""
        while True:
            await asyncio.sleep(CONTROL_POLL)
            if not self.active:
                continue
            try:
                states = await self.jobs.current_states(list(self.active))
            except Exception as exc:  # Redis hiccup: the next poll tries again
                log.warning("could not read job states: %s", exc)
                continue
            for job_id, state in states.items():
                if state in ("paused", "cancelled", None):
                    for runner in list(self.active.get(job_id, ())):
                        runner.stop(state or "missing")

    async def _close(self) -> None:
        self._poller.cancel()
        for engine in self.engines.values():
            await engine.close()
        await self.client.aclose()
