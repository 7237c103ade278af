"""The batch runner with a scripted engine: scheduling, retries, penalties, deferrals."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Any

import fakeredis
import pytest

from crawler.engines.base import Engine
from crawler.engines.config import FetchConfig
from crawler.ratelimit import AsyncRateLimiter, Decision, Grant, LimiterConfig
from crawler.records import ErrorClass, FetchResult
from crawler.retry import RetryPolicy
from crawler.runner import BatchRunner, RunnerOptions
from crawler.store import ResultStore

Script = Callable[[str, int], FetchResult]


class ScriptedEngine(Engine):
    """An engine whose answer for (url, attempt) comes from a function; logs arrival times."""

    name = "scripted"

    def __init__(self, script: Script) -> None:
        super().__init__(FetchConfig())
        self.script = script
        self.calls: dict[str, list[float]] = defaultdict(list)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def fetch(self, url: str, *, before_hop: Any = None) -> FetchResult:
        self.calls[url].append(time.monotonic())
        await asyncio.sleep(0)
        return self.script(url, len(self.calls[url]))


def ok(url: str, attempt: int) -> FetchResult:
    return FetchResult(url=url, final_url=url, status=200, bytes=5)


async def batches(urls: Iterable[str], size: int = 50) -> AsyncIterator[Sequence[str]]:
    urls = list(urls)
    for i in range(0, len(urls), size):
        yield urls[i : i + size]


@pytest.fixture
def redis() -> fakeredis.FakeAsyncRedis:
    return fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())


def make(redis, script: Script = ok, *, limiter: LimiterConfig | None = None, **opts):
    engine = ScriptedEngine(script)
    lim = AsyncRateLimiter(redis, limiter or LimiterConfig())
    opts.setdefault("policy", RetryPolicy(retries=3, backoff=0.0))
    runner = BatchRunner(engine, lim, RunnerOptions(worker="w1", **opts))
    return engine, runner, ResultStore(redis, "job")


async def records(store: ResultStore) -> dict[str, dict]:
    out = {}
    async for r in store.iter_records():
        assert r["url"] not in out, "two records for one URL"
        out[r["url"]] = r
    return out


async def test_every_url_exactly_one_record(redis) -> None:
    urls = [f"http://h{i % 7}.test/p{i}" for i in range(500)]
    engine, runner, store = make(redis, concurrency=20)
    stats = await runner.run(batches(urls), store)
    recs = await records(store)
    assert set(recs) == set(urls)
    assert all(len(engine.calls[u]) == 1 for u in urls)
    assert stats.done == stats.ok == 500 and stats.written == 500
    assert (await store.counters())["done"] == 500
    rec = recs[urls[0]]
    assert rec["worker"] == "w1" and rec["job"] == "job" and rec["attempts"] == 1
    # One limiter round trip serves many URLs.
    assert stats.limiter_calls < 500


async def test_retries_then_success_counts_attempts(redis) -> None:
    def flaky(url: str, attempt: int) -> FetchResult:
        if attempt < 3:
            return FetchResult(url=url, status=502)
        return ok(url, attempt)

    _, runner, store = make(redis, flaky)
    stats = await runner.run(batches(["http://a.test/"]), store)
    rec = (await records(store))["http://a.test/"]
    assert rec["status"] == 200 and rec["attempts"] == 3 and rec["ok"] is True
    assert stats.retries == 2 and stats.penalties == 0


async def test_retries_exhausted_keeps_last_status(redis) -> None:
    engine, runner, store = make(
        redis, lambda u, a: FetchResult(url=u, error=ErrorClass.TIMEOUT, error_detail="slow"),
        policy=RetryPolicy(retries=2, backoff=0.0),
    )
    await runner.run(batches(["http://a.test/"]), store)
    rec = (await records(store))["http://a.test/"]
    assert rec["error"] == "timeout" and rec["attempts"] == 3 and rec["status"] is None
    assert len(engine.calls["http://a.test/"]) == 3


async def test_429_penalizes_host_for_every_worker(redis) -> None:
    def throttled(url: str, attempt: int) -> FetchResult:
        if "slow.test" in url and attempt == 1:
            return FetchResult(url=url, status=429, retry_after="1")
        return ok(url, attempt)

    engine, runner, store = make(redis, throttled)
    urls = ["http://slow.test/a", "http://fast.test/a", "http://fast.test/b"]
    stats = await runner.run(batches(urls), store)
    recs = await records(store)
    assert recs["http://slow.test/a"]["attempts"] == 2
    assert recs["http://slow.test/a"]["status"] == 200
    assert stats.penalties == 1
    # The second attempt waited for Retry-After (1 s); the other host did not.
    first, second = engine.calls["http://slow.test/a"]
    assert second - first >= 0.99
    # Another worker's limiter sees the penalty on that host right away.
    other = AsyncRateLimiter(redis, LimiterConfig())
    state = await other.host_state("slow.test")
    assert state  # penalty state is shared through Redis


async def test_per_host_limit_defers_while_other_hosts_proceed(redis) -> None:
    urls = [f"http://{h}.test/{i}" for i in range(4) for h in ("a", "b")]
    engine, runner, store = make(
        redis, limiter=LimiterConfig(per_host_qps=10), concurrency=8, host_interval=0.1
    )
    stats = await runner.run(batches(urls), store)
    assert stats.done == 8 and stats.deferred_host > 0
    for host in ("a", "b"):
        times = sorted(t for u, ts in engine.calls.items() if f"//{host}." in u for t in ts)
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert min(gaps) >= 0.1 - 0.005, gaps  # the host interval, minus timer slack
    first_a = min(engine.calls["http://a.test/0"])
    first_b = min(engine.calls["http://b.test/0"])
    assert abs(first_a - first_b) < 0.1  # hosts in parallel, not one after the other


async def test_source_is_read_lazily(redis) -> None:
    pulled = 0

    async def endless() -> AsyncIterator[Sequence[str]]:
        nonlocal pulled
        i = 0
        while i < 5000:
            pulled += 100
            yield [f"http://h.test/{j}" for j in range(i, i + 100)]
            i += 100

    seen_pending: list[int] = []

    def watch(url: str, attempt: int) -> FetchResult:
        seen_pending.append(pulled - runner.stats.done)
        return ok(url, attempt)

    _, runner, store = make(redis, watch, concurrency=10, max_pending=300)
    await runner.run(endless(), store)
    assert runner.stats.done == 5000
    assert max(seen_pending) <= 300 + 100 + 10  # bound + one batch + in flight


async def test_engine_bug_surfaces_instead_of_hanging(redis) -> None:
    def broken(url: str, attempt: int) -> FetchResult:
        raise RuntimeError("engine bug")

    _, runner, store = make(redis, broken)
    with pytest.raises(RuntimeError, match="engine bug"):
        await asyncio.wait_for(runner.run(batches(["http://a.test/"]), store), 10)


async def test_bodies_kept_only_when_asked(redis) -> None:
    def with_body(url: str, attempt: int) -> FetchResult:
        return FetchResult(url=url, status=200, body=b"x" * 100, bytes=100)

    _, runner, store = make(redis, with_body, body_store_max=10)
    await runner.run(batches(["http://a.test/"]), store)
    assert await store.body("http://a.test/") == b"x" * 10


async def test_stop_lands_in_flight_and_returns_the_rest(redis) -> None:
    urls = [f"http://h{i}.test/" for i in range(200)]
    engine, runner, store = make(redis, concurrency=5)

    def stop_after_ten(url: str, attempt: int) -> FetchResult:
        if sum(len(v) for v in engine.calls.values()) == 10:
            runner.stop("pause")
        return ok(url, attempt)

    engine.script = stop_after_ten
    stats = await runner.run(batches(urls), store)
    fetched = {u for u, calls in engine.calls.items() if calls}
    recs = await records(store)
    assert set(recs) == fetched  # every started fetch landed as a record
    assert len(fetched) < 200
    assert sorted(runner.leftover) == sorted(set(urls) - fetched)  # nothing lost
    assert stats.done == len(fetched)


async def test_runners_share_one_slot_pool(redis) -> None:
    from crawler.slots import Slots

    slots = Slots(3)
    peak = 0

    async def run_one(prefix: str) -> None:
        engine = ScriptedEngine(ok)
        orig = engine.fetch

        async def fetch(url: str, *, before_hop: Any = None) -> FetchResult:
            nonlocal peak
            peak = max(peak, slots.used)
            await asyncio.sleep(0.001)
            return await orig(url)

        engine.fetch = fetch  # type: ignore[method-assign]
        runner = BatchRunner(engine, AsyncRateLimiter(redis, LimiterConfig()),
                             RunnerOptions(concurrency=3), slots=slots)
        await runner.run(batches([f"http://{prefix}{i}.test/" for i in range(30)]),
                         ResultStore(redis, prefix))

    await asyncio.gather(run_one("a"), run_one("b"), run_one("c"))
    assert peak == 3  # three batches, never more than the process's 3 slots in flight
    assert slots.used == 0


async def test_stop_cancels_granted_fetches_still_waiting_for_their_slot(redis) -> None:
    # At 50/s with a 2 s horizon, up to 100 slots are reserved ahead: a stop must not
    # let them all run (a pause would take 2 s to bite).
    urls = [f"http://h{i}.test/" for i in range(300)]
    engine, runner, store = make(redis, limiter=LimiterConfig(qps=50), concurrency=100)

    def stop_at_five(url: str, attempt: int) -> FetchResult:
        if sum(len(v) for v in engine.calls.values()) == 5:
            runner.stop("pause")
        return ok(url, attempt)

    engine.script = stop_at_five
    await runner.run(batches(urls), store)
    fetched = {u for u, calls in engine.calls.items() if calls}
    assert len(fetched) <= 6  # the one in flight at most lands after the stop
    assert sorted(runner.leftover) == sorted(set(urls) - fetched)
    assert set(await records(store)) == fetched
    assert runner.slots.used == 0


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        pytest.param(LimiterConfig(), None, id="no-limits"),
        pytest.param(LimiterConfig(qps=50), 0.005, id="quarter-interval"),
        pytest.param(LimiterConfig(qps=10_000), 0.002, id="floor"),
        pytest.param(LimiterConfig(qps=5), 0.02, id="cap"),
        pytest.param(LimiterConfig(per_host_qps=1), 0.003, id="per-host"),
        pytest.param(LimiterConfig(qps=10, per_host_qps=100), 0.003, id="tightest"),
    ],
)
def test_lateness_allowance(config: LimiterConfig, expected: float | None) -> None:
    from crawler.runner import lateness_allowance

    assert lateness_allowance(config) == expected


async def test_a_late_wake_up_gives_the_slot_up(redis, monkeypatch) -> None:
    engine, runner, store = make(redis, limiter=LimiterConfig(qps=100), concurrency=5)
    real_sleep = asyncio.sleep
    stalled = False

    async def stalling_sleep(delay: float) -> None:
        nonlocal stalled
        await real_sleep(delay)
        if delay > 0 and not stalled:  # the first timed wait wakes 50 ms late
            stalled = True
            time.sleep(0.05)

    monkeypatch.setattr("crawler.runner.asyncio.sleep", stalling_sleep)
    urls = [f"http://h.test/{i}" for i in range(5)]
    stats = await runner.run(batches(urls), store)
    assert stats.late_slots >= 1
    assert set(await records(store)) == set(urls)  # nothing lost: it asked again
    assert all(len(engine.calls[u]) == 1 for u in urls)


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com/a", "https://example.com:8443/a?b=c", "http://u:p@h.test/",
        "http://[::1]:8080/x", "http://[2001:db8::1]/", "http://h.test?x=1", "http://H.Test/",
        "http://127.0.0.1:80/", "mailto:x@y",
    ],
)
def test_host_of_matches_urlsplit(url: str) -> None:
    from urllib.parse import urlsplit

    from crawler.runner import host_of

    assert host_of(url) == (urlsplit(url).hostname or "")


class GatedEngine(ScriptedEngine):
    """Host slow.test answers only once `gate` is set; the others at once. Counts in flight."""

    def __init__(self, full_at: int = 0) -> None:
        super().__init__(ok)
        self.gate = asyncio.Event()
        self.full_at = full_at  # set `full` when slow.test has this many in flight
        self.full = asyncio.Event()
        self.inflight: dict[str, int] = defaultdict(int)
        self.peak: dict[str, int] = defaultdict(int)
        self.fast_done = 0
        self.fast_all = asyncio.Event()  # set when 20 fast pages were fetched

    async def fetch(self, url: str, *, before_hop: Any = None) -> FetchResult:
        host = url.split("/")[2]
        self.inflight[host] += 1
        self.peak[host] = max(self.peak[host], self.inflight[host])
        if host == "slow.test" and self.inflight[host] == self.full_at:
            self.full.set()
        try:
            if host == "slow.test":
                await self.gate.wait()
            else:
                self.fast_done += 1
                if self.fast_done == 20:
                    self.fast_all.set()
                await asyncio.sleep(0)
            return ok(url, 1)
        finally:
            self.inflight[host] -= 1


@pytest.mark.parametrize("cap", [0, 1])
async def test_a_slow_host_never_holds_every_slot(redis, cap: int) -> None:
    # Given 20 URLs of a host that does not answer, ahead of 20 of a host that does
    engine = GatedEngine()
    runner = BatchRunner(engine, AsyncRateLimiter(redis, LimiterConfig()),
                         RunnerOptions(worker="w1", concurrency=4, host_cap=cap))
    store = ResultStore(redis, "job")
    urls = [f"http://slow.test/{i}" for i in range(20)] + [
        f"http://fast.test/{i}" for i in range(20)]
    run = asyncio.create_task(runner.run(batches(urls), store))
    # When the fast host's pages are all fetched (they get slots while slow.test hangs)
    await asyncio.wait_for(engine.fast_all.wait(), 30)
    assert not run.done()
    # Then slow.test never held more than its share (half the slots, or the cap given)
    assert engine.peak["slow.test"] == (cap or 2)
    engine.gate.set()
    stats = await run
    assert stats.done == 40 and len(await records(store)) == 40


async def test_a_host_deferred_far_ahead_is_handed_back_not_held(redis) -> None:
    # Given host a.test is penalized for a minute (a Retry-After: 60 seen by some worker)
    lim = AsyncRateLimiter(redis, LimiterConfig())
    await lim.penalize("a.test", retry_after=60)
    handed: list[tuple[list[str], int, float]] = []

    async def defer(urls: list[str], depth: int, delay: float) -> None:
        handed.append((urls, depth, delay))

    engine = ScriptedEngine(ok)
    runner = BatchRunner(engine, lim, RunnerOptions(worker="w1", concurrency=8,
                                                   handoff_after=5.0), defer=defer)
    store = ResultStore(redis, "job")
    a = [f"http://a.test/{i}" for i in range(10)]
    b = [f"http://b.test/{i}" for i in range(10)]
    # When a batch of both runs
    stats = await runner.run(batches(a + b), store, depth=2)
    # Then it ends with b's records, and a's URLs were given back once each, due in a minute
    assert set(await records(store)) == set(b)
    assert sorted(u for urls, _, _ in handed for u in urls) == sorted(a)
    assert all(depth == 2 and 55 < delay <= 60 for _, depth, delay in handed)
    assert stats.handed_off == 10 and not engine.calls.keys() & set(a)
    assert runner.leftover == []


async def test_without_a_defer_hook_a_deferred_host_waits_in_memory(redis) -> None:
    lim = AsyncRateLimiter(redis, LimiterConfig())
    await lim.penalize("a.test", retry_after=0.3)
    _engine, runner = ScriptedEngine(ok), None
    runner = BatchRunner(_engine, lim, RunnerOptions(worker="w1", handoff_after=0.01))
    stats = await runner.run(batches(["http://a.test/1", "http://b.test/1"]),
                             ResultStore(redis, "job"))
    assert stats.done == 2 and stats.handed_off == 0


async def test_one_host_alone_uses_every_slot(redis) -> None:
    # A one-site crawl keeps its concurrency: the share binds only against other hosts
    engine = GatedEngine(full_at=4)
    runner = BatchRunner(engine, AsyncRateLimiter(redis, LimiterConfig()),
                         RunnerOptions(worker="w1", concurrency=4))
    run = asyncio.create_task(runner.run(
        batches([f"http://slow.test/{i}" for i in range(10)]), ResultStore(redis, "job")))
    await asyncio.wait_for(engine.full.wait(), 30)  # all 4 slots on the one host
    assert not run.done()
    engine.gate.set()
    assert (await run).done == 10
    assert engine.peak["slow.test"] == 4


class FullPipeEngine(ScriptedEngine):
    """Answers the oldest fetch only while `width` are in flight (or every URL left is): one
    completion at a time, and the next one only once the runner has refilled the slot."""

    def __init__(self, width: int, total: int) -> None:
        super().__init__(ok)
        self.width, self.left = width, total
        self.waiting: deque[asyncio.Future[None]] = deque()

    def _release_oldest(self) -> None:
        if self.waiting and len(self.waiting) == min(self.width, self.left):
            self.waiting.popleft().set_result(None)

    async def fetch(self, url: str, *, before_hop: Any = None) -> FetchResult:
        done = asyncio.get_running_loop().create_future()
        self.waiting.append(done)
        self._release_oldest()
        await done
        self.left -= 1
        self._release_oldest()  # the tail: fewer URLs left than slots
        return ok(url, 1)


async def test_one_host_alone_keeps_every_slot_as_fetches_trickle_in(redis) -> None:
    # Regression: a lone host over its share refilled a finished slot only once it was back
    # under the share (a one-site crawl at C=1,000 settled at 500 in flight).
    engine = FullPipeEngine(width=4, total=12)
    runner = BatchRunner(engine, AsyncRateLimiter(redis, LimiterConfig()),
                         RunnerOptions(worker="w1", concurrency=4))
    stats = await asyncio.wait_for(runner.run(
        batches([f"http://one.test/{i}" for i in range(12)]), ResultStore(redis, "job")), 30)
    assert stats.done == 12


@pytest.mark.parametrize("hosts", [1, 20])
async def test_paced_leases_ask_the_limiter_for_many_slots_at_once(redis, hosts: int) -> None:
    # 2,000 QPS in one process: without leases about one script call per fetch (each
    # finished fetch frees one slot, which asks alone); with them one call per 20 ms of demand.
    urls = [f"http://h{i % hosts}.test/{i}" for i in range(800)]
    _engine, runner, store = make(redis, limiter=LimiterConfig(qps=2000), concurrency=100,
                                 lease_period=0.02)
    stats = await runner.run(batches(urls, 200), store)
    assert set(await records(store)) == set(urls)
    assert stats.limiter_calls / len(urls) < 0.3, stats.limiter_calls


class ScriptedLimiter:
    """Answers acquire_many from a list of decision lists, then grants everything."""

    def __init__(self, answers: list[list[Decision]]) -> None:
        self.config = LimiterConfig(qps=10)
        self.answers = answers
        self.calls = 0

    async def acquire_many(self, hosts: Sequence[str]) -> list[Grant]:
        self.calls += 1
        script = self.answers.pop(0) if self.answers else [Decision.GRANTED] * len(hosts)
        return [Grant(d, 10_000 if d is Decision.DEFER_HOST else 0) for d in script]

    async def penalize(self, host: str, retry_after: float | None = None) -> float:
        return 0.0


async def test_a_parked_host_is_not_stranded_by_global_back_pressure(redis) -> None:
    # Regression: a URL released from a parked host that then met DEFER_GLOBAL went to a
    # plain timer and re-armed no host timer; when it fired it joined the parked queue, and
    # nothing released that host again (the job hung with its URLs parked).
    limiter = ScriptedLimiter([
        [Decision.DEFER_HOST, Decision.DEFER_HOST],  # both parked, the host's timer armed
        [Decision.DEFER_GLOBAL],  # the first released one meets back-pressure
    ])
    engine = ScriptedEngine(ok)
    runner = BatchRunner(engine, limiter,  # type: ignore[arg-type]
                         RunnerOptions(worker="w1", concurrency=4, lease_period=0.0))
    urls = ["http://h.test/1", "http://h.test/2"]
    stats = await asyncio.wait_for(runner.run(batches(urls), ResultStore(redis, "job")), 30)
    assert stats.done == 2
