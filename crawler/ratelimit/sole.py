"""The limiter on a Redis that no other process uses: the embedded crawl's in-process fakeredis.

With no global and no per-host rate, acquire.lua grants every request at once unless the host
has state of its own: a 429/503 penalty or slow-down (penalize.lua) or a robots.txt
Crawl-delay (host_delay.lua). On a private Redis only this process writes that state, so it
knows which hosts have any, and answers for all the others without a round trip. Each call
to the in-process fakeredis costs a few hundred microseconds of this process's CPU (measured:
330 us for acquire.lua, about 10 us of CPU per page at the default concurrency); shared
Redis servers keep the script call, since another worker may have penalized the host.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from crawler.ratelimit import AsyncRateLimiter, Decision, Grant, LimiterConfig

_GO = Grant(Decision.GRANTED, 0)


class SoleRateLimiter(AsyncRateLimiter):
    """An `AsyncRateLimiter` that skips the script where its answer is known (see above)."""

    def __init__(self, client: Any, config: LimiterConfig) -> None:
        super().__init__(client, config)
        self._unlimited = self.config.qps == 0 and self.config.per_host_qps == 0
        self._stateful: set[str] = set()  # hosts with a penalty or a delay in the store

    async def acquire_many(
        self, hosts: Sequence[str], *, now_us: int | None = None
    ) -> list[Grant]:
        if not self._unlimited or now_us is not None:
            return await super().acquire_many(hosts, now_us=now_us)
        ask = [h for h in hosts if h in self._stateful]
        if not ask:
            return [_GO] * len(hosts)
        answers = iter(await super().acquire_many(ask))
        return [next(answers) if h in self._stateful else _GO for h in hosts]

    async def penalize(self, host: str, retry_after: float | None = None, *,
                       jitter: float | None = None, now_us: int | None = None) -> float:
        self._stateful.add(host)
        return await super().penalize(host, retry_after, jitter=jitter, now_us=now_us)

    async def set_host_delay(self, host: str, delay: float, duration: float, *,
                             now_us: int | None = None) -> None:
        self._stateful.add(host)
        await super().set_host_delay(host, delay, duration, now_us=now_us)
