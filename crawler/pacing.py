"""How late a granted request may start, and a one-off wait for a limiter slot.

The dispatcher asks the limiter for many URLs at once; requests that do not go through it
(robots.txt, redirect hops) take their slot with `polite_wait`.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque

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


LEASE_PERIOD = 0.02  # s of this process's own demand one limiter call reserves (global limit)
LEASE_LOW = 0.01  # s: ask at once when the reserved slots would run out within this
RATE_WINDOW = 0.25  # s over which the process's grant rate (its demand) is counted


class PacedLease:
    """When to ask the limiter under a global limit: demand-sized batches (paced leases).

    Without it a process at its share of a high global rate asks once per finished fetch,
    one slot at a time: a script call per request. Here it waits until `size` slots are free,
    `size` being its grant rate over the last RATE_WINDOW times LEASE_PERIOD (its own demand,
    so a busy and an idle process on one limiter each ask about every LEASE_PERIOD; at most a
    quarter of its slots), and asks for them in one call. The slots of one call are
    consecutive in the global bucket (one atomic script) and each is started at its own
    instant, so arrivals keep the limit's spacing; the host buckets are checked in the same
    call and never leased. A process whose reserved slots run out within LEASE_LOW asks at
    once for whatever is free, so the wait never idles it.
    No global limit (or `period` 0): ask whenever a slot is free, as before.
    """

    def __init__(self, *, period: float, concurrency: int, enabled: bool) -> None:
        self.enabled = enabled and period > 0
        self.period = period
        self.cap = max(1, concurrency // 4)  # leave most slots free to be asked for
        self.last_due = 0.0  # loop time of the latest reserved slot
        self._recent: deque[tuple[float, int]] = deque()  # (when, slots granted) in the window
        self._recent_sum = 0
        self._rate = 0.0  # grants/s over the last RATE_WINDOW

    def size(self) -> int:
        """How many free slots to wait for before asking (1 when demand is low)."""
        return min(self.cap, max(1, math.ceil(self._rate * self.period)))

    def should_ask(self, free: int, queued: int, now: float) -> bool:
        if not self.enabled or free >= min(self.size(), queued):
            return True
        return self.last_due - now < LEASE_LOW

    def recheck_at(self) -> float | None:
        """Loop time at which the reserved slots run low (None: nothing to wait for)."""
        return self.last_due - LEASE_LOW if self.enabled else None

    def granted(self, count: int, due: float, now: float) -> None:
        """Count `count` slots granted now, the latest starting at loop time `due`."""
        self.last_due = max(self.last_due, due)
        if not self.enabled:
            return
        recent = self._recent
        recent.append((now, count))
        self._recent_sum += count
        while recent[0][0] < now - RATE_WINDOW:
            self._recent_sum -= recent.popleft()[1]
        first_at, first = recent[0]
        if now > first_at:  # the grants since the window's first call, over that time
            self._rate = (self._recent_sum - first) / (now - first_at)
        else:  # one call so far: as if it were one period's demand
            self._rate = self._recent_sum / self.period
