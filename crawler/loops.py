"""Event loops: uvloop where it is installed (Linux, macOS), else asyncio's own.

uvloop cuts the event loop's share of CPU per fetch roughly in half; nothing in the crawler
depends on it, so it stays an optimisation, not a requirement.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

try:
    import uvloop

    loop_factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    LOOP_NAME = "uvloop"
except ImportError:  # pragma: no cover - platforms without uvloop
    loop_factory = asyncio.new_event_loop
    LOOP_NAME = "asyncio"


def new_loop() -> asyncio.AbstractEventLoop:
    return loop_factory()


def runner() -> asyncio.Runner:
    return asyncio.Runner(loop_factory=loop_factory)


def run(coro: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run` on the fastest loop available."""
    with runner() as r:
        return r.run(coro)
