"""The shared rate limiter: script semantics on every backend, contention, NOSCRIPT, pure core.

Table tests inject the clock (`now_us`) so they are exact; they run on four backends: fakeredis
(which runs the Lua through lupa) and a real redis-server, each through the sync and the async
client, which also proves the two clients equivalent.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import socket
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import fakeredis
import pytest
import redis
import redis.asyncio
from redis.backoff import NoBackoff
from redis.retry import Retry

from crawler.backend import redis_client
from crawler.errors import BackendUnavailable, ConfigError
from crawler.ratelimit import AsyncRateLimiter, Decision, Grant, LimiterConfig, RateLimiter, core

NOW = 1_700_000_000_000_000  # the injected clock, in microseconds
MS = 1_000
S = 1_000_000


def G(ms: float) -> tuple[Decision, int]:
    return Decision.GRANTED, round(ms * MS)


def DH(ms: float) -> tuple[Decision, int]:
    return Decision.DEFER_HOST, round(ms * MS)


def DG(ms: float) -> tuple[Decision, int]:
    return Decision.DEFER_GLOBAL, round(ms * MS)


class Driver:
    """Calls a sync or an async limiter the same way, so one test body covers both clients."""

    def __init__(self, limiter: RateLimiter | AsyncRateLimiter) -> None:
        self.limiter = limiter

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.limiter, name)
        if not callable(attr):
            return attr

        async def call(*args: Any, **kwargs: Any) -> Any:
            result = attr(*args, **kwargs)
            return await result if inspect.isawaitable(result) else result

        return call


MakeDriver = Callable[..., Driver]


@pytest.fixture(params=["fake", "redis", "fake-async", "redis-async", "cluster-async"])
async def make(request: pytest.FixtureRequest) -> AsyncIterator[MakeDriver]:
    """A factory of limiters that all share one fresh backend of the parametrized kind (the
    last: a real 3-master Redis Cluster, through `crawler.backend.redis_client`)."""
    kind = request.param
    if kind == "cluster-async":
        client: Any = redis_client(request.getfixturevalue("redis_cluster_url"))
    elif kind.startswith("redis"):
        url = request.getfixturevalue("redis_url")
        client = (redis.asyncio.Redis.from_url(url) if kind.endswith("async")
                       else redis.Redis.from_url(url))
    else:
        server = fakeredis.FakeServer()  # instances would otherwise share one default server
        client = (fakeredis.FakeAsyncRedis(server=server) if kind.endswith("async")
                  else fakeredis.FakeRedis(server=server))
    cls = AsyncRateLimiter if kind.endswith("async") else RateLimiter

    def factory(**config: Any) -> Driver:
        return Driver(cls(client, LimiterConfig(**config)))

    yield factory
    if kind.endswith("async"):
        await client.aclose()
    else:
        client.close()


# ---- acquire: (offset ms, hosts of one acquire_many call, expected grants) ---------------------

ACQUIRE_CASES = [
    pytest.param({"qps": 10}, [(0, ["a"], [G(0)])], id="fresh-key-granted-now"),
    pytest.param(
        {"qps": 10},
        [(0, ["a"], [G(0)]), (0, ["b"], [G(100)]), (0, ["c"], [G(200)]),
         (0, ["d", "e"], [G(300), G(400)])],
        id="strict-pacing-0-T-2T",
    ),
    pytest.param(
        {"qps": 10},
        [(0, ["a"], [G(0)]), (500, ["a"], [G(0)]), (550, ["b"], [G(50)])],
        id="idle-bucket-starts-at-now",
    ),
    pytest.param(
        {"qps": 10, "burst": 2},
        [(0, ["a", "b", "c", "d"], [G(0), G(0), G(0), G(100)])],
        id="burst-B-gives-B+1-zero-waits-then-exhausted",
    ),
    pytest.param(
        {"qps": 10, "burst": 2},
        [(0, ["a", "b", "c"], [G(0), G(0), G(0)]),
         (300, ["a", "b", "c", "d"], [G(0), G(0), G(0), G(100)])],
        id="burst-refills-when-idle",
    ),
    pytest.param(
        {"per_host_qps": 10},
        [(0, ["a"], [G(0)]), (0, ["a"], [DH(100)]), (60, ["a"], [G(40)]), (60, ["b"], [G(0)])],
        id="host-defer-beyond-horizon-grant-within",
    ),
    pytest.param(
        {"per_host_qps": 10, "per_host_burst": 1},
        [(0, ["a", "a", "a"], [G(0), G(0), DH(100)])],
        id="per-host-burst",
    ),
    pytest.param(
        {"qps": 1, "global_horizon": 2},
        [(0, ["a", "b", "c", "d"], [G(0), G(1000), G(2000), DG(3000)]), (0, ["e"], [DG(3000)])],
        id="global-defer-beyond-horizon",
    ),
    pytest.param(
        {"qps": 10, "per_host_qps": 1},
        [(0, ["a", "b", "c"], [G(0), G(100), G(200)]), (0, ["a"], [DH(1000)]),
         (0, ["d"], [G(300)]), (300, ["a"], [DH(700)]), (1000, ["a"], [G(0)])],
        id="combined-global-slot-later-than-host-ready",
    ),
    pytest.param(
        {"qps": 10, "per_host_qps": 5, "host_horizon": 0.25},
        [(0, ["a", "a"], [G(0), G(200)]), (0, ["b"], [G(300)])],
        id="combined-host-slot-later-than-global-ready",
    ),
    pytest.param(
        {"qps": 10, "per_host_qps": 10},
        [(0, ["a", "a", "b"], [G(0), DH(100), G(100)])],
        id="host-defer-does-not-consume-global-slot",
    ),
    pytest.param(
        {"qps": 1, "per_host_qps": 10, "global_horizon": 1.5},
        [(0, ["a", "b", "c"], [G(0), G(1000), DG(2000)]), (0, ["a", "d"], [DH(100), DG(2000)])],
        id="global-defer-mid-call",
    ),
    pytest.param(
        {"per_host_qps": 10, "host_horizon": 0.25},
        [(0, ["a", "a", "a", "a"], [G(0), G(100), G(200), DH(300)])],
        id="duplicates-in-one-call-get-distinct-slots",
    ),
    pytest.param(
        {}, [(0, ["a", "a", "b"], [G(0), G(0), G(0)])], id="no-limits-always-granted",
    ),
]


@pytest.mark.parametrize(("config", "steps"), ACQUIRE_CASES)
async def test_acquire_table(make: MakeDriver, config: dict[str, Any], steps: list[Any]) -> None:
    limiter = make(**config)
    for offset_ms, hosts, expected in steps:
        grants = await limiter.acquire_many(hosts, now_us=NOW + offset_ms * MS)
        assert [(g.decision, g.wait_us) for g in grants] == expected, (offset_ms, hosts)


async def test_host_defer_writes_nothing(make: MakeDriver) -> None:
    limiter = make(qps=10, per_host_qps=10)
    assert (await limiter.acquire("a", now_us=NOW)).granted
    host_before, global_before = await limiter.host_state("a"), await limiter.global_state()

    grant = await limiter.acquire("a", now_us=NOW)

    assert (grant.decision, grant.wait_us) == DH(100)
    host_after, global_after = await limiter.host_state("a"), await limiter.global_state()
    for before, after in ((host_before, host_after), (global_before, global_after)):
        assert {k: v for k, v in after.items() if k != "ttl_ms"} == {
            k: v for k, v in before.items() if k != "ttl_ms"}
        assert 0 < after["ttl_ms"] <= before["ttl_ms"]  # not refreshed, only counting down


async def test_global_defer_writes_nothing(make: MakeDriver) -> None:
    limiter = make(qps=1, per_host_qps=10, global_horizon=1)
    await limiter.acquire_many(["a", "b"], now_us=NOW)
    global_before = await limiter.global_state()

    grant = await limiter.acquire("c", now_us=NOW)

    assert (grant.decision, grant.wait_us) == DG(2000)
    assert (await limiter.host_state("c"))["ttl_ms"] == -2  # the host key was never created
    assert (await limiter.global_state())["tat"] == global_before["tat"]


async def test_every_written_key_expires(make: MakeDriver) -> None:
    limiter = make(qps=1, per_host_qps=2)
    await limiter.acquire("a", now_us=NOW)
    # TTL = (tat - now) + 1 s slack: never 0, never forever.
    assert 1800 < (await limiter.global_state())["ttl_ms"] <= 2000
    assert 1300 < (await limiter.host_state("a"))["ttl_ms"] <= 1500

    await limiter.penalize("b", retry_after=5, now_us=NOW)
    # A penalized host lives until its incident is forgiven and m has decayed.
    life_ms = core.slowdown_life_us(limiter.config) // MS
    assert life_ms >= 300_000
    assert life_ms < (await limiter.host_state("b"))["ttl_ms"] <= life_ms + 1001  # ceil to ms
    await limiter.acquire("b", now_us=NOW + 10 * S)  # acquire keeps that life, too
    assert (await limiter.host_state("b"))["ttl_ms"] > life_ms - 11_000


async def test_independent_scopes_do_not_share_a_bucket(make: MakeDriver) -> None:
    one, two = make(qps=1, scope="one"), make(qps=1, scope="two")
    assert (await one.acquire("a", now_us=NOW)).wait_us == 0
    assert (await two.acquire("a", now_us=NOW)).wait_us == 0


# ---- penalize ----------------------------------------------------------------------------------

async def test_retry_after_defers_the_host_for_everyone(make: MakeDriver) -> None:
    limiter = make()  # no limits at all: a penalized host must still be deferred
    assert await limiter.penalize("a", retry_after=3, now_us=NOW) == 3.0

    assert (await limiter.acquire("a", now_us=NOW)) == Grant(*DH(3000))
    assert (await limiter.acquire("b", now_us=NOW)) == Grant(*G(0))
    assert (await limiter.acquire("a", now_us=NOW + 2960 * MS)) == Grant(*G(40))
    state = await limiter.host_state("a")
    assert (state["n"], state["m"], state["pen"]) == (1, 2.0, NOW + 3 * S)


async def test_retry_after_is_capped_and_never_moves_back(make: MakeDriver) -> None:
    limiter = make(retry_after_cap=600)
    assert await limiter.penalize("a", retry_after=10_000, now_us=NOW) == 600.0
    assert await limiter.penalize("b", retry_after=10, now_us=NOW) == 10.0
    assert await limiter.penalize("b", retry_after=1, now_us=NOW + S) == 9.0


async def test_backoff_doubles_and_caps(make: MakeDriver) -> None:
    limiter = make(penalty_base=1, penalty_cap=8)
    got = [await limiter.penalize("a", jitter=0.5, now_us=NOW) for _ in range(5)]
    # equal jitter: d/2 + d/2 * 0.5 for d = 1, 2, 4, 8, 8 (capped)
    assert got == [0.75, 1.5, 3.0, 6.0, 6.0]


@pytest.mark.parametrize(
    ("jitter", "expected"),
    [pytest.param(0.0, 1.0, id="jitter-0-keeps-half"),
     pytest.param(0.999999, 1.999999, id="jitter-near-1-gives-all"),
     pytest.param(0.25, 1.25, id="jitter-quarter")],
)
async def test_equal_jitter_bounds(make: MakeDriver, jitter: float, expected: float) -> None:
    limiter = make(penalty_base=2)
    assert await limiter.penalize("a", jitter=jitter, now_us=NOW) == expected


async def test_random_jitter_stays_within_bounds(make: MakeDriver) -> None:
    limiter = make(penalty_base=1)
    got = [await limiter.penalize(f"h{i}", now_us=NOW) for i in range(20)]
    assert all(0.5 <= p <= 1.0 for p in got)
    assert len(set(got)) > 1


async def test_incidents_are_forgiven_after_quiet(make: MakeDriver) -> None:
    limiter = make(penalty_base=1, forgive_after=300)
    assert await limiter.penalize("a", jitter=0, now_us=NOW) == 0.5
    assert await limiter.penalize("a", jitter=0, now_us=NOW) == 1.0
    assert await limiter.penalize("a", jitter=0, now_us=NOW + 100 * S) == 2.0  # 100 s: not quiet
    assert await limiter.penalize("a", jitter=0, now_us=NOW + 400 * S) == 0.5  # 300 s quiet
    assert (await limiter.host_state("a"))["n"] == 1


async def test_slowdown_doubles_from_decayed_value_and_caps(make: MakeDriver) -> None:
    limiter = make(slowdown_cap=16, slowdown_half_life=60)
    factors = []
    for _ in range(5):
        await limiter.penalize("a", retry_after=0, now_us=NOW)
        factors.append((await limiter.host_state("a"))["m"])
    assert factors == [2, 4, 8, 16, 16]

    await limiter.penalize("b", retry_after=0, now_us=NOW)
    await limiter.penalize("b", retry_after=0, now_us=NOW + 60 * S)  # m decayed to 1.5, then x2
    assert (await limiter.host_state("b"))["m"] == 3.0


@pytest.mark.parametrize(
    ("per_host_qps", "second_waits_ms"),
    [pytest.param(0, [200, 150, 125, 0], id="slowdown-interval-without-host-limit"),
     pytest.param(5, [400, 300, 250, 200], id="host-interval-scaled")],
)
async def test_slowdown_decays_over_half_lives(
    make: MakeDriver, per_host_qps: float, second_waits_ms: list[int]
) -> None:
    limiter = make(per_host_qps=per_host_qps, slowdown_interval=0.1, slowdown_half_life=60,
                   host_horizon=1.0)
    assert await limiter.penalize("a", retry_after=0, now_us=NOW) == 0.0  # m = 2, no wait
    # Two back-to-back requests: the second waits the slowed interval T * m(t).
    for at_s, wait_ms in zip([0, 60, 120, 60 * 20], second_waits_ms, strict=True):
        grants = await limiter.acquire_many(["a", "a"], now_us=NOW + at_s * S)
        assert [(g.decision, g.wait_us) for g in grants] == [G(0), G(wait_ms)], at_s


# ---- client behaviour -------------------------------------------------------------------------

async def test_calls_counts_round_trips(make: MakeDriver) -> None:
    limiter = make(qps=10)
    assert await limiter.acquire_many([]) == []
    assert limiter.calls == 0
    await limiter.acquire("a")
    await limiter.acquire_many(["a", "b", "c"])
    await limiter.penalize("a")
    assert limiter.calls == 3


async def test_uses_redis_time_when_no_clock_is_injected(make: MakeDriver) -> None:
    limiter = make(qps=10)
    waits = [g.wait_us for g in await limiter.acquire_many(["a", "b"])]
    assert waits[0] == 0
    assert 99 * MS < waits[1] <= 100 * MS  # relative to the script's own TIME


def test_noscript_after_script_flush_reloads(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    limiter = RateLimiter(client, LimiterConfig(qps=10))
    assert limiter.acquire("a", now_us=NOW).granted
    client.script_flush()
    assert client.script_exists(limiter._acquire.sha) == [False]

    assert limiter.acquire("a", now_us=NOW) == Grant(*G(100))
    assert limiter.penalize("a", retry_after=1, now_us=NOW) == 1.0
    client.close()


async def test_noscript_after_script_flush_reloads_async(redis_url: str) -> None:
    client = redis.asyncio.Redis.from_url(redis_url)
    limiter = AsyncRateLimiter(client, LimiterConfig(qps=10))
    assert (await limiter.acquire("a", now_us=NOW)).granted
    await client.script_flush()
    assert await limiter.acquire("a", now_us=NOW) == Grant(*G(100))
    await client.aclose()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_redis_is_backend_unavailable() -> None:
    client = redis.Redis(host="127.0.0.1", port=_closed_port(), retry=Retry(NoBackoff(), 0))
    with pytest.raises(BackendUnavailable):
        RateLimiter(client, LimiterConfig(qps=1)).acquire("a")


async def test_unreachable_redis_is_backend_unavailable_async() -> None:
    client = redis.asyncio.Redis(host="127.0.0.1", port=_closed_port(),
                                 retry=redis.asyncio.retry.Retry(NoBackoff(), 0))
    with pytest.raises(BackendUnavailable):
        await AsyncRateLimiter(client, LimiterConfig(qps=1)).penalize("a")
    await client.aclose()


# ---- contention against a real redis-server ---------------------------------------------------

PER_MINUTE, BURST, HORIZON_S, ACQUIRERS = 60, 4, 10, 40
CONTENTION = LimiterConfig(qps=PER_MINUTE / 60, burst=BURST, global_horizon=HORIZON_S)


def _check_contention(results: list[tuple[Grant, int]]) -> None:
    """B+1 zero waits; every other grant a distinct slot >= T after the previous; the rest deferred.

    Absolute slot = wait + the Redis TIME read just after the reply (late by one round trip at
    most, hence the tolerance, far below T = 1 s).
    """
    period_us, tolerance_us = S * 60 // PER_MINUTE, 100 * MS
    granted = [(g, t) for g, t in results if g.granted]
    zero = [t for g, t in granted if g.wait_us == 0]
    later = sorted(t + g.wait_us for g, t in granted if g.wait_us > 0)
    assert len(zero) == BURST + 1
    # All calls finish well within T, so slots T, 2T, ... HORIZON*T are exactly the ones granted.
    assert len(later) == HORIZON_S
    deferred = [g for g, _ in results if not g.granted]
    assert {g.decision for g in deferred} == {Decision.DEFER_GLOBAL}
    assert len(deferred) == ACQUIRERS - len(granted)
    assert later[0] - max(zero) >= period_us - tolerance_us
    gaps = [b - a for a, b in itertools.pairwise(later)]
    assert all(gap >= period_us - tolerance_us for gap in gaps), gaps


def _redis_now_us(reply: tuple[int, int]) -> int:
    return int(reply[0]) * S + int(reply[1])


def test_contention_threads(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    limiter = RateLimiter(client, CONTENTION)
    start = threading.Barrier(ACQUIRERS)

    def one() -> tuple[Grant, int]:
        start.wait()
        grant = limiter.acquire(f"h{threading.get_ident()}")
        return grant, _redis_now_us(client.time())

    with ThreadPoolExecutor(ACQUIRERS) as pool:
        results = list(pool.map(lambda _: one(), range(ACQUIRERS)))
    _check_contention(results)
    assert limiter.calls == ACQUIRERS
    client.close()


async def test_contention_tasks(redis_url: str) -> None:
    client = redis.asyncio.Redis.from_url(redis_url)
    limiter = AsyncRateLimiter(client, CONTENTION)

    async def one(i: int) -> tuple[Grant, int]:
        grant = await limiter.acquire(f"h{i}")
        return grant, _redis_now_us(await client.time())

    results = await asyncio.gather(*(one(i) for i in range(ACQUIRERS)))
    _check_contention(list(results))
    await client.aclose()


# ---- the pure core ----------------------------------------------------------------------------

@pytest.mark.parametrize(
    "bad",
    [pytest.param({"qps": -1}, id="negative-qps"),
     pytest.param({"qps": float("nan")}, id="nan-qps"),
     pytest.param({"per_host_qps": -0.5}, id="negative-host-qps"),
     pytest.param({"burst": -1}, id="negative-burst"),
     pytest.param({"burst": 1.5}, id="fractional-burst"),
     pytest.param({"per_host_burst": True}, id="bool-burst"),
     pytest.param({"host_horizon": 0}, id="zero-host-horizon"),
     pytest.param({"global_horizon": -1}, id="negative-global-horizon"),
     pytest.param({"slowdown_half_life": 0}, id="zero-half-life"),
     pytest.param({"slowdown_cap": 0.5}, id="slowdown-cap-below-1"),
     pytest.param({"prefix": "a{b}"}, id="brace-in-prefix"),
     pytest.param({"scope": ""}, id="empty-scope")],
)
def test_config_rejects_invalid_values(bad: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        LimiterConfig(**bad)


def test_keys_share_one_hash_tag() -> None:
    config = LimiterConfig(prefix="c", scope="s")
    assert core.global_key(config) == "c:{rl}:g:s"
    assert core.host_key(config, "example.com") == "c:{rl}:h:example.com"
    with pytest.raises(ValueError):
        core.host_key(config, "")


@pytest.mark.parametrize(
    ("rate", "interval"),
    [pytest.param(0, 0, id="off"), pytest.param(10, 100_000, id="exact"),
     pytest.param(3, 333_334, id="rounded-up-never-faster"),
     pytest.param(0.5, 2_000_000, id="slow")],
)
def test_interval_us(rate: float, interval: int) -> None:
    assert core.interval_us(rate) == interval


def test_grant_and_decoding() -> None:
    grants = core.decode_grants([0, 1500, 1, 20, 2, 0], 3)
    assert grants == [Grant(Decision.GRANTED, 1500), Grant(Decision.DEFER_HOST, 20),
                      Grant(Decision.DEFER_GLOBAL, 0)]
    assert (grants[0].wait, grants[0].granted, grants[1].granted) == (0.0015, True, False)
    with pytest.raises(ValueError):
        core.decode_grants([0], 1)


def test_decayed_factor_matches_half_life() -> None:
    assert core.decayed_factor(3.0, NOW, NOW + 60 * S, 60.0) == 2.0
    assert core.decayed_factor(16.0, NOW, NOW + 3600 * S, 60.0) == 1.0
    assert core.decayed_factor(1.0, NOW, NOW, 60.0) == 1.0


@pytest.mark.parametrize("name", ["acquire.lua", "penalize.lua"])
def test_lua_scripts_document_their_contract(name: str) -> None:
    header = core.script_source(name).split("]]", 1)[0]
    for word in ("KEYS[1]", "ARGV[1]", "Returns", "Clock", "TIME"):
        assert word in header
