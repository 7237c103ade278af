"""What a worker process keeps for its whole life: one event loop, engines, limiters, slots.

Celery's `threads` pool runs several batch tasks at once; each task thread hands its batch
to this process's single event loop (`run_batch`) and blocks until it is done. So:

* one `aiohttp.ClientSession` (async engine) and one thread pool with thread-local
  `requests.Session`s (thread engine) per process and fetch configuration, reused by every
  batch, never made per task;
* several batches in flight share one `Slots` pool: the worker's concurrency bounds the
  total of in-flight requests, whatever the number of batches;
* a control poller notices pause/cancel of a running job within `CONTROL_POLL` seconds and
  stops its batches mid-way; a batch time limit hands the rest back the same way;
* every running batch holds a lease that a heartbeat renews, and a reaper sends again the
  batches of workers that died (see `crawler.leases`);
* Redis going away stalls Redis work until it is back (the client retries, logging once) while
  fetching goes on under a local fallback limiter (`crawler.ratelimit.fallback`);
* `shutdown()` (SIGTERM) stops every batch: in-flight requests land, the rest is handed back
  to the queue for other workers.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import threading
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import Future
from dataclasses import replace
from functools import partial
from typing import Any

from pydantic import ValidationError

from crawler import gcpause, loops
from crawler.backend import outage_of, redis_client, server_uptime
from crawler.broker import send_batches, send_callback
from crawler.engines import make_engine
from crawler.engines.base import Engine
from crawler.engines.config import FetchConfig
from crawler.errors import JobNotFound
from crawler.extract import Extractor
from crawler.frontier import LinkPolicy, QueueFrontier
from crawler.hooks import post_status
from crawler.jobs import LIVE_HOSTS, JobControl
from crawler.keys import job_key
from crawler.leases import Leases, LeaseTiming
from crawler.metrics import MetricsPublisher, MetricsServer
from crawler.options import CrawlOptions
from crawler.politeness import robots_cache
from crawler.ratelimit import AsyncRateLimiter, LimiterConfig
from crawler.ratelimit.fallback import FallbackLimiter
from crawler.retention import expire_job
from crawler.robots import RobotsCache
from crawler.runner import BatchRunner, RunnerOptions
from crawler.schedule import Schedule
from crawler.settings import Settings
from crawler.slots import Slots
from crawler.store import ResultStore

log = logging.getLogger(__name__)

CONTROL_POLL = 0.5  # s between checks of paused/cancelled jobs that have batches running here
SPEC_CACHE_TTL = 30.0  # s a job's spec is reused without reading Redis again (specs never change)
# s after a shutdown began that Redis calls stop waiting for an outage to end: a worker asked to
# stop does not hang on a dead Redis (its leases run out and other workers take its batches).
SHUTDOWN_PATIENCE = 45.0
PUBLISH_EVERY = 1.0  # s between copies of the batches' counters to the Prometheus metrics
REPORT_EVERY = 1.0  # s between a worker's live reports on its jobs (`crawler status --watch`)
# Batches one task message may pass over in the line (paused, cancelled, done, running
# elsewhere) before it runs its own: each passed-over batch has a message of its own too.
PICKS_PER_TICKET = 100
# Outcomes of a batch that did not run: the message goes on to the next in line.
NOT_RUN = frozenset({"rejected_spec", "missing", "paused", "cancelled", "gone", "leased",
                     "held"})
# Jobs whose cookie jars (an engine each: a session, its pools) one process keeps at most;
# beyond, the least recently used job with no batch running here loses its jar.
COOKIE_JARS = 64


async def _one(urls: Sequence[str]) -> AsyncIterator[Sequence[str]]:
    yield urls


class WorkerRuntime:
    """The per-process state behind every batch task. Thread-safe entries: `run_batch`,
    `shutdown`, `close`."""

    def __init__(self, settings: Settings, *, batch_time_limit: float = 3600.0) -> None:
        self.settings = settings
        self.name = settings.worker_label
        self.batch_time_limit = batch_time_limit
        self.timing = LeaseTiming(settings.lease_seconds)
        # Owner tokens: unique per run of a batch, even for the same batch in this process.
        self.run_id = f"{self.name}:{os.getpid()}:{os.urandom(3).hex()}"
        self._seq = itertools.count()
        self.closing = False
        self.loop = loops.new_loop()
        self._thread = threading.Thread(target=self._serve, name="crawler-loop", daemon=True)
        self._ready = threading.Event()
        self._thread.start()
        self._ready.wait()
        self.metrics: MetricsServer | None = None
        self.publisher: MetricsPublisher | None = None
        if settings.metrics_port is not None:  # before the loop runs batches
            self.metrics = MetricsServer(settings.metrics_port, settings.metrics_address)
            self.metrics.start()
            self.publisher = MetricsPublisher(self.metrics.metrics)
        self._init: Future[None] = asyncio.run_coroutine_threadsafe(self._setup(), self.loop)
        self._init.result()
        gcpause.settle()

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._ready.set)
        self.loop.run_forever()

    async def _setup(self) -> None:
        url = self.settings.shared_redis_url
        # The main client waits out outages (no batch fails for a restart); the limiter's fails
        # fast and the fallback limiter paces locally meanwhile.
        self.client = redis_client(url, name="crawler-worker")
        self.limiter_client = redis_client(url, fail_fast=True, name="crawler-limiter")
        self.jobs = JobControl(self.client, self.settings.key_prefix)
        self.leases = Leases(self.client, self.settings.key_prefix, self.timing)
        self.schedule = Schedule(self.client, self.settings.key_prefix,
                                 self.settings.priority_aging)
        self.slots = Slots(self.settings.concurrency, self.settings.limit_per_host)
        self.engines: dict[tuple[str, FetchConfig], Engine] = {}
        self.limiters: dict[LimiterConfig, FallbackLimiter] = {}
        self.extractors: dict[str, Extractor] = {}  # --extract function -> its threads
        self.specs: dict[str, tuple[float, CrawlOptions]] = {}
        self._hooks: set[asyncio.Future[bool]] = set()  # finish hooks being posted
        self._closing: set[asyncio.Future[None]] = set()  # engines of ended jobs closing
        self.policies: dict[str, LinkPolicy] = {}  # per job: scope keys known in scope
        self.robots: dict[str, RobotsCache | None] = {}  # per job: robots.txt answers
        self.running: dict[str, dict[int, tuple[str, BatchRunner]]] = defaultdict(dict)
        self.peers = 1  # workers seen recently on our jobs: the fallback limiter's divisor
        self._marked: dict[str, float] = {}  # job -> when this process last listed it
        self._loops = [asyncio.create_task(c) for c in (
            self._poll_controls(), self._heartbeat(), self._reap(), self._publish(),
            self._report())]

    # --- entry from Celery task threads ---------------------------------------------------

    def run_batch(self, job_id: str, batch_no: int) -> dict[str, Any]:
        """Run one batch on the process loop; blocks the calling (task) thread until done."""
        fut = asyncio.run_coroutine_threadsafe(self._run_batch(job_id, batch_no), self.loop)
        return fut.result()

    def shutdown(self) -> None:
        """Stop taking batches; running ones land what is in flight and hand back the rest."""
        self.loop.call_soon_threadsafe(self._begin_shutdown)

    def close(self) -> None:
        fut = asyncio.run_coroutine_threadsafe(self._close(), self.loop)
        fut.result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)

    # --- on the loop ------------------------------------------------------------------------

    async def _run_batch(self, job_id: str, batch_no: int) -> dict[str, Any]:
        """A task message is a ticket (crawler.schedule): run the first batch in the shared
        line, passing over batches that may not run (paused, cancelled, done, running
        elsewhere); the message's own batch only when the line has nothing runnable."""
        if self.closing:  # taken while shutting down: not started, so send it to another worker
            await self._send(job_id, [batch_no], "handed_back")
            return {"job": job_id, "batch": batch_no, "worker": self.name,
                    "outcome": "handed_back"}
        for _ in range(PICKS_PER_TICKET):
            picked = await self.schedule.pop()
            if picked is None:
                break
            # An error before its batch start leaves the claim: it runs out and is put back.
            result = await self._run_one(*picked)
            if result["outcome"] not in NOT_RUN:
                return result | {"ticket": f"{job_id}/{batch_no}"}
        return await self._run_one(job_id, batch_no)

    async def _run_one(self, job_id: str, batch_no: int) -> dict[str, Any]:
        t0 = time.monotonic()
        summary: dict[str, Any] = {"job": job_id, "batch": batch_no, "worker": self.name}
        try:
            options = await self._options(job_id)
        except ValidationError as exc:
            # A spec this worker cannot trust is never executed; the batch stays stored.
            log.error("job %s: invalid spec, batch %d not run: %s", job_id, batch_no,
                      str(exc).splitlines()[0])
            await self.schedule.done(job_id, batch_no)
            return summary | {"outcome": "rejected_spec"}
        except JobNotFound:
            await self.schedule.done(job_id, batch_no)
            return summary | {"outcome": "missing"}
        await self._mark(job_id)  # before the lease exists: a reaper will look
        token = f"{self.run_id}:{next(self._seq)}"
        lease_ms = self.timing.lease_ms
        verdict, live, depth = await self.jobs.batch_start(
            job_id, batch_no, self.name, token=token, lease_ms=lease_ms,
            recent_ms=self.timing.recent_ms, barrier=options.level_barrier)
        await self.schedule.done(job_id, batch_no)  # its lease (or its verdict) rules now
        if verdict != "run":
            return summary | {"outcome": verdict}
        # Workers on this job now: the fallback limiter's divisor until the next heartbeat.
        self.peers = max(self.peers, live)
        store = self.jobs.store(job_id, options)
        engine, limiter = await self._engine(options, job_id), self._limiter(options)
        runner = BatchRunner(
            engine, limiter,
            RunnerOptions.for_job(options, concurrency=self.settings.concurrency,
                                  worker=self.name),
            slots=self.slots, frontier=self._frontier(job_id, options, store),
            robots=self._robots(job_id, options, engine, limiter),
            defer=self._deferrer(job_id),
            extractor=self._extractor(options),
        )
        self.running[job_id][batch_no] = (token, runner)
        deadline = self.loop.call_later(self.batch_time_limit, runner.stop, "time_limit")
        try:
            if self.closing:
                runner.stop("shutdown")
            urls = await store.unrecorded(await self.jobs.batch_urls(job_id, batch_no))
            stats = await runner.run(_one(urls), store, depth=depth)
        finally:
            deadline.cancel()
            self.running[job_id].pop(batch_no, None)
            if not self.running[job_id]:
                del self.running[job_id]
            if self.publisher is not None:  # its last counts, even if the run failed
                self.publisher.finish(job_id, runner.stats)
        outcome = await self.jobs.batch_end(job_id, batch_no, runner.leftover, token=token,
                                            lease_ms=lease_ms)
        if self.publisher is not None:
            self.publisher.batch_ended(outcome)
        if outcome == "requeue":
            await self._send(job_id, [batch_no], "requeued", runner.leftover)
        elif outcome == "lost":
            log.warning("job %s: batch %d was taken over by another worker (this one missed "
                        "its heartbeats); its records so far are kept", job_id, batch_no)
        # What Flower's task list shows as the result: the batch's outcome first.
        return {
            "outcome": outcome, "ok": stats.ok, "failed": stats.failed, "bytes": stats.bytes,
            "elapsed_s": round(time.monotonic() - t0, 3), "urls": len(urls),
            "fetched": stats.done, "left": len(runner.leftover), "stop": runner.stop_reason,
        } | summary

    async def _report(self) -> None:
        """Once a second, what this process is doing on each job, for live views."""
        reported: set[str] = set()
        while True:
            await asyncio.sleep(REPORT_EVERY)
            # A job whose last batch here ended gets one last, empty report: its in-flight
            # requests leave the views now, not when the report goes stale.
            for job_id in [*self.running, *(reported - set(self.running))]:
                runners = self._runners(job_id)
                hosts: Counter[str] = Counter()
                for runner in runners:
                    hosts.update(runner.queued_by_host())
                try:
                    await self.jobs.report_live(
                        job_id, self.name, inflight=sum(r.stats.inflight for r in runners),
                        hosts=dict(hosts.most_common(LIVE_HOSTS)))
                except Exception as exc:  # a view's data: never a reason to stop the loop
                    log.debug("live report failed: %s", exc)
            reported = set(self.running)

    async def _publish(self) -> None:
        """Copy the running batches' counters to the metrics (see crawler.metrics)."""
        if self.publisher is None:
            return
        while True:
            await asyncio.sleep(PUBLISH_EVERY)
            for job_id in list(self.running):
                for runner in self._runners(job_id):
                    self.publisher.publish(job_id, runner.stats)
            self.publisher.gauges(
                inflight=self.slots.used, running=sum(map(len, self.running.values())),
                concurrency=self.settings.concurrency)

    async def _mark(self, job_id: str) -> None:
        """Put the job on the reapers' list, once per heartbeat period at most (it stays there
        until the job is over; the heartbeat marks it again anyway)."""
        now = time.monotonic()
        if now - self._marked.get(job_id, -1e9) >= self.timing.heartbeat:
            await self.leases.mark([job_id])
            self._marked[job_id] = now

    async def _send(self, job_id: str, batch_nos: list[int], why: str,
                    urls: Sequence[str] | None = None) -> None:
        """Put the batches in the shared line (crawler.schedule), then send a message each."""
        try:
            job = (await self._options(job_id)).priority
        except (JobNotFound, ValidationError):  # its message will find it gone or refused
            job = 0
        lines = await self.schedule.line_priorities(job_id, batch_nos)
        await self.schedule.add(job_id, [(n, job + p) for n, p in zip(batch_nos, lines,
                                                                       strict=True)])
        await self.loop.run_in_executor(None, partial(
            send_batches, self._broker(), job_id, batch_nos, why=why, urls=urls,
            queue_type=self.settings.broker_queue_type))

    async def _options(self, job_id: str) -> CrawlOptions:
        cached = self.specs.get(job_id)
        if cached and time.monotonic() - cached[0] < SPEC_CACHE_TTL:
            return cached[1]
        options = CrawlOptions.model_validate(await self.jobs.spec(job_id))
        self.specs[job_id] = (time.monotonic(), options)
        return options

    async def _engine(self, options: CrawlOptions, job_id: str) -> Engine:
        # The worker, not the job, decides how many requests this process has in flight. A
        # job with cookies gets engines of its own (their jar is the job's in this process).
        config = replace(options.fetch_config(), concurrency=self.settings.concurrency,
                         cookie_scope=job_id if options.cookies else "")
        key = (options.mode, config)
        engine = self.engines.pop(key, None)  # put back last: the most recently used
        if engine is None:
            engine = make_engine(options.mode, config)
            await engine.start()
        self.engines[key] = engine
        if config.cookie_scope:
            self._evict_cookie_jars()
        return engine

    def _evict_cookie_jars(self) -> None:
        """Close the least recently used jobs' cookie engines beyond COOKIE_JARS, if idle here:
        the job-over signal (`_forget_job`) reaches only the worker that reaps the job."""
        scoped = [key for key in self.engines if key[1].cookie_scope]
        for key in scoped[: max(0, len(scoped) - COOKIE_JARS)]:
            if key[1].cookie_scope not in self.running:
                self._close_engine(key)
                # Its robots.txt cache fetches through that engine: the next batch of the
                # job here builds both again.
                self.robots.pop(key[1].cookie_scope, None)

    def _close_engine(self, key: tuple[str, FetchConfig]) -> None:
        engine = self.engines.pop(key)
        task = asyncio.ensure_future(engine.close())
        self._closing.add(task)  # held until done: a task nobody references may vanish
        task.add_done_callback(self._closing.discard)

    def _extractor(self, options: CrawlOptions) -> Extractor | None:
        """One per function and process, shared by the jobs that name it; imported once (a
        module that fails to import makes every page of its jobs `extract_failed`, logged)."""
        if options.extract is None:
            return None
        extractor = self.extractors.get(options.extract)
        if extractor is None:
            extractor = self.extractors[options.extract] = Extractor(options.extract)
        return extractor

    def _limiter(self, options: CrawlOptions) -> FallbackLimiter:
        config = options.limiter_config(self.settings.key_prefix)
        limiter = self.limiters.get(config)
        if limiter is None:
            limiter = self.limiters[config] = FallbackLimiter(
                AsyncRateLimiter(self.limiter_client, config), lambda: 1 / max(self.peers, 1))
        return limiter

    def _frontier(self, job_id: str, options: CrawlOptions, store: ResultStore
                  ) -> QueueFrontier | None:
        """Found links go to the queue as new batches; a fresh one per batch run (cheap)."""
        if not options.follows_links:
            return None
        prefix = self.settings.key_prefix
        pending = self.timing.pending_ms

        async def release() -> list[int]:
            return await self.jobs.release_held(job_id, lease_ms=pending)

        return QueueFrontier(
            store, self._policy(job_id, options), options,
            new_batch=lambda: self.jobs.new_link_batch(job_id),
            key=lambda name: job_key(prefix, job_id, name), pending_lease_ms=pending,
            send=lambda batches, why, urls: self._send(job_id, batches, why, urls),
            release=release)

    def _deferrer(self, job_id: str) -> Any:
        """URLs of a host deferred far ahead wait in Redis as a delayed batch (the reaper
        loop sends it when due), so this batch can end and free its task thread."""

        async def defer(urls: list[str], depth: int, delay: float) -> None:
            number = await self.jobs.new_link_batch(job_id)
            await self.jobs.delay_batch(job_id, number, urls, depth, delay)

        return defer

    def _policy(self, job_id: str, options: CrawlOptions) -> LinkPolicy:
        policy = self.policies.get(job_id)
        if policy is None:
            policy = self.policies[job_id] = LinkPolicy(
                self.client, self.settings.key_prefix, job_id, options)
        return policy

    def _robots(self, job_id: str, options: CrawlOptions, engine: Engine,
                limiter: FallbackLimiter) -> RobotsCache | None:
        """One robots.txt cache per job in this process, shared by its batches."""
        if job_id not in self.robots:
            self.robots[job_id] = robots_cache(
                self.client, self.settings.key_prefix, job_id, options, engine, limiter)
        return self.robots[job_id]

    def _forget_job(self, job_id: str) -> None:
        """A finished or cancelled job's per-job state goes, so a long-lived worker that runs
        many jobs does not keep every job's scope keys, robots.txt answers and cookie jars."""
        self.policies.pop(job_id, None)
        self.robots.pop(job_id, None)
        self.specs.pop(job_id, None)
        self._marked.pop(job_id, None)
        for key in [key for key in self.engines if key[1].cookie_scope == job_id]:
            self._close_engine(key)  # the job's cookie jar goes with its engine

    def _broker(self) -> str:
        return self.settings.shared_broker_url

    def _runners(self, job_id: str) -> list[BatchRunner]:
        return [runner for _, runner in self.running.get(job_id, {}).values()]

    async def _poll_controls(self) -> None:
        """Stop the running batches of jobs that were paused or cancelled."""
        while True:
            await asyncio.sleep(CONTROL_POLL)
            if not self.running:
                continue
            try:
                states = await self.jobs.current_states(list(self.running))
            except Exception as exc:  # only the unexpected: outages are waited out
                log.warning("could not read job states: %s", exc)
                continue
            for job_id, state in states.items():
                if state in ("paused", "cancelled", None):
                    for runner in self._runners(job_id):
                        runner.stop(state or "missing")

    async def _heartbeat(self) -> None:
        """Renew the leases of the batches running here; stop runs whose lease was reaped."""
        while True:
            await asyncio.sleep(self.timing.heartbeat)
            owned = {job: {n: token for n, (token, _) in batches.items()}
                     for job, batches in self.running.items()}
            if not owned:
                continue
            try:
                await self.leases.mark(list(owned))
                peers = 1
                for job_id, tokens in owned.items():
                    live, lost = await self.leases.renew(job_id, self.name, tokens)
                    peers = max(peers, live)
                    for batch_no in lost:
                        entry = self.running.get(job_id, {}).get(batch_no)
                        if entry is not None:
                            entry[1].stop("lease_lost")
                self.peers = peers
            except Exception as exc:
                log.warning("heartbeat failed: %s", exc)

    async def _reap(self) -> None:
        """Send again the batches whose worker stopped renewing their lease."""
        while True:
            await asyncio.sleep(self.timing.reap_every)
            try:
                for job_id, batches in (await self.schedule.reap()).items():
                    log.warning("job %s: batches %s were taken from the line but never "
                                "started; sending them again", job_id, batches)
                    await self._send(job_id, batches, "unclaimed")
                if not await self._owners_had_their_chance():
                    continue
                for job_id in await self.leases.jobs():
                    due = await self.jobs.promote_delayed(job_id, lease_ms=self.timing.pending_ms)
                    if due:
                        await self._send(job_id, due, "delayed")
                    over, batches = await self.leases.reap(job_id)
                    if over:  # no batch holds it: nothing writes to it any more
                        await self._job_over(job_id)
                        await self.leases.forget(job_id)
                        self._forget_job(job_id)
                    if batches:
                        log.warning("job %s: batches %s lost their worker (lease ran out); "
                                    "sending them again", job_id, batches)
                        await self._send(job_id, batches, "reaped")
            except Exception as exc:  # e.g. the broker is down: the claims run out, retried
                log.warning("reaper pass failed: %s", exc)

    async def _job_over(self, job_id: str) -> None:
        """An ended job that no batch holds: its keys get their expiry (`ttl` after its end)
        and its finish hooks are sent, once across all workers."""
        try:
            options = await self._options(job_id)
        except JobNotFound:
            return  # its keys are gone already (expired or purged)
        await expire_job(self.client, self.settings.key_prefix, job_id, options.ttl)
        if not (options.on_finish or options.on_finish_task):
            return
        if not await self.jobs.claim_finish_notice(job_id):
            return
        status = (await self.jobs.status(job_id)).to_dict()
        if options.on_finish:
            task = asyncio.ensure_future(post_status(options.on_finish, status,
                                                     options.fetch_config()))
            self._hooks.add(task)  # retried for about 30 s: the reaper goes on meanwhile
            task.add_done_callback(self._hooks.discard)
        if options.on_finish_task:
            try:
                await self.loop.run_in_executor(None, partial(
                    send_callback, self._broker(), options.on_finish_task, status))
            except Exception as exc:  # the notice is claimed: say it, do not fail the pass
                log.warning("job %s: finish task %s not sent: %s", job_id,
                            options.on_finish_task, exc)

    async def _owners_had_their_chance(self) -> bool:
        """A lease may only be judged after its owner could renew it for a whole lease: not
        within a lease after Redis (re)started (leases ran out while it was down) nor after
        this worker's own outage (the owners may have been cut off just the same)."""
        outage = outage_of(self.client)
        if outage is not None and outage.up_for() < self.timing.lease:
            return False
        return await server_uptime(self.client) >= self.timing.lease

    def _begin_shutdown(self) -> None:
        if self.closing:
            return
        self.closing = True
        running = [r for job in list(self.running) for r in self._runners(job)]
        log.warning("shutting down: stopping %d running batches; in-flight requests land, "
                    "the rest goes back to the queue", len(running))
        for runner in running:
            runner.stop("shutdown")
        outage = outage_of(self.client)
        if outage is not None:
            self.loop.call_later(SHUTDOWN_PATIENCE, outage.aborted.set)

    async def _close(self) -> None:
        for task in self._loops:
            task.cancel()
        for engine in self.engines.values():
            await engine.close()
        await asyncio.gather(*self._closing, return_exceptions=True)  # ended jobs' engines
        for extractor in self.extractors.values():
            await asyncio.to_thread(extractor.close)
        await self.client.aclose()
        await self.limiter_client.aclose()
        if self.metrics is not None:
            self.metrics.close()
