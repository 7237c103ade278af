"""How late a granted request may start, and a one-off wait for a limiter slot.

The dispatcher asks the limiter for many URLs at once; requests that do not go through it
(robots.txt, redirect hops) take their slot with `polite_wait`.
"""

from __future__ import annotations

import asyncio

from crawler.ratelimit import AsyncRateLimiter, Decision, LimiterConfig
from crawler.ratelimit.fallback import FallbackLimiter

MIN_RETRY_GAP = 0.001  # s: a timer never fires in the past, so the dispatcher cannot spin
MIN_LATENESS = 0.002  # s: below this, ordinary timer jitter would drop slots needlessly
MAX_LATENESS = 0.02  # s: above this, a late request could bunch with several others


HOST_LATENESS = 0.003  # s: same-host gaps stay within a few ms of the per-host interval


def lateness_allowance(config: LimiterConfig) -> float | None:
    """How late a granted request may start before it gives its slot up (None: no limit).

    Global limit: a quarter of its interval, clamped to [2, 20] ms. Arrivals stay within
    R*W + B + 1 in any window W as long as the lateness allowed here plus the time from this
    check to the server (a new connection's handshake, a busy machine) stays under one
    interval; a quarter leaves three quarters for the latter (15 ms at R = 50, where a half
    measured over-runs at job start, when every worker opens its connections at once).
    Per-host limit: 3 ms, so two requests to one host are never closer than the interval
    minus a few ms (a re-asked slot is cheap at per-host rates).
    """
    allowances = []
    if config.qps > 0:
        allowances.append(min(max(0.25 / config.qps, MIN_LATENESS), MAX_LATENESS))
    if config.per_host_qps > 0:
        allowances.append(HOST_LATENESS)
    return min(allowances) if allowances else None


async def polite_wait(limiter: AsyncRateLimiter | FallbackLimiter, host: str) -> None:
    """Take one slot for `host` from the limiter, however long that takes (robots.txt
    requests and redirect hops, which do not go through the dispatcher)."""
    while True:
        grant = (await limiter.acquire_many([host]))[0]
        if grant.granted:
            if grant.wait > 0:
                await asyncio.sleep(grant.wait)
            return
        wait = grant.wait if grant.decision is Decision.DEFER_HOST else min(grant.wait, 1.0)
        await asyncio.sleep(max(wait, MIN_RETRY_GAP))
