"""A rate limiter shared by every worker through Redis: one global and one per-host limit.

    limiter = RateLimiter(redis.Redis.from_url(url), LimiterConfig(qps=50, per_host_qps=1))
    grant = limiter.acquire("example.com")
    if grant.granted:
        time.sleep(grant.wait)      # the slot is reserved: sleep once, then fetch
    else:
        ...                         # DEFER_HOST: take another host; DEFER_GLOBAL: back-pressure
    limiter.penalize("example.com", retry_after=30)   # on 429/503, shared with every worker

Each `acquire_many` is one script round trip (acquire.lua) that reserves a global and a per-host
slot atomically, with Redis TIME as the only clock. `penalize` (penalize.lua) records a back-off
that every worker's next acquire sees. Decisions live in `core`; the two classes below only send.
The limiter takes host strings and knows nothing of HTTP or URLs.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from typing import Any

from crawler.ratelimit.core import (
    TTL_SLACK_MS,
    Decision,
    Grant,
    LimiterConfig,
    acquire_argv,
    backend_errors,
    clock_arg,
    decode_grants,
    decode_state,
    draw_jitter,
    global_key,
    host_key,
    penalize_argv,
    script_source,
)

__all__ = ["AsyncRateLimiter", "Decision", "Grant", "LimiterConfig", "RateLimiter"]


class _LimiterBase:
    """Everything both clients decide before and after a round trip; no I/O here."""

    def __init__(self, client: Any, config: LimiterConfig) -> None:
        self.client = client
        self.config = config
        self._global_key = global_key(config)
        self._acquire_argv = acquire_argv(config)
        # register_script computes the SHA locally; calls use EVALSHA and redis-py reloads the
        # script on NOSCRIPT (e.g. after a Redis restart or SCRIPT FLUSH).
        self._acquire = client.register_script(script_source("acquire.lua"))
        self._penalize = client.register_script(script_source("penalize.lua"))
        self._host_delay = client.register_script(script_source("host_delay.lua"))
        self._calls = 0
        self._calls_lock = threading.Lock()

    @property
    def calls(self) -> int:
        """Script round trips made by this limiter (the benchmark reports them per fetch)."""
        return self._calls

    def _count_call(self) -> None:
        with self._calls_lock:  # sync limiters are shared by threads
            self._calls += 1

    def _acquire_request(
        self, hosts: Sequence[str], now_us: int | None
    ) -> tuple[list[str], list[int | str]]:
        keys = [self._global_key, *(host_key(self.config, h) for h in hosts)]
        return keys, [*self._acquire_argv, clock_arg(now_us)]

    def _penalize_request(
        self, host: str, retry_after: float | None, jitter: float | None, now_us: int | None
    ) -> tuple[list[str], list[int | str]]:
        chosen = draw_jitter() if jitter is None else jitter
        args = penalize_argv(self.config, retry_after, chosen)
        return [host_key(self.config, host)], [*args, clock_arg(now_us)]

    def _host_delay_request(
        self, host: str, delay: float, duration: float, now_us: int | None
    ) -> tuple[list[str], list[int | str]]:
        if not (math.isfinite(delay) and delay >= 0 and math.isfinite(duration) and duration > 0):
            raise ValueError(f"bad host delay {delay!r} for {duration!r} s")
        return [host_key(self.config, host)], [
            round(delay * 1_000_000), round(duration * 1_000_000), TTL_SLACK_MS,
            clock_arg(now_us)]


class RateLimiter(_LimiterBase):
    """The limiter over a sync client (`redis.Redis` or `fakeredis.FakeRedis`); thread-safe."""

    def acquire(self, host: str, *, now_us: int | None = None) -> Grant:
        """Reserve a slot for one request to `host` (see `acquire_many`)."""
        return self.acquire_many([host], now_us=now_us)[0]

    def acquire_many(self, hosts: Sequence[str], *, now_us: int | None = None) -> list[Grant]:
        """Decide for each host in order, in ONE round trip; a repeated host gets later slots.

        `now_us` replaces Redis TIME and exists for tests only.
        """
        if not hosts:
            return []
        keys, args = self._acquire_request(hosts, now_us)
        self._count_call()
        with backend_errors():
            reply = self._acquire(keys=keys, args=args)
        return decode_grants(reply, len(hosts))

    def penalize(
        self,
        host: str,
        retry_after: float | None = None,
        *,
        jitter: float | None = None,
        now_us: int | None = None,
    ) -> float:
        """Back every worker off `host` after a 429/503; returns the penalty left, in seconds.

        `jitter` in [0, 1) is drawn at random unless a test fixes it.
        """
        keys, args = self._penalize_request(host, retry_after, jitter, now_us)
        self._count_call()
        with backend_errors():
            reply = self._penalize(keys=keys, args=args)
        return int(reply) / 1_000_000

    def set_host_delay(self, host: str, delay: float, duration: float, *,
                       now_us: int | None = None) -> None:
        """Space `host`'s requests at least `delay` s apart for `duration` s, for everyone
        sharing this limiter (robots.txt Crawl-delay)."""
        keys, args = self._host_delay_request(host, delay, duration, now_us)
        self._count_call()
        with backend_errors():
            self._host_delay(keys=keys, args=args)

    def host_state(self, host: str) -> dict[str, Any]:
        """The raw state of a host bucket (tat, pen, m, mts, n, lts, ttl_ms); for inspection."""
        return self._state(host_key(self.config, host))

    def global_state(self) -> dict[str, Any]:
        """The raw state of the global bucket; for inspection."""
        return self._state(self._global_key)

    def _state(self, key: str) -> dict[str, Any]:
        with backend_errors():
            return decode_state(self.client.hgetall(key), self.client.pttl(key))


class AsyncRateLimiter(_LimiterBase):
    """The limiter over an asyncio client (`redis.asyncio.Redis` or `fakeredis.FakeAsyncRedis`)."""

    async def acquire(self, host: str, *, now_us: int | None = None) -> Grant:
        """Reserve a slot for one request to `host` (see `acquire_many`)."""
        return (await self.acquire_many([host], now_us=now_us))[0]

    async def acquire_many(
        self, hosts: Sequence[str], *, now_us: int | None = None
    ) -> list[Grant]:
        """Decide for each host in order, in ONE round trip; a repeated host gets later slots."""
        if not hosts:
            return []
        keys, args = self._acquire_request(hosts, now_us)
        self._count_call()
        with backend_errors():
            reply = await self._acquire(keys=keys, args=args)
        return decode_grants(reply, len(hosts))

    async def penalize(
        self,
        host: str,
        retry_after: float | None = None,
        *,
        jitter: float | None = None,
        now_us: int | None = None,
    ) -> float:
        """Back every worker off `host` after a 429/503; returns the penalty left, in seconds."""
        keys, args = self._penalize_request(host, retry_after, jitter, now_us)
        self._count_call()
        with backend_errors():
            reply = await self._penalize(keys=keys, args=args)
        return int(reply) / 1_000_000

    async def set_host_delay(self, host: str, delay: float, duration: float, *,
                             now_us: int | None = None) -> None:
        """Space `host`'s requests at least `delay` s apart for `duration` s (Crawl-delay)."""
        keys, args = self._host_delay_request(host, delay, duration, now_us)
        self._count_call()
        with backend_errors():
            await self._host_delay(keys=keys, args=args)

    async def host_state(self, host: str) -> dict[str, Any]:
        """The raw state of a host bucket (tat, pen, m, mts, n, lts, ttl_ms); for inspection."""
        return await self._state(host_key(self.config, host))

    async def global_state(self) -> dict[str, Any]:
        """The raw state of the global bucket; for inspection."""
        return await self._state(self._global_key)

    async def _state(self, key: str) -> dict[str, Any]:
        with backend_errors():
            return decode_state(await self.client.hgetall(key), await self.client.pttl(key))
