"""Runs URLs through limiter -> engine -> store: the loop shared by `crawler crawl` and workers.

One dispatcher coroutine owns all scheduling state, so there are no locks:

* `ready`: URLs that may ask the limiter now. Up to the free concurrency slots are sent to
  the limiter in ONE `acquire_many` round trip; granted ones become fetch tasks that sleep
  their exact wait once (no polling).
* `parked`: per host, URLs the limiter deferred (the host is not ready soon). One timer per
  host releases them one at a time, so a slow or penalized host never holds a slot while
  other hosts have work.
* timers: retries (back-off / Retry-After) and global back-pressure.

Records are batched by a writer coroutine into one Redis script call per batch.

Crawling (a job that follows links): links are extracted from 2xx HTML pages below the depth
limit and handed, per write batch, to a frontier (`crawler.frontier`) before their pages'
records are written; robots.txt is asked per origin before a URL may take a slot
(`crawler.robots`): URLs of an origin whose answer is not known yet wait for it, disallowed
ones get a `robots_disallowed` record without a request, held hosts wait on a timer.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import time
from collections import Counter, deque
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from typing import Any

from crawler.crawl_steps import CrawlSteps
from crawler.engines.base import Engine, short_detail
from crawler.extract import Extracted, Extractor, Page
from crawler.links import extract_links, is_html
from crawler.logs import Throttle
from crawler.pacing import (
    HOST_LATENESS,
    MIN_RETRY_GAP,
    PacedLease,
    lateness_allowance,
    polite_wait,
)
from crawler.ratelimit import AsyncRateLimiter, Decision
from crawler.ratelimit.fallback import FallbackLimiter
from crawler.records import ErrorClass, FetchResult, Record, status_class
from crawler.retry import parse_retry_after, wants_penalty
from crawler.robots import RobotsCache
from crawler.slots import Slots
from crawler.store import WRITE_MAX, PendingRecord, ResultStore
from crawler.work import Defer, Frontier, RunnerOptions, RunStats, Work, host_of

__all__ = ["BatchRunner", "RunStats", "RunnerOptions", "host_of", "lateness_allowance",
           "polite_wait"]

log = logging.getLogger(__name__)
_penalty_failures = Throttle()  # during an outage each 429/503 would say it again
_unfollowed = Throttle()  # per page: once a minute is enough to say it

ACQUIRE_MAX = 256  # URLs per limiter round trip: bounds the script's run time in Redis
WRITE_LINGER = 0.05  # s a record may wait for others to share its store round trip


class BatchRunner:
    """Fetches every URL of a source exactly once into a ResultStore (one record per URL)."""

    def __init__(
        self,
        engine: Engine,
        limiter: AsyncRateLimiter | FallbackLimiter,
        options: RunnerOptions,
        *,
        slots: Slots | None = None,
        frontier: Frontier | None = None,
        robots: RobotsCache | None = None,
        defer: Defer | None = None,
        extractor: Extractor | None = None,
    ) -> None:
        self.engine = engine
        self.extractor = extractor
        self.frontier = frontier
        self.robots = robots
        self.defer = defer
        self.limiter = limiter
        self.opt = options
        self.slots = slots or Slots(options.concurrency, options.host_cap)
        self.stats = RunStats()
        self.stop_reason: str | None = None
        self.leftover: list[str] = []  # URLs not fetched because the run was stopped
        self._run: _Run | None = None

    @property
    def input_read(self) -> bool:
        """The source gave its last URL (a crawl may still find more)."""
        return self._run is None or self._run.exhausted

    def queued_by_host(self) -> Counter[str]:
        """URLs held by the run and not in flight, by host (the live views' "top hosts").
        O(URLs held); call on the runner's loop, about once a second."""
        run = self._run
        counts: Counter[str] = Counter()
        if run is None:
            return counts
        counts.update(w.host for w in run.ready)
        for queues in (run.parked, run.capped):
            for host, q in queues.items():
                counts[host] += len(q)
        counts.update(item.host for _, _, item in run.timers if isinstance(item, Work))
        for waiting in (*run.robots_wait.values(), *run.held.values()):
            counts.update(w.host for w in waiting)
        return counts

    def stop(self, reason: str) -> None:
        """Finish what is in flight, start nothing new (call on the runner's loop)."""
        self.stop_reason = reason
        if self._run is not None:
            self._run.wake.set()

    async def run(
        self, batches: AsyncIterable[Sequence[str]], store: ResultStore, *, depth: int = 0
    ) -> RunStats:
        """Consume URL batches lazily and return when every URL has its record stored."""
        run = self._run = _Run(self, store, depth)
        self.slots.listen(run.wake)
        try:
            await run.main(batches)
        finally:
            self.slots.unlisten(run.wake)
            self._run = None
            self.stats.finished = time.monotonic()
        return self.stats


class _Run(CrawlSteps):
    """The state of one `BatchRunner.run` call; only the dispatcher coroutine mutates it."""

    def __init__(self, runner: BatchRunner, store: ResultStore, depth: int) -> None:
        self.r = runner
        self.stats = runner.stats
        self.store = store
        self.depth = depth
        self.loop = asyncio.get_running_loop()
        self.ready: deque[Work] = deque()
        self.parked: dict[str, deque[Work]] = {}
        self.host_timer: set[str] = set()
        self.timers: list[tuple[float, int, Work | str]] = []
        self.seq = itertools.count()
        self.inflight = 0
        self.pending = 0  # URLs taken from the source and not yet recorded
        self.wake = asyncio.Event()
        self.out: asyncio.Queue[PendingRecord | None] = asyncio.Queue()
        self.tasks: dict[asyncio.Task[None], Work] = {}  # fetches started (sleeping or not)
        self.sleeping: dict[asyncio.Task[None], Work] = {}  # granted, waiting for their slot
        self.failure: BaseException | None = None
        self.lateness = lateness_allowance(runner.limiter.config)
        if runner.robots is not None and self.lateness is None:
            # A Crawl-delay is a per-host interval the job did not configure: keep its gaps.
            self.lateness = HOST_LATENESS
        self.exhausted = False  # the source gave its last batch
        self.coming: asyncio.Future[Sequence[str]] | None = None  # the source's next batch
        self.side: set[asyncio.Task[None]] = set()  # robots.txt loaders
        self.robots_wait: dict[str, list[Work]] = {}  # origin -> URLs waiting for its answer
        # Level barrier (depth-limited crawls): URLs deeper than `level_open` wait in `held`
        # until every URL of depth <= level_open has its record. None: no barrier.
        self.level_open: int | None = depth if runner.opt.level_barrier else None
        self.level_pending: Counter[int] = Counter()
        self.held: dict[int, deque[Work]] = {}
        self.capped: dict[str, deque[Work]] = {}  # host -> URLs waiting for a host slot
        self.lease = PacedLease(period=runner.opt.lease_period,
                                concurrency=runner.opt.concurrency,
                                enabled=runner.limiter.config.qps > 0)

    async def main(self, batches: AsyncIterable[Sequence[str]]) -> None:
        writer = asyncio.create_task(self._writer())
        source = aiter(batches)
        try:
            while True:
                if self.failure is not None:
                    raise self.failure
                if self.r.stop_reason is not None:
                    await self._drain_for_stop(source, self.exhausted)
                    break
                self._fire_timers()
                if self.capped:
                    self._uncap()
                while not self.exhausted and self.pending < self.r.opt.max_pending and (
                    len(self.ready) < 2 * self.r.opt.concurrency
                ):
                    batch = self._next_batch(source)
                    if batch is None:
                        break
                    self._admit(batch)
                if self.exhausted and self.pending == 0:
                    break
                free = min(self.r.slots.free, self.r.opt.concurrency - self.inflight)
                queued = len(self.ready)
                if self.capped and self.r.slots.alone():  # they may overflow: see _overflow
                    queued += sum(map(len, self.capped.values()))
                if free > 0 and queued:
                    if self.lease.should_ask(free, queued, self.loop.time()):
                        await self._dispatch(free)
                        continue
                    await self._sleep_until_event(self.lease.recheck_at())
                    continue
                await self._sleep_until_event()
        finally:
            pending: list[asyncio.Future[Any]] = [*self.tasks, *self.side]
            if self.coming is not None:
                pending.append(self.coming)
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            await self.out.put(None)
            await writer

    def _next_batch(self, source: AsyncIterator[Sequence[str]]) -> Sequence[str] | None:
        """The source's next batch if it has arrived, else None (asking for it if nobody has).

        The source reads and dedupes in Redis (a round trip per batch): it runs one batch
        ahead in its own task, so the dispatcher never waits for it while it has URLs."""
        if self.coming is None:
            self.coming = asyncio.ensure_future(anext(source))
            self.coming.add_done_callback(lambda _: self.wake.set())
        if not self.coming.done():
            return None
        arrived, self.coming = self.coming, None
        try:
            return arrived.result()
        except StopAsyncIteration:
            self.exhausted = True
            self._open_levels()
            return None

    async def _drain_for_stop(self, source: AsyncIterator[Sequence[str]], exhausted: bool) -> None:
        """Let in-flight fetches land and collect every URL that was not started."""
        left = [w.entry for w in self.sleeping.values()]  # reserved slots are simply not used
        if self.coming is not None:
            arrived, self.coming = self.coming, None
            try:
                left.extend(await arrived)
            except StopAsyncIteration:
                exhausted = True
        for task in self.sleeping:
            task.cancel()
        self.sleeping.clear()
        while self.inflight:
            await self._sleep_until_event()
        left += [w.entry for w in self.ready]
        left += [w.entry for parked in self.parked.values() for w in parked]
        left += [item.entry for _, _, item in self.timers if isinstance(item, Work)]
        left += [w.entry for waiting in self.robots_wait.values() for w in waiting]
        left += [w.entry for held in self.held.values() for w in held]
        left += [w.entry for capped in self.capped.values() for w in capped]
        self.pending -= len(left)  # what remains pending are records still being written
        self.ready.clear()
        self.parked.clear()
        self.timers.clear()
        self.robots_wait.clear()
        self.held.clear()
        self.capped.clear()
        if not exhausted:
            async for batch in source:
                left.extend(batch)
        self.r.leftover = left
        while self.pending > 0:
            await self._sleep_until_event()

    def _admit(self, entries: Sequence[str]) -> None:
        for entry in entries:
            self._admit_work(Work.of(entry, self.depth))

    def _admit_work(self, w: Work) -> None:
        self.pending += 1
        self.stats.queued += 1
        if self.level_open is not None:
            self.level_pending[w.depth] += 1
            if w.depth > self.level_open:
                self.held.setdefault(w.depth, deque()).append(w)
                return
        parked = self.parked.get(w.host)
        if parked is not None:
            parked.append(w)
        else:
            self.ready.append(w)

    def _uncap(self) -> None:
        """URLs of hosts that hold fewer than their share of slots again go back in line."""
        for host in list(self.capped):
            waiting = self.capped[host]
            room = self.r.slots.host_cap - self.r.slots.by_host[host]
            for _ in range(min(room, len(waiting))):
                self.ready.append(waiting.popleft())
            if not waiting:
                del self.capped[host]

    async def _dispatch(self, free: int) -> None:
        want = min(free, ACQUIRE_MAX)
        take: list[Work] = []
        slots = self.r.slots
        while self.ready and len(take) < want:
            w = self.ready.popleft()
            if slots.host_full(w.host):
                self.capped.setdefault(w.host, deque()).append(w)
            elif self.r.robots is None or self._robots_allow(w):
                take.append(w)
                slots.take(w.host)  # before the await: other batches dispatch meanwhile
                continue
            if w.host in self.parked and w.host not in self.host_timer:
                # It came off its host's parked queue but will not ask the limiter, so it
                # cannot re-arm the host's timer: the next one in line asks now.
                self._host_timer(w.host, self.loop.time())
        if len(take) < want and self.capped and slots.alone():
            self._overflow(take, want)
        if not take:
            return
        calls = self.r.limiter.calls
        try:
            grants = await self.r.limiter.acquire_many([w.host for w in take])
        except BaseException:
            for w in reversed(take):
                slots.release(w.host)
                self.ready.appendleft(w)
            raise
        self.stats.limiter_calls += self.r.limiter.calls - calls  # round trips really made
        now = self.loop.time()
        handoff: dict[str, tuple[float, list[Work]]] = {}
        if self.lease.enabled and (granted := [g.wait for g in grants if g.granted]):
            self.lease.granted(len(granted), now + max(granted), now)
        for w, g in zip(take, grants, strict=True):
            if not g.granted:
                slots.release(w.host)
            if g.decision is Decision.GRANTED:
                self.stats.limiter_wait += g.wait
                self._start(w, now + g.wait if g.wait > 0 else None)
                if w.host in self.parked and w.host not in self.host_timer:
                    self._host_timer(w.host, now + g.wait + self.r.opt.host_interval)
            elif g.decision is Decision.DEFER_HOST:
                self.stats.deferred_host += 1
                if self.r.defer is not None and g.wait > self.r.opt.handoff_after:
                    handoff.setdefault(w.host, (g.wait, []))[1].append(w)
                    continue
                self.parked.setdefault(w.host, deque()).append(w)
                if w.host not in self.host_timer:
                    self._host_timer(w.host, now + g.wait)
            else:
                # Back-pressure: ask again when the global slot is near, not now.
                self.stats.deferred_global += 1
                horizon = self.r.limiter.config.global_horizon
                self._timer(now + max(g.wait - horizon / 2, MIN_RETRY_GAP), w)
        for host, (wait, works) in handoff.items():
            await self._hand_off(host, [*works, *self.parked.pop(host, ())], wait)

    def _overflow(self, take: list[Work], want: int) -> None:
        """Work-conserving share: while no other host holds a slot and none waits in line, a
        host over its share may use the free slots (a one-site crawl keeps its concurrency);
        the share binds again as soon as another host's URL is dispatched."""
        slots = self.r.slots
        for host in list(self.capped):
            waiting = self.capped[host]
            while waiting and len(take) < want:
                w = waiting.popleft()
                if self.r.robots is None or self._robots_allow(w):
                    take.append(w)
                    slots.take(w.host)
            if not waiting:
                del self.capped[host]

    def _start(self, w: Work, due: float | None) -> None:
        """Fetch `w` now (`due` None) or at loop time `due`, its slot: a wait is timed from
        the reply, not from when the task happens to start, so a slow loop shows as lateness."""
        self.inflight += 1  # its slot was taken in _dispatch
        self.stats.inflight = self.inflight
        task = asyncio.create_task(self._fetch(w, due))
        self.tasks[task] = w
        if due is not None:
            self.sleeping[task] = w
        task.add_done_callback(self._fetch_done)

    def _fetch_done(self, task: asyncio.Task[None]) -> None:
        w = self.tasks.pop(task)
        self.sleeping.pop(task, None)
        self.inflight -= 1
        self.r.slots.release(w.host)
        self.stats.inflight = self.inflight
        if not task.cancelled() and task.exception() is not None and self.failure is None:
            self.failure = task.exception()  # a bug, not a fetch failure: surface it
        self.wake.set()

    async def _fetch(self, w: Work, due: float | None) -> None:
        if due is not None:
            await asyncio.sleep(max(due - self.loop.time(), 0.0))
            self.sleeping.pop(asyncio.current_task(), None)  # type: ignore[arg-type]
            if self.lateness is not None and self.loop.time() - due > self.lateness:
                # Woken too late (a busy machine): going now could bunch with the next slot
                # holder. Give the slot up and ask again; politeness before throughput.
                self.stats.late_slots += 1
                self.ready.appendleft(w)
                return
        req = w.req
        if req is None:
            res = await self.r.engine.fetch(w.url, before_hop=self._pace_hop)
        else:
            res = await self.r.engine.fetch(w.url, before_hop=self._pace_hop, method=req.method,
                                            headers=req.headers, body=req.body)
        w.attempts += 1
        self.stats.fetched(res.elapsed_ms)
        if wants_penalty(res):
            await self._penalize(w.host, res)
        delay = self.r.opt.policy.delay(res, w.attempts)
        if delay is not None:
            self.stats.retries += 1
            self._timer(self.loop.time() + max(delay, MIN_RETRY_GAP), w)
            return
        extracted = None
        if (self.r.extractor is not None and res.error is None and res.status is not None
                and 200 <= res.status < 300):
            req = w.req
            extracted = await self.r.extractor.run(Page(
                w.url, res.final_url or w.url, res.status, res.headers or {}, res.body or b"",
                req.meta if req else None, req.method if req else "GET", w.depth))
        self._emit(w, res, extracted)

    async def _pace_hop(self, url: str) -> None:
        """A redirect hop is a request too: it waits for its host's slot like a page."""
        await polite_wait(self.r.limiter, host_of(url))

    async def _penalize(self, host: str, res: FetchResult) -> None:
        """Tell every worker to slow down on this host; a Redis hiccup must not lose the URL."""
        self.stats.penalties += 1
        try:
            await self.r.limiter.penalize(host, parse_retry_after(res.retry_after))
        except Exception as exc:  # the fetch result still counts
            _penalty_failures.log(log, logging.WARNING,
                                  "could not record a penalty for %s: %s", host, exc)

    def _emit(self, w: Work, res: FetchResult, extracted: Extracted | None = None) -> None:
        req = w.req
        rec = Record.from_result(
            res, attempts=w.attempts, depth=w.depth, worker=self.r.opt.worker,
            job=self.store.job_id,
        )
        key = None
        if req is not None:
            rec.method, rec.meta = req.method, req.meta
            if req.key != w.url:
                key = req.key
        body = links = None
        if self.r.opt.body_store_max is not None and res.body is not None:
            body = res.body[: self.r.opt.body_store_max]
        limit = self.r.opt.depth_limit
        follows = self.r.frontier is not None and (limit < 0 or w.depth < limit)
        if follows and rec.ok and res.body is not None and is_html(res.content_type):
            links = extract_links(res.body, res.final_url or w.url)
        if extracted is not None:
            rec.data = extracted.data
            if extracted.error is not None:
                rec.ok, rec.error = False, str(ErrorClass.EXTRACT_FAILED)
                rec.error_detail = short_detail(extracted.error)
            if extracted.follow:
                if follows:
                    links = [*(links or ()), *extracted.follow]
                else:
                    _unfollowed.log(log, logging.WARNING, "--extract asked for %d requests on "
                                    "%s: not followed (the page is at the job's --depth)",
                                    len(extracted.follow), w.url)
        s = self.stats
        s.done += 1
        s.bytes += rec.bytes
        if rec.ok:
            s.ok += 1
        else:
            s.failed += 1
        if rec.error:
            s.errors[rec.error] += 1
        s.statuses[status_class(rec.status)] += 1
        self.out.put_nowait(PendingRecord(rec, body, links, key))

    def _timer(self, due: float, item: Work | str) -> None:
        heapq.heappush(self.timers, (due, next(self.seq), item))
        self.wake.set()

    def _host_timer(self, host: str, due: float) -> None:
        self.host_timer.add(host)
        self._timer(max(due, self.loop.time() + MIN_RETRY_GAP), host)

    def _fire_timers(self) -> None:
        now = self.loop.time()
        while self.timers and self.timers[0][0] <= now:
            _, _, item = heapq.heappop(self.timers)
            if isinstance(item, Work):
                parked = self.parked.get(item.host)
                if parked is None:
                    self.ready.append(item)
                    continue
                parked.append(item)
                if item.host not in self.host_timer:
                    # Its host's timer was spent on a URL that then met global back-pressure
                    # (which re-arms nothing): without a timer the host would wait forever.
                    self._host_timer(item.host, now)
                continue
            self.host_timer.discard(item)
            parked = self.parked.get(item)
            if not parked:
                self.parked.pop(item, None)
                continue
            self.ready.append(parked.popleft())
            if not parked:
                del self.parked[item]

    async def _sleep_until_event(self, until: float | None = None) -> None:
        """Until something changes, the next timer, or loop time `until` if sooner."""
        due = [t for t in (until, self.timers[0][0] if self.timers else None) if t is not None]
        timeout = max(min(due) - self.loop.time(), 0.0) if due else None
        self.wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wake.wait(), timeout)

    async def _writer(self) -> None:
        try:
            await self._write_loop()
        except BaseException as exc:
            self.failure = exc  # the dispatcher re-raises it instead of waiting forever
            self.wake.set()
            raise

    async def _write_loop(self) -> None:
        """Batches records into few store round trips: after the first record of a batch it
        lingers WRITE_LINGER for more (at 5,000 pages/s, about 250 records a call)."""
        done = False
        while not done:
            item = await self.out.get()
            if item is None:
                return
            batch = [item]
            if self.out.qsize() < WRITE_MAX:
                await asyncio.sleep(WRITE_LINGER)
            while len(batch) < WRITE_MAX and not self.out.empty():
                item = self.out.get_nowait()
                if item is None:
                    done = True
                    break
                batch.append(item)
            frontier = self.r.frontier
            if frontier is not None:
                await self._follow(frontier, batch)
            self.stats.written += await self.store.write(batch)
            self.stats.store_calls += 1
            self.pending -= len(batch)
            if frontier is not None and self.store.level_completed:
                await frontier.level_completed()
            if self.level_open is not None:
                for item in batch:
                    self.level_pending[item.record.depth] -= 1
                self._open_levels()
            self.wake.set()
