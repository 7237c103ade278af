"""A process-wide pool of fetch slots shared by every batch running in that process.

A worker runs several batches at once on one event loop; their in-flight requests together
must stay within the worker's concurrency. A slot is taken *before* the limiter is asked,
so a reserved rate-limit slot is never left waiting behind a full engine (a late request
bunched with on-time ones would break the window bound).
"""

from __future__ import annotations

import asyncio


class Slots:
    """Counts in-flight fetches against a capacity; wakes waiting dispatchers on release."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self.used = 0
        self._listeners: set[asyncio.Event] = set()

    @property
    def free(self) -> int:
        return self.capacity - self.used

    def take(self) -> None:
        self.used += 1

    def release(self) -> None:
        self.used -= 1
        for event in self._listeners:
            event.set()

    def listen(self, event: asyncio.Event) -> None:
        self._listeners.add(event)

    def unlisten(self, event: asyncio.Event) -> None:
        self._listeners.discard(event)
