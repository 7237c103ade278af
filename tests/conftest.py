"""Shared fixtures: a real redis-server per test session on a free loopback port."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import fakeredis
import pytest
import redis.asyncio as aioredis
from redisserver import RedisServer

pytest_plugins = ["httpserver", "siteserver"]


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


@pytest.fixture(params=["fakeredis", "redis"])
async def client(request: pytest.FixtureRequest) -> AsyncIterator[aioredis.Redis]:
    """An asyncio client of fakeredis, then of the real redis-server: scripts must agree."""
    if request.param == "fakeredis":
        c = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
    else:
        c = aioredis.Redis.from_url(request.getfixturevalue("redis_url"))
    yield c
    await c.aclose()


@pytest.fixture(autouse=True)
def _no_ambient_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never read the developer's CRAWLER_* environment."""
    for key in list(os.environ):
        if key.startswith("CRAWLER_"):
            monkeypatch.delenv(key, raising=False)
