"""Shared fixtures: a real redis-server per test session on a free loopback port."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import fakeredis
import pytest
import redis.asyncio as aioredis
from redisserver import RedisServer
from redistopo import RedisClusterServers

from crawler.backend import redis_client

pytest_plugins = ["httpserver", "siteserver", "hookserver"]


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """A clean database on the test redis-server."""
    c = redis_server.client()
    c.flushall()
    c.close()
    yield redis_server.url


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterServers]:
    """A real 3-master Redis Cluster on loopback, for the whole session (started on first use)."""
    servers = RedisClusterServers()
    yield servers
    servers.stop()


@pytest.fixture
def redis_cluster_url(redis_cluster: RedisClusterServers) -> str:
    """`redis+cluster://` of the test cluster, emptied first."""
    redis_cluster.flushall()
    return redis_cluster.url


@pytest.fixture(params=["fakeredis", "redis", "cluster"])
async def client(request: pytest.FixtureRequest) -> AsyncIterator[aioredis.Redis]:
    """An asyncio client of fakeredis, of a real redis-server and of a real Redis Cluster
    (through `crawler.backend.redis_client`): the scripts must agree on all three."""
    if request.param == "fakeredis":
        c = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
    elif request.param == "redis":
        c = aioredis.Redis.from_url(request.getfixturevalue("redis_url"))
    else:
        c = redis_client(request.getfixturevalue("redis_cluster_url"), name="crawler-test")
    yield c
    await c.aclose()


@pytest.fixture(autouse=True)
def _no_ambient_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never read the developer's CRAWLER_* environment."""
    for key in list(os.environ):
        if key.startswith("CRAWLER_"):
            monkeypatch.delenv(key, raising=False)
