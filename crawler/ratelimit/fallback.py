"""Keep pacing when Redis is away: a conservative local limiter instead of failing open.

`FallbackLimiter` forwards to the shared limiter. When Redis does not answer, it says so once
and decides locally, with the same scripts run by an in-process fakeredis (so the same GCRA,
penalties and slow-down), at a `share` of the configured rates: with `share = 1/N` for N live
workers, N workers that all lost Redis together still stay within the global and per-host
limits. It tries Redis again every `retry_every` seconds and says once when it is back.

Penalties recorded while on the local limiter stay local; the local rates are already a
fraction of the shared ones. A rate of 0 (no limit) stays 0: the fallback never invents a limit
the job did not ask for.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

from crawler.errors import BackendUnavailable
from crawler.outage import Outage
from crawler.ratelimit import AsyncRateLimiter, Grant, LimiterConfig

RETRY_EVERY = 1.0  # s between attempts to return to the shared limiter


def local_config(config: LimiterConfig, share: float) -> LimiterConfig:
    """`config` with both rates scaled by `share` (0 < share <= 1) and bursts no larger."""
    share = min(max(share, 1e-6), 1.0)
    return dataclasses.replace(
        config,
        qps=config.qps * share,
        per_host_qps=config.per_host_qps * share,
        burst=int(config.burst * share),
        per_host_burst=int(config.per_host_burst * share),
    )


class FallbackLimiter:
    """An `AsyncRateLimiter` look-alike that survives the loss of its Redis."""

    def __init__(
        self,
        remote: AsyncRateLimiter,
        share: Callable[[], float] = lambda: 1.0,
        *,
        retry_every: float = RETRY_EVERY,
    ) -> None:
        self.remote = remote
        self.config = remote.config
        self.share = share
        self.retry_every = retry_every
        self._local: AsyncRateLimiter | None = None
        self._local_share = 0.0
        self._next_try = 0.0
        # The same bookkeeping as the Redis clients: one line when the shared limiter goes, one
        # when it is back for good (a restarting Redis answers a few calls in between).
        self.outage = Outage(
            "shared rate limiter",
            down="%s unavailable (%s: %s); pacing locally",
            back="%s is back after %.1f s")
        self.fallbacks = 0  # times the local limiter took over (tests, stats)

    @property
    def calls(self) -> int:
        return self.remote.calls + (self._local.calls if self._local else 0)

    @property
    def degraded(self) -> bool:
        return self.outage.is_down.is_set()

    async def acquire_many(self, hosts: Sequence[str]) -> list[Grant]:
        if self._remote_worth_trying():
            started = time.monotonic()
            try:
                grants = await self.remote.acquire_many(hosts)
            except BackendUnavailable as exc:
                self._went_down(exc)
            else:
                self.outage.succeeded(started)
                return grants
        return await self._fallback().acquire_many(hosts)

    async def acquire(self, host: str) -> Grant:
        return (await self.acquire_many([host]))[0]

    async def penalize(self, host: str, retry_after: float | None = None) -> float:
        if self._remote_worth_trying():
            started = time.monotonic()
            try:
                left = await self.remote.penalize(host, retry_after)
            except BackendUnavailable as exc:
                self._went_down(exc)
            else:
                self.outage.succeeded(started)
                return left
        return await self._fallback().penalize(host, retry_after)

    async def set_host_delay(self, host: str, delay: float, duration: float) -> None:
        """Set on the shared limiter, and on the local one too while Redis is away."""
        if self._remote_worth_trying():
            started = time.monotonic()
            try:
                await self.remote.set_host_delay(host, delay, duration)
            except BackendUnavailable as exc:
                self._went_down(exc)
            else:
                self.outage.succeeded(started)
                return
        await self._fallback().set_host_delay(host, delay, duration)

    # --- state --------------------------------------------------------------------------------

    def _remote_worth_trying(self) -> bool:
        return not self.degraded or time.monotonic() >= self._next_try

    def _went_down(self, exc: BaseException) -> None:
        self._next_try = time.monotonic() + self.retry_every
        if not self.degraded:
            self.fallbacks += 1
            self.outage.down_message = ("%s unavailable (%s: %s); pacing locally at "
                                        f"{100 * self.share():.0f} %% of the job's rates")
        self.outage.failed(exc.__cause__ or exc)

    def _fallback(self) -> AsyncRateLimiter:
        share = self.share()
        if self._local is None or share != self._local_share:
            import fakeredis

            # The same scripts on a private in-process server: identical decisions, no network.
            client: Any = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
            self._local = AsyncRateLimiter(client, local_config(self.config, share))
            self._local_share = share
        return self._local
