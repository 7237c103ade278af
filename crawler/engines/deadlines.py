"""Total-time budgets for many in-flight asyncio fetches, on one timer per tick.

`asyncio.timeout()` per request costs a Timeout object, a timer handle and a heap push and
pop (about 2.8 us on uvloop, 2-3 % of a fetch's CPU at thousands of pages/s). Here a fetch
costs a set add and discard; attempts due in the same tick share one timer. A budget runs
out at most one tick late, and ticks are a twentieth of the budget (at most 50 ms).

Expiry cancels the fetch's task, as asyncio.timeout does, and remembers why, so the
engine can tell its own deadline from an outside cancellation (a stop): see `expired`.
"""

from __future__ import annotations

import asyncio
import math

MAX_TICK = 0.05  # s


class Deadlines:
    """Budgets of the tasks of one event loop, bucketed by the tick they run out in."""

    def __init__(self, budget: float) -> None:
        self.budget = budget
        self.tick = min(MAX_TICK, max(budget / 20, 0.001))
        self._buckets: dict[int, set[asyncio.Task[object]]] = {}
        self._expired: set[asyncio.Task[object]] = set()

    def start(self, task: asyncio.Task[object], loop: asyncio.AbstractEventLoop) -> int:
        """Give `task` `budget` seconds from now; returns the key `finish` needs."""
        key = math.ceil((loop.time() + self.budget) / self.tick)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = set()
            loop.call_at(key * self.tick, self._fire, key)
        bucket.add(task)
        return key

    def finish(self, task: asyncio.Task[object], key: int) -> None:
        """The task's fetch ended (any way): its budget no longer applies."""
        bucket = self._buckets.get(key)
        if bucket is not None:
            bucket.discard(task)
        self._expired.discard(task)

    def expired(self, task: asyncio.Task[object]) -> bool:
        """Whether a CancelledError in `task` came from its budget running out."""
        return task in self._expired

    def _fire(self, key: int) -> None:
        for task in self._buckets.pop(key, ()):
            self._expired.add(task)
            task.cancel()
