"""Connections to Redis: a real server from CRAWLER_REDIS_URL, or an in-process fakeredis.

The embedded mode needs no server: fakeredis executes our Lua scripts (through lupa), so the
same limiter and store code runs in both cases.

How long a client waits out an outage is the caller's choice (`patience`): workers wait
forever (a batch must survive a Redis restart), the CLI and the API for `redis_patience`
seconds, the rate limiter not at all (it falls back to a local limiter instead, see
`crawler.ratelimit.fallback`). The first check of a URL always fails fast: a typo should not
look like an outage.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from crawler.errors import BackendUnavailable
from crawler.outage import Outage, PatientRetry, RetryOnce
from crawler.settings import mask_url

# Seconds to wait for Redis to answer before the CLI says it is unreachable.
CONNECT_TIMEOUT = 5.0
# Seconds a fail-fast client waits for one reply (a limiter call takes well under 1 ms).
FAIL_FAST_TIMEOUT = 2.0
FOREVER = None


def redis_client(url: str | None, *, patience: float | None = FOREVER,
                 fail_fast: bool = False, name: str = "crawler") -> aioredis.Redis:
    """An asyncio client for `url`, or a private in-process fakeredis server when None.

    `patience`: seconds to retry a command while Redis is unreachable (None: forever);
    `fail_fast`: no retry at all and short timeouts; `name`: what `CLIENT LIST` shows for its
    connections (who is connected, for operators). The client's `Outage` is `client.outage`.
    """
    if url is None:
        import fakeredis

        return fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
    outage = Outage(mask_url(url))
    kwargs: dict[str, Any]
    if fail_fast:
        # One immediate retry on a fresh connection: after a Redis restart every pooled
        # connection fails once; a Redis that is really down refuses both at once.
        kwargs = {"retry": RetryOnce(), "socket_timeout": FAIL_FAST_TIMEOUT,
                  "socket_connect_timeout": FAIL_FAST_TIMEOUT}
    else:
        kwargs = {"retry": PatientRetry(outage, give_up_after=patience),
                  "socket_connect_timeout": CONNECT_TIMEOUT}
    client = aioredis.Redis.from_url(url, health_check_interval=30, client_name=name, **kwargs)
    client.outage = outage  # type: ignore[attr-defined]
    return client


def outage_of(client: Any) -> Outage | None:
    """The `Outage` of a client made by `redis_client` (None for fakeredis)."""
    return getattr(client, "outage", None)


async def check_redis(client: aioredis.Redis, url: str | None) -> None:
    """Fail early with one clear line (and a masked URL) when Redis does not answer."""
    probe = client if url is None else redis_client(url, fail_fast=True)
    try:
        await probe.ping()
    except (RedisError, OSError) as exc:
        where = mask_url(url) if url else "embedded redis"
        raise BackendUnavailable(f"cannot reach Redis at {where}: {exc}") from None
    finally:
        if probe is not client:
            await probe.aclose()
