"""Connections to Redis: a real server from CRAWLER_REDIS_URL, or an in-process fakeredis.

The embedded mode needs no server: fakeredis executes our Lua scripts (through lupa), so the
same limiter and store code runs in both cases.
"""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from crawler.errors import BackendUnavailable
from crawler.settings import mask_url

# Seconds to wait for Redis to answer before the CLI says it is unreachable.
CONNECT_TIMEOUT = 5.0


def redis_client(url: str | None) -> aioredis.Redis:
    """An asyncio client for `url`, or a private in-process fakeredis server when None."""
    if url is None:
        import fakeredis

        return fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
    return aioredis.Redis.from_url(
        url, socket_connect_timeout=CONNECT_TIMEOUT, health_check_interval=30
    )


async def check_redis(client: aioredis.Redis, url: str | None) -> None:
    """Fail early with one clear line (and a masked URL) when Redis does not answer."""
    try:
        await client.ping()
    except (RedisError, OSError) as exc:
        where = mask_url(url) if url else "embedded redis"
        raise BackendUnavailable(f"cannot reach Redis at {where}: {exc}") from None

