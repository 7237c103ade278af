"""Redis going away: commands wait it out (logged once), READONLY reconnects, the limiter
falls back to a local rate. Real redis-server processes, stopped and started by the tests."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Iterator

import pytest
from redisserver import RedisServer, free_port

from crawler import outage as outage_module
from crawler.backend import check_redis, outage_of, redis_client
from crawler.errors import BackendUnavailable
from crawler.ratelimit import AsyncRateLimiter, LimiterConfig
from crawler.ratelimit.fallback import FallbackLimiter, local_config


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    server = RedisServer(appendonly=True)
    yield server
    server.stop()


async def wait_down(client: object) -> None:
    outage = outage_of(client)
    assert outage is not None
    await asyncio.get_running_loop().run_in_executor(None, outage.is_down.wait, 30)
    assert outage.is_down.is_set()


async def test_a_restart_is_waited_out_and_said_once(
    own_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    client = redis_client(own_redis.url)
    outage_of(client).settle = 0  # type: ignore[union-attr]  # over at the first answer
    await client.set("k", "before")
    own_redis.halt()
    caplog.set_level(logging.WARNING, logger="crawler.outage")
    # Several callers blocked at once: still one "unreachable" line, not one per retry.
    calls = [asyncio.create_task(client.incr("n")) for _ in range(5)]
    await wait_down(client)
    own_redis.start()
    assert sorted(await asyncio.gather(*calls)) == [1, 2, 3, 4, 5]
    assert await client.get("k") == b"before"  # AOF kept the data
    lines = [r.getMessage() for r in caplog.records]
    assert sum("unreachable" in x for x in lines) == 1, lines
    assert sum("is back after" in x for x in lines) == 1, lines
    assert outage_of(client).outages == 1  # type: ignore[union-attr]
    await client.aclose()


def test_a_flapping_redis_is_one_outage(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A Redis shutting down answers a few calls between failures: still one outage.
    now = [100.0]
    monkeypatch.setattr(outage_module.time, "monotonic", lambda: now[0])
    caplog.set_level(logging.WARNING, logger="crawler.outage")
    o = outage_module.Outage("redis://x:1/0", settle=1.0)

    def tick(dt: float) -> float:
        now[0] += dt
        return now[0]

    o.failed(ConnectionError("closed"))
    o.succeeded(tick(0.1))
    assert not o.is_down.is_set() and o.outages == 0  # answers again, not yet "back"
    o.failed(ConnectionError("refused"))
    assert o.up_for() == 0.0
    o.succeeded(tick(2.0))  # answers resume...
    o.succeeded(tick(0.5))
    assert o.outages == 0
    o.succeeded(tick(0.6))  # ...and after a whole second of them, it is over
    lines = [r.getMessage() for r in caplog.records]
    assert sum("unreachable" in x for x in lines) == 1
    assert lines[-1] == "Redis at redis://x:1/0 is back after 2.1 s"
    assert o.outages == 1 and o.up_for() == pytest.approx(1.1)


async def test_patience_runs_out_with_the_error() -> None:
    client = redis_client(f"redis://127.0.0.1:{free_port()}/0", patience=0.3)
    with pytest.raises(Exception, match=r"(?i)connect"):
        await client.get("k")
    await client.aclose()


async def test_first_check_fails_fast_with_one_masked_line() -> None:
    url = f"redis://user:s3cret@127.0.0.1:{free_port()}/0"
    client = redis_client(url)  # patient, but the start-up check must not be
    with pytest.raises(BackendUnavailable) as err:
        await asyncio.wait_for(check_redis(client, url), 10)
    assert "s3cret" not in str(err.value) and "***" in str(err.value)
    await client.aclose()


async def test_readonly_after_a_failover_reconnects_and_retries(own_redis: RedisServer) -> None:
    other = RedisServer()
    try:
        client = redis_client(own_redis.url)
        await client.set("k", "1")
        # Failover seen from the client: its server became a replica, writes answer READONLY.
        admin = own_redis.client()
        admin.replicaof("127.0.0.1", other.port)
        write = asyncio.create_task(client.set("k", "2"))
        await wait_down(client)
        admin.replicaof("NO", "ONE")  # promoted back: the retry on a fresh connection lands
        assert await write is True
        assert await client.get("k") == b"2"
        admin.close()
        await client.aclose()
    finally:
        other.stop()


# --- the local fallback limiter ------------------------------------------------------------------


def test_local_config_scales_rates_and_keeps_no_limit_unlimited() -> None:
    c = local_config(LimiterConfig(qps=100, per_host_qps=0, burst=10), 0.25)
    assert (c.qps, c.per_host_qps, c.burst) == (25, 0, 2)


async def test_fallback_paces_locally_at_a_share_and_returns_to_redis(
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    remote = AsyncRateLimiter(redis_client(url, fail_fast=True),
                              LimiterConfig(per_host_qps=10, host_horizon=10))
    limiter = FallbackLimiter(remote, lambda: 0.5, retry_every=0.0)
    limiter.outage.settle = 0  # over at the first answer
    caplog.set_level(logging.WARNING, logger="crawler.ratelimit.fallback")
    grants = await limiter.acquire_many(["h"] * 4)
    # 10/s shared by two workers: 5/s here, i.e. slots 200 ms apart, never failing open.
    assert [g.granted for g in grants] == [True] * 4
    waits = [g.wait for g in grants]
    assert all(abs((b - a) - 0.2) < 0.01 for a, b in itertools.pairwise(waits))
    await limiter.acquire_many(["h"])
    assert sum("unavailable" in r.getMessage() for r in caplog.records) == 1
    assert limiter.degraded and limiter.fallbacks == 1
    # Redis comes up on that port: the next call goes back to the shared limiter.
    server = RedisServer(port=port)
    try:
        await limiter.acquire_many(["h"])
        assert not limiter.degraded
        assert remote.calls >= 3
        assert any("is back" in r.getMessage() for r in caplog.records)
    finally:
        server.stop()
        await remote.client.aclose()



async def test_a_refused_password_is_not_waited_out() -> None:
    # A worker (patience: forever) with a wrong password must fail, not retry for ever.
    server = RedisServer()
    admin = server.client()
    admin.config_set("requirepass", "right")
    admin.close()
    try:
        for fail_fast in (False, True):
            url = server.url.replace("redis://", "redis://:wrong@")
            client = redis_client(url, fail_fast=fail_fast)
            with pytest.raises(Exception, match=r"(?i)invalid|auth|WRONGPASS"):
                await asyncio.wait_for(client.ping(), 10)
            await client.aclose()
    finally:
        server.stop()
