"""One OS process of `bench.scale_sim`: simulated crawler workers on one event loop.

A simulated worker is what one `crawler worker` process does to Redis, with the network
replaced by `asyncio.sleep`: its own Redis connection, one `Slots` pool of C, and
`batches` (4, as Celery's default threads) batch loops sharing it. Each batch loop, with the
library's own code:

    intake   ResultStore.claim (claim.lua) + JobControl.add_batch   what `crawler submit` does
    start    JobControl.batch_start (job_batch_start.lua), batch_urls, store.unrecorded
    run      BatchRunner with a FakeEngine: the real dispatcher, AsyncRateLimiter
             (acquire.lua, paced leases), and the writer (store_records.lua)
    end      JobControl.batch_end (job_batch_end.lua)

plus, per worker, the heartbeat's lease renewal (lease_renew.lua, every 5 s) and the live report
(once a second). Not simulated: the Celery message per batch (its own broker, see
docs/scaling.md), robots.txt, links and retries.

The child measures what only it can see, inside the parent's window [t0, t1): fetches done,
script calls by kind, limiter call latency (send to reply, as the dispatcher waits for it),
and its own CPU.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

from bench.scale_redis import make_client
from crawler import gcpause, loops
from crawler.engines.base import Engine
from crawler.engines.config import FetchConfig
from crawler.jobs import JobControl
from crawler.leases import Leases, LeaseTiming
from crawler.ratelimit import AsyncRateLimiter, Grant, LimiterConfig
from crawler.records import FetchResult
from crawler.runner import BatchRunner, RunnerOptions
from crawler.slots import Slots
from crawler.store import PendingRecord, ResultStore

PAGE_BYTES = 2_625  # the benchmark site's page size: what a record says it fetched
BATCH_LOOPS = 4  # batches in flight per worker process (crawler worker's default threads)
LIVE_EVERY = 1.0  # s: a worker's live report (crawler.worker_runtime.REPORT_EVERY)
BATCHES_PER_WORKER = 1_000_000  # batch numbers reserved per simulated worker
LATENCY_SAMPLE = 50_000  # limiter latencies a child sends back (a reservoir sample)


@dataclass(frozen=True)
class SimConfig:
    """What the parent tells every child (picklable)."""

    url: str
    prefix: str
    job_id: str
    qps: float
    lease_period: float
    concurrency: int  # per simulated worker
    latency: float  # s, mean fake fetch time (uniform 0.5x..1.5x)
    batch_size: int
    hosts: int
    t0: float  # monotonic: the window starts (CLOCK_MONOTONIC is one clock per machine)
    t1: float  # the window ends; everything stops
    start: float  # monotonic: workers begin (t0 - warm-up)


class Window:
    """Counts taken only inside [t0, t1)."""

    def __init__(self, t0: float, t1: float) -> None:
        self.t0, self.t1 = t0, t1
        self.fetches = 0
        self.latencies: list[float] = []  # a uniform sample of at most LATENCY_SAMPLE
        self.timed = 0  # limiter calls timed (the sample's population)
        self.calls: dict[str, int] = {}
        self.late_slots = 0

    def inside(self, t: float) -> bool:
        return self.t0 <= t < self.t1

    def latency(self, seconds: float) -> None:
        """Keep a reservoir sample: an unpaced run makes millions of calls, and the parent
        only needs percentiles from what the children send back."""
        self.timed += 1
        if len(self.latencies) < LATENCY_SAMPLE:
            self.latencies.append(seconds)
        elif (j := random.randrange(self.timed)) < LATENCY_SAMPLE:
            self.latencies[j] = seconds

    def count(self, kind: str, n: int = 1) -> None:
        if self.inside(time.monotonic()):
            self.calls[kind] = self.calls.get(kind, 0) + n


class FakeEngine(Engine):
    """A fetch that only sleeps: the record says 200, text/html, PAGE_BYTES."""

    name = "fake"

    def __init__(self, latency: float, window: Window) -> None:
        super().__init__(FetchConfig())
        self.latency = latency
        self.window = window

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def fetch(self, url: str, *, before_hop: Any = None) -> FetchResult:
        took = self.latency * random.uniform(0.5, 1.5)
        await asyncio.sleep(took)
        if self.window.inside(time.monotonic()):
            self.window.fetches += 1
        return FetchResult(url=url, final_url=url, status=200, bytes=PAGE_BYTES,
                           content_type="text/html", elapsed_ms=took * 1000)


class TimedLimiter(AsyncRateLimiter):
    """The real limiter; each acquire_many's round trip is timed inside the window."""

    window: Window

    async def acquire_many(self, hosts: Sequence[str], *, now_us: int | None = None
                           ) -> list[Grant]:
        t = time.monotonic()
        grants = await super().acquire_many(hosts, now_us=now_us)
        if self.window.inside(t):
            self.window.latency(time.monotonic() - t)
            self.window.count("acquire")
            self.window.count("acquire_hosts", len(hosts))
        return grants


class TimedStore(ResultStore):
    """The real results store; its write calls are counted inside the window."""

    window: Window

    async def write(self, batch: Sequence[PendingRecord]) -> int:
        self.window.count("store")
        return await super().write(batch)


async def _one(urls: Sequence[str]) -> AsyncIterator[Sequence[str]]:
    yield urls


class SimWorker:
    """One simulated `crawler worker` process."""

    def __init__(self, cfg: SimConfig, name: str, window: Window) -> None:
        self.cfg = cfg
        self.name = name
        self.window = window
        self.client = make_client(cfg.url, name=name)
        self.jobs = JobControl(self.client, cfg.prefix)
        self.store = TimedStore(self.client, cfg.job_id, prefix=cfg.prefix)
        self.store.window = window
        self.limiter = TimedLimiter(self.client, LimiterConfig(
            qps=cfg.qps, prefix=cfg.prefix, scope=cfg.job_id))
        self.limiter.window = window
        self.engine = FakeEngine(cfg.latency, window)
        self.slots = Slots(cfg.concurrency)
        self.timing = LeaseTiming()
        self.leases = Leases(self.client, cfg.prefix, self.timing)
        self.owned: dict[int, str] = {}
        self.runners: list[BatchRunner] = []
        # Batch numbers are the job's, unique over every worker: names are "w<index>".
        self.seq = itertools.count(int(name.lstrip("w")) * BATCHES_PER_WORKER)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(max(self.cfg.start - time.monotonic(), 0))
        stopper = loop.call_later(max(self.cfg.t1 - time.monotonic(), 0), self._stop)
        side = [asyncio.create_task(self._heartbeat()), asyncio.create_task(self._live())]
        try:
            await asyncio.gather(*(self._batches() for _ in range(BATCH_LOOPS)))
        finally:
            stopper.cancel()
            for t in side:
                t.cancel()
            await asyncio.gather(*side, return_exceptions=True)
            await self.client.aclose()

    def _stop(self) -> None:
        for runner in self.runners:
            runner.stop("shutdown")

    async def _batches(self) -> None:
        job, cfg = self.cfg.job_id, self.cfg
        while time.monotonic() < cfg.t1:
            n = next(self.seq)
            urls = [f"http://h{random.randrange(cfg.hosts)}.sim/{self.name}/{n}/{i}"
                    for i in range(cfg.batch_size)]
            fresh = await self.store.claim(urls)
            pipe = self.client.pipeline(transaction=False)
            self.jobs.add_batch(pipe, job, n, fresh)
            await pipe.execute()
            self.window.count("claim", -(-len(urls) // 2000))
            self.window.count("add_batch")
            token = f"{self.name}:{n}"
            verdict, _live, _depth = await self.jobs.batch_start(
                job, n, self.name, token=token, lease_ms=self.timing.lease_ms)
            self.window.count("batch_start")
            if verdict != "run":
                raise RuntimeError(f"batch {n}: {verdict}")
            self.owned[n] = token
            todo = await self.store.unrecorded(await self.jobs.batch_urls(job, n))
            self.window.count("lrange")
            self.window.count("smismember")
            runner = BatchRunner(self.engine, self.limiter, RunnerOptions(
                concurrency=cfg.concurrency, worker=self.name, lease_period=cfg.lease_period,
                max_pending=max(10 * cfg.concurrency, 10_000)), slots=self.slots)
            self.runners.append(runner)
            if time.monotonic() >= cfg.t1:
                runner.stop("shutdown")
            await runner.run(_one(todo), self.store)
            self.runners.remove(runner)
            self.window.late_slots += runner.stats.late_slots  # whole run, not the window
            await self.jobs.batch_end(job, n, runner.leftover, token=token,
                                      lease_ms=self.timing.lease_ms)
            self.window.count("batch_end")
            del self.owned[n]

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.timing.heartbeat)
            if self.owned:
                await self.leases.mark([self.cfg.job_id])
                await self.leases.renew(self.cfg.job_id, self.name, dict(self.owned))
                self.window.count("sadd")
                self.window.count("lease_renew")

    async def _live(self) -> None:
        while True:
            await asyncio.sleep(LIVE_EVERY)
            inflight = sum(r.stats.inflight for r in self.runners)
            await self.jobs.report_live(self.cfg.job_id, self.name, inflight=inflight,
                                        hosts={})
            self.window.count("live")


async def _process(cfg: SimConfig, names: list[str]) -> dict[str, Any]:
    window = Window(cfg.t0, cfg.t1)
    workers = [SimWorker(cfg, name, window) for name in names]
    cpu: dict[str, float] = {}

    async def sample_cpu() -> None:
        await asyncio.sleep(max(cfg.t0 - time.monotonic(), 0))
        cpu["t0"] = time.process_time()
        await asyncio.sleep(max(cfg.t1 - time.monotonic(), 0))
        cpu["t1"] = time.process_time()

    sampler = asyncio.create_task(sample_cpu())
    await asyncio.gather(*(w.run() for w in workers))
    await sampler
    return {"fetches": window.fetches, "calls": window.calls, "timed": window.timed,
            "latencies": window.latencies, "cpu_s": cpu["t1"] - cpu["t0"],
            "late_slots": window.late_slots}


def _ready(cfg: SimConfig, nice: int, out: Any, go: Any) -> SimConfig:
    """Start-up done: tell the parent, and take the common start and window from it."""
    if nice:
        os.nice(nice)  # Redis keeps its priority: the clients, not the server, give way
    gcpause.settle()
    out.put("ready")
    start, t0, t1 = go.get()
    return replace(cfg, start=start, t0=t0, t1=t1)


def child(cfg: SimConfig, names: list[str], nice: int, out: Any, go: Any) -> None:
    """Entry of a spawned process: run its workers, put one result dict on `out`."""
    cfg = _ready(cfg, nice, out, go)
    try:
        out.put(loops.run(_process(cfg, names)))
    except BaseException as exc:
        out.put({"error": f"{type(exc).__name__}: {exc}"})
        raise


async def _hammer(cfg: SimConfig, lease: int, coroutines: int, period: float
                  ) -> dict[str, Any]:
    """The limiter alone (no fetch): `coroutines` callers, 4 per client, each asking
    for `lease` slots of distinct hosts per call: back to back (`period` 0: the most calls/s
    one server gives this process), or once per `period` s on a fixed tick (a paced lease's
    demand: with lease = qps x period / callers over all processes, the global bucket binds)."""
    window = Window(cfg.t0, cfg.t1)
    # One client per BATCH_LOOPS callers: a worker's batches share its connection pool.
    clients = [make_client(cfg.url, name="scale-hammer")
               for _ in range(-(-coroutines // BATCH_LOOPS))]
    limiters = [TimedLimiter(c, LimiterConfig(qps=cfg.qps, prefix=cfg.prefix,
                                              scope=cfg.job_id)) for c in clients]
    for limiter in limiters:
        limiter.window = window
    await asyncio.sleep(max(cfg.start - time.monotonic(), 0))

    async def caller(i: int) -> None:
        hosts = [f"h{(i * lease + j) % cfg.hosts}.sim" for j in range(lease)]
        tick = cfg.start + period * random.random()  # callers spread over one period
        while time.monotonic() < cfg.t1:
            if period:
                tick += period
                await asyncio.sleep(max(tick - time.monotonic(), 0))
            grants = await limiters[i // BATCH_LOOPS].acquire_many(hosts)
            window.count("granted", sum(g.granted for g in grants))

    t = time.process_time()
    await asyncio.gather(*(caller(i) for i in range(coroutines)))
    cpu = time.process_time() - t
    for c in clients:
        await c.aclose()
    # The callers run from `start`, the window is [t0, t1): CPU scaled to the window.
    return {"fetches": 0, "calls": window.calls, "timed": window.timed,
            "latencies": window.latencies,
            "cpu_s": cpu * (cfg.t1 - cfg.t0) / max(cfg.t1 - cfg.start, 1e-9), "late_slots": 0}


def hammer_child(cfg: SimConfig, lease: int, coroutines: int, period: float, nice: int,
                 out: Any, go: Any) -> None:
    """Entry of a spawned process for the limiter alone (see `_hammer`)."""
    cfg = _ready(cfg, nice, out, go)
    try:
        out.put(loops.run(_hammer(cfg, lease, coroutines, period)))
    except BaseException as exc:
        out.put({"error": f"{type(exc).__name__}: {exc}"})
        raise
