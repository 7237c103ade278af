"""A process-wide pool of fetch slots shared by every batch running in that process.

A worker runs several batches at once on one event loop; their in-flight requests together
must stay within the worker's concurrency. A slot is taken *before* the limiter is asked,
so a reserved rate-limit slot is never left waiting behind a full engine (a late request
bunched with on-time ones would break the window bound).

Per-host fairness: slots taken per host are counted too, and no host may hold more than
`host_cap` of them (by default half the pool) while another host holds slots or has URLs in
line, so one slow host (long responses, timeouts) never occupies every slot while other hosts
have work; a crawl of one site alone still uses every slot.
"""

from __future__ import annotations

import asyncio
from collections import Counter


class Slots:
    """Counts in-flight fetches against a capacity; wakes waiting dispatchers on release."""

    def __init__(self, capacity: int, host_cap: int = 0) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self.host_cap = host_cap if host_cap > 0 else max(1, capacity // 2)
        self.used = 0
        self.by_host: Counter[str] = Counter()
        self._listeners: set[asyncio.Event] = set()

    @property
    def free(self) -> int:
        return self.capacity - self.used

    def host_full(self, host: str) -> bool:
        return self.by_host[host] >= self.host_cap

    def alone(self) -> bool:
        """At most one host holds slots: a share protects nobody (see `_Run._overflow`)."""
        return len(self.by_host) <= 1

    def take(self, host: str = "") -> None:
        self.used += 1
        self.by_host[host] += 1

    def release(self, host: str = "") -> None:
        self.used -= 1
        left = self.by_host[host] - 1
        if left > 0:
            self.by_host[host] = left
        else:
            del self.by_host[host]
        for event in self._listeners:
            event.set()

    def listen(self, event: asyncio.Event) -> None:
        self._listeners.add(event)

    def unlisten(self, event: asyncio.Event) -> None:
        self._listeners.discard(event)
