"""Connections to Redis: a real server from CRAWLER_REDIS_URL, or an in-process fakeredis.

The embedded mode needs no server: fakeredis executes our Lua scripts (through lupa), so the
same limiter and store code runs in both cases.

How long a client waits out an outage is the caller's choice (`patience`): workers wait
forever (a batch must survive a Redis restart), the CLI and the API for `redis_patience`
seconds, the rate limiter not at all (it falls back to a local limiter instead, see
`crawler.ratelimit.fallback`). The first check of a URL always fails fast: a typo should not
look like an outage.

The URL picks the topology (`crawler.redis_urls`): one server, a Redis Cluster (redis-py's
`RedisCluster`, which follows MOVED/ASK and refreshes its slot map), or the master a set of
Sentinels names (redis-py's Sentinel pool: after a failover a `READONLY` answer drops the
connection and the retry reconnects to the new master). Every key a script touches shares one
hash tag (`crawler.keys`, the limiter's `{rl}`), so the scripts run unchanged on a cluster.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import RedisClusterException, RedisError

from crawler.errors import BackendUnavailable
from crawler.outage import BACKOFF_BASE, BACKOFF_CAP, TRANSIENT, Outage, PatientRetry, RetryOnce
from crawler.redis_urls import RedisTarget, parse_redis_url
from crawler.settings import mask_url

# Seconds to wait for Redis to answer before the CLI says it is unreachable.
CONNECT_TIMEOUT = 5.0
# Seconds a fail-fast client waits for one reply (a limiter call takes well under 1 ms).
FAIL_FAST_TIMEOUT = 2.0
FOREVER = None
# A cluster client retries by count, not by time (redis-py's cluster loop refreshes the slot
# map between attempts and cannot wait forever): with back-off capped at BACKOFF_CAP this is
# about 2 minutes of waiting (124 s on average, plus connect timeouts), longer than a cluster
# failover (cluster-node-timeout, 15 s by default, plus the election).
CLUSTER_RETRIES = 32


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
    target = parse_redis_url(url)
    client: Any
    if target.kind == "cluster":
        client = _cluster_client(target, name, fail_fast=fail_fast)
    elif target.kind == "sentinel":
        client = _sentinel_client(target, name, kwargs)
    else:
        client = aioredis.Redis.from_url(url, health_check_interval=30, client_name=name,
                                         **kwargs)
    client.outage = outage
    return client


def _cluster_client(target: RedisTarget, name: str, *, fail_fast: bool) -> RedisCluster:
    """A cluster client from the seed nodes; it learns the other nodes from them."""
    retry = Retry(ExponentialWithJitterBackoff(cap=BACKOFF_CAP, base=BACKOFF_BASE),
                  1 if fail_fast else CLUSTER_RETRIES, TRANSIENT)
    timeout = FAIL_FAST_TIMEOUT if fail_fast else CONNECT_TIMEOUT
    options: dict[str, Any] = {"socket_connect_timeout": timeout,
                               "socket_timeout": FAIL_FAST_TIMEOUT if fail_fast else None,
                               **target.data_options}
    return RedisCluster(
        startup_nodes=[ClusterNode(h, p) for h, p in target.nodes],
        username=target.username, password=target.password, ssl=target.tls,
        client_name=name, retry=retry, health_check_interval=30, **options)


def _sentinel_client(target: RedisTarget, name: str, kwargs: dict[str, Any]) -> aioredis.Redis:
    """The master the sentinels name, through a pool that asks them again after a failure."""
    options: dict[str, Any] = {
        "health_check_interval": 30, "client_name": name, "db": target.db,
        "username": target.username, "password": target.password,
        **kwargs, **target.data_options}
    if target.tls:
        options["ssl"] = True
    sentinel_kwargs: dict[str, Any] = {
        "socket_connect_timeout": kwargs.get("socket_connect_timeout", CONNECT_TIMEOUT),
        "socket_timeout": FAIL_FAST_TIMEOUT, **target.sentinel_login}
    sentinel = Sentinel(target.nodes, sentinel_kwargs=sentinel_kwargs)
    client = sentinel.master_for(target.service, redis_class=_SentinelMaster, **options)
    client.sentinel_group = sentinel
    return client


class _SentinelMaster(aioredis.Redis):
    """The master's client. Closing it closes the connections to the sentinels too: redis-py
    leaves them open, and every short-lived client (a probe) would leak one per sentinel."""

    sentinel_group: Sentinel | None = None  # not `sentinel`: that is the SENTINEL command

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        if self.sentinel_group is not None:
            for node in self.sentinel_group.sentinels:
                await node.aclose()


def outage_of(client: Any) -> Outage | None:
    """The `Outage` of a client made by `redis_client` (None for fakeredis)."""
    return getattr(client, "outage", None)


async def server_uptime(client: Any) -> float:
    """Seconds the Redis behind `client` has been up: the youngest node of a cluster."""
    info = await client.info("server")
    if "uptime_in_seconds" not in info:  # a cluster answers per node: {node: info}
        return min((float(i.get("uptime_in_seconds", 0)) for i in info.values()), default=0.0)
    return float(info["uptime_in_seconds"])


async def check_redis(client: aioredis.Redis, url: str | None) -> None:
    """Fail early with one clear line (and a masked URL) when Redis does not answer."""
    probe = client if url is None else redis_client(url, fail_fast=True)
    try:
        await probe.ping()
    except (RedisError, RedisClusterException, OSError) as exc:  # the last: no node answers
        where = mask_url(url) if url else "embedded redis"
        raise BackendUnavailable(f"cannot reach Redis at {where}: {exc}") from None
    finally:
        if probe is not client:
            await probe.aclose()
