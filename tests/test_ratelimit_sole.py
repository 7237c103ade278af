"""The private-Redis limiter: skips the script only where acquire.lua's answer is known."""

from __future__ import annotations

import fakeredis
import pytest

from crawler.ratelimit import AsyncRateLimiter, Decision, LimiterConfig
from crawler.ratelimit.sole import SoleRateLimiter


@pytest.fixture
def client() -> fakeredis.FakeAsyncRedis:
    return fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())


async def test_unlimited_hosts_without_state_need_no_round_trip(client) -> None:
    lim = SoleRateLimiter(client, LimiterConfig())
    grants = await lim.acquire_many(["a", "b", "a"])
    assert [(g.decision, g.wait_us) for g in grants] == [(Decision.GRANTED, 0)] * 3
    assert lim.calls == 0


async def test_a_penalized_host_is_asked_and_the_others_are_not(client) -> None:
    lim = SoleRateLimiter(client, LimiterConfig())
    await lim.penalize("slow", retry_after=30, jitter=0.0)
    calls = lim.calls
    grants = await lim.acquire_many(["a", "slow", "b"])
    assert lim.calls == calls + 1
    assert [g.decision for g in grants] == [Decision.GRANTED, Decision.DEFER_HOST,
                                            Decision.GRANTED]
    assert 29 < grants[1].wait <= 30
    # The same answers as the script gives for every host (a plain limiter on that store).
    plain = await AsyncRateLimiter(client, LimiterConfig()).acquire_many(["a", "slow", "b"])
    assert [g.decision for g in plain] == [g.decision for g in grants]


async def test_a_crawl_delay_host_is_paced_by_the_script(client) -> None:
    lim = SoleRateLimiter(client, LimiterConfig())
    await lim.set_host_delay("polite", 5.0, 60.0)
    (grant,) = await lim.acquire_many(["polite"])
    # The delay counts from the robots.txt request that set it: the next one waits.
    assert grant.decision is Decision.DEFER_HOST and 4 < grant.wait <= 5
    assert lim.calls == 2


@pytest.mark.parametrize("config", [LimiterConfig(qps=100), LimiterConfig(per_host_qps=1)])
async def test_any_configured_rate_always_asks_the_script(client, config) -> None:
    lim = SoleRateLimiter(client, config)
    await lim.acquire_many(["a", "b"])
    assert lim.calls == 1
