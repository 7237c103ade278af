"""Redirect hops: both engines ask `before_hop(url)` before each hop's request, and the runner
uses it to take a rate-limit slot per hop."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Sequence
from typing import Any
from urllib.parse import quote

import fakeredis
import pytest
from httpserver import HTTPServer

from crawler.engines import FetchConfig, make_engine
from crawler.ratelimit import AsyncRateLimiter, Grant, LimiterConfig
from crawler.retry import RetryPolicy
from crawler.runner import BatchRunner, RunnerOptions
from crawler.store import ResultStore

MODES = ["async", "threads"]
both = pytest.mark.parametrize("mode", MODES)
WAIT = 10.0  # s: a bound on awaits that should take milliseconds, so a bug fails, not hangs


def config(**overrides: Any) -> FetchConfig:
    base: dict[str, Any] = {
        "concurrency": 4,
        "timeout": 5.0,
        "connect_timeout": 2.0,
        "read_timeout": 2.0,
        "allow_private_networks": True,  # the test servers are on 127.0.0.0/8
    }
    return FetchConfig(**(base | overrides))


class HopLog:
    """A before_hop that records each call with what the servers had seen at that moment."""

    def __init__(self, *servers: HTTPServer) -> None:
        self.servers = servers
        self.calls: list[tuple[str, list[list[str]]]] = []

    async def __call__(self, url: str) -> None:
        self.calls.append((url, [s.paths() for s in self.servers]))

    @property
    def urls(self) -> list[str]:
        return [url for url, _ in self.calls]


@both
async def test_one_call_per_hop_in_order_before_its_request(
    mode: str, http_server: HTTPServer
) -> None:
    hops = HopLog(http_server)
    async with make_engine(mode, config()) as engine:
        res = await engine.fetch(http_server.url("/redirect/3"), before_hop=hops)
    assert (res.status, res.redirects, res.final_url) == (
        200, 3, http_server.url("/redirect/0"))
    # Absolute URLs (the server sent relative Locations), each once, in order; when a hop is
    # announced the server has seen every earlier request and not this one.
    assert hops.calls == [
        (http_server.url("/redirect/2"), [["/redirect/3"]]),
        (http_server.url("/redirect/1"), [["/redirect/3", "/redirect/2"]]),
        (http_server.url("/redirect/0"), [["/redirect/3", "/redirect/2", "/redirect/1"]]),
    ]
    assert http_server.paths() == ["/redirect/3", "/redirect/2", "/redirect/1", "/redirect/0"]


@both
async def test_cross_host_hop_is_announced_with_its_host(
    mode: str, make_http_server: Any
) -> None:
    first, second = make_http_server("127.0.0.1"), make_http_server("127.0.0.2")
    target = second.url("/ok")
    hops = HopLog(first, second)
    async with make_engine(mode, config()) as engine:
        res = await engine.fetch(first.url(f"/redirect-to?url={quote(target, safe='')}"),
                                 before_hop=hops)
    assert (res.status, res.final_url) == (200, target)
    assert hops.calls == [(target, [["/redirect-to"], []])]
    assert second.paths() == ["/ok"]


@both
async def test_no_call_without_redirects(mode: str, http_server: HTTPServer) -> None:
    hops = HopLog(http_server)
    async with make_engine(mode, config()) as engine:
        ok = await engine.fetch(http_server.url("/ok"), before_hop=hops)
        missing = await engine.fetch(http_server.url("/status/404"), before_hop=hops)
    assert (ok.status, missing.status) == (200, 404)
    assert hops.calls == []


@both
async def test_no_call_for_a_hop_past_max_redirects(mode: str, http_server: HTTPServer) -> None:
    hops = HopLog(http_server)
    async with make_engine(mode, config(max_redirects=1)) as engine:
        res = await engine.fetch(http_server.url("/redirect/3"), before_hop=hops)
    assert res.error == "too_many_redirects"
    assert hops.urls == [http_server.url("/redirect/2")]
    assert http_server.paths() == ["/redirect/3", "/redirect/2"]


@both
async def test_a_waiting_before_hop_holds_the_hop_back(
    mode: str, http_server: HTTPServer
) -> None:
    entered, release = asyncio.Event(), asyncio.Event()
    calls: list[str] = []

    async def slow_hop(url: str) -> None:
        calls.append(url)
        entered.set()
        await release.wait()

    async with make_engine(mode, config()) as engine:
        task = asyncio.create_task(engine.fetch(http_server.url("/redirect/1"),
                                                before_hop=slow_hop))
        try:
            async with asyncio.timeout(WAIT):
                await entered.wait()
            # The callback is waiting: the hop has not been requested.
            assert http_server.paths() == ["/redirect/1"]
            assert not task.done()
        finally:
            release.set()  # a threads-engine pool thread waits on it: never leave it blocked
        async with asyncio.timeout(WAIT):
            res = await task
    assert calls == [http_server.url("/redirect/0")]
    assert (res.status, res.redirects) == (200, 1)
    assert http_server.paths() == ["/redirect/1", "/redirect/0"]


# --- through the runner: every hop takes a limiter slot --------------------------------------


class GrantLog(AsyncRateLimiter):
    """The real limiter, noting each granted slot: host, its bucket's tat after the grant, and
    how many requests the server had seen when the slot was granted."""

    def __init__(self, client: Any, config: LimiterConfig, server: HTTPServer) -> None:
        super().__init__(client, config)
        self.server = server
        self.grants: list[tuple[str, int, int]] = []

    async def acquire_many(
        self, hosts: Sequence[str], *, now_us: int | None = None
    ) -> list[Grant]:
        grants = await super().acquire_many(hosts, now_us=now_us)
        for host, grant in zip(hosts, grants, strict=True):
            if grant.granted:
                tat = (await self.host_state(host))["tat"]
                self.grants.append((host, tat, len(self.server.paths())))
        return grants


async def one_batch(urls: list[str]) -> AsyncIterator[Sequence[str]]:
    yield urls


PER_HOST_QPS = 20.0
INTERVAL_US = round(1_000_000 / PER_HOST_QPS)


@both
async def test_runner_takes_a_slot_for_every_hop(mode: str, http_server: HTTPServer) -> None:
    # Given a chain a -> b -> c on one host and a per-host limit
    http_server.set_route("/a", "moved", status=302, headers={"Location": "/b"})
    http_server.set_route("/b", "moved", status=302, headers={"Location": "/c"})
    http_server.set_route("/c", "<p>end</p>", content_type="text/html")
    redis = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
    limiter = GrantLog(redis, LimiterConfig(per_host_qps=PER_HOST_QPS), http_server)
    store = ResultStore(redis, "job")
    options = RunnerOptions(concurrency=4, worker="w1", host_interval=1 / PER_HOST_QPS,
                            policy=RetryPolicy(retries=0))
    # When the runner fetches a
    async with make_engine(mode, config()) as engine:
        runner = BatchRunner(engine, limiter, options)
        async with asyncio.timeout(WAIT):
            stats = await runner.run(one_batch([http_server.url("/a")]), store)
    # Then each of the three requests had its own slot, granted before it was sent
    assert http_server.paths() == ["/a", "/b", "/c"]
    assert [(host, seen) for host, _, seen in limiter.grants] == [
        ("127.0.0.1", 0), ("127.0.0.1", 1), ("127.0.0.1", 2)]
    tats = [tat for _, tat, _ in limiter.grants]
    assert all(later - earlier >= INTERVAL_US for earlier, later in itertools.pairwise(tats))
    assert limiter.calls >= 3 and stats.limiter_calls == 1  # hops ask outside the dispatcher
    [rec] = [r async for r in store.iter_records()]
    assert (rec["url"], rec["final_url"], rec["status"]) == (
        http_server.url("/a"), http_server.url("/c"), 200)
    assert stats.done == stats.ok == 1
