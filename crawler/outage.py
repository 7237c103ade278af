"""Riding out a Redis outage: retry every command with capped back-off, and say so once.

A worker must survive a Redis restart, a failover or a network cut without losing a batch,
and without a log line per command per retry. `PatientRetry` is redis-py's retry hook (each
connection calls it around every command and pipeline), so every caller of the client waits
for Redis the same way instead of each growing its own loop. On every failure redis-py drops
the connection first, so the next attempt reconnects: that is also what a `READONLY` answer
after a failover needs (the old master became a replica; a fresh connection, through a
Sentinel pool or a moved address, reaches the new master).

One `Outage` per client holds the shared state: the first failure logs one warning, the first
success after it logs one "back" line with the outage's length. `up_for()` tells the worker's
reaper how long the connection has been healthy, so it never reaps leases that their live
owners had no chance to renew while Redis was away.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    ConnectionError,
    ReadOnlyError,
    RedisError,
    TimeoutError,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

# Errors worth waiting out. BusyLoadingError (Redis replaying its AOF) is a ConnectionError.
TRANSIENT: tuple[type[RedisError], ...] = (ConnectionError, TimeoutError, ReadOnlyError)
# ConnectionErrors that no wait cures: a wrong password is said at once, not retried forever.
REFUSED: tuple[type[RedisError], ...] = (AuthenticationError, AuthorizationError)
BACKOFF_BASE = 0.05  # s: the first retry comes quickly (a blip)...
BACKOFF_CAP = 5.0  # s: ...later ones at most this far apart (a restart takes seconds)
SETTLE = 1.0  # s of answers without a failure before an outage counts as over
DOWN = f"Redis at %s unreachable (%s: %s); retrying with back-off up to {BACKOFF_CAP:.0f} s apart"
BACK = "Redis at %s is back after %.1f s"


class Outage:
    """Whether Redis is reachable, as seen by one client; logs one line per outage each way.

    A Redis that is shutting down (or flapping) may answer a few calls between failures; those
    belong to the same outage. It is over, and said to be, at the first answer `settle`
    seconds after answers resumed with no failure in between.
    """

    def __init__(self, where: str, *, settle: float = SETTLE, down: str = DOWN,
                 back: str = BACK) -> None:
        self.where = where  # already masked: this string is logged
        self.settle = settle
        self.down_message = down  # %-format with (where, error type, error detail)
        self.back_message = back  # %-format with (where, seconds)
        self.down_since: float | None = None  # start of the outage under way
        self.last_failure = float("-inf")
        self.resumed: float | None = None  # first answer after the last failure
        self.up_since = float("-inf")  # answers resumed (no outage yet: -inf)
        self.outages = 0  # completed outages, for tests and status
        self.failures = 0  # failed attempts in all
        self.aborted = threading.Event()  # set at shutdown: waiting callers give up
        self.is_down = threading.Event()  # set while failing: tests and callers can wait on it

    def failed(self, error: BaseException) -> None:
        self.failures += 1
        self.last_failure = time.monotonic()
        self.resumed = None
        self.is_down.set()
        if self.down_since is None:
            self.down_since = self.last_failure
            detail = str(error).splitlines()[0] if str(error) else ""
            log.warning(self.down_message, self.where, type(error).__name__, detail)

    def succeeded(self, attempt_started: float) -> None:
        """A call that began at `attempt_started` got its answer. One that began before the
        last failure proves nothing (its reply may have left just before the cut)."""
        if self.down_since is None or attempt_started < self.last_failure:
            return
        now = time.monotonic()
        if self.resumed is None:
            self.resumed = self.up_since = now
            self.is_down.clear()
        if now - self.resumed >= self.settle:
            log.warning(self.back_message, self.where, self.resumed - self.down_since)
            self.down_since = self.resumed = None
            self.outages += 1

    def up_for(self) -> float:
        """Seconds since answers resumed after the last failure (0 while failing, inf if
        there was never a failure)."""
        if self.is_down.is_set():
            return 0.0
        return time.monotonic() - self.up_since

    def __deepcopy__(self, memo: dict[int, Any]) -> Outage:
        return self  # redis-py deep-copies the retry per connection: the state stays shared


class PatientRetry(Retry):
    """Retries transient errors until Redis answers, `give_up_after` passes or shutdown.

    `give_up_after=None` waits forever (workers: a batch must not fail because Redis
    restarted); the CLI gives up after a bound and prints one line.
    """

    def __init__(self, outage: Outage, *, give_up_after: float | None = None) -> None:
        super().__init__(ExponentialWithJitterBackoff(cap=BACKOFF_CAP, base=BACKOFF_BASE),
                         -1, TRANSIENT)
        self.outage = outage
        self.give_up_after = give_up_after

    def __deepcopy__(self, memo: dict[int, Any]) -> PatientRetry:
        return self

    __hash__ = Retry.__hash__

    async def call_with_retry(  # type: ignore[override]
        self,
        do: Callable[[], Awaitable[T]],
        fail: Callable[..., Any],
        is_retryable: Callable[[Exception], bool] | None = None,
        with_failure_count: bool = False,
    ) -> T:
        failures = 0
        started = time.monotonic()
        while True:
            attempt = time.monotonic()
            try:
                result = await do()
            except self._supported_errors as error:
                if not worth_retrying(error, is_retryable):
                    raise
                failures += 1
                # redis-py's handler drops the connection: the next attempt reconnects.
                await (fail(error, failures) if with_failure_count else fail(error))
                self.outage.failed(error)
                waited = time.monotonic() - started
                if self.outage.aborted.is_set() or (
                    self.give_up_after is not None and waited >= self.give_up_after
                ):
                    raise
                await asyncio.sleep(self._backoff.compute(failures))
            else:
                self.outage.succeeded(attempt)
                return result


class RetryOnce(Retry):
    """One immediate retry on a fresh connection, for clients that must fail fast: after a
    Redis restart every pooled connection fails once, which is no outage. A refused
    password is not retried."""

    def __init__(self) -> None:
        super().__init__(NoBackoff(), 1, TRANSIENT)

    __hash__ = Retry.__hash__

    async def call_with_retry(  # type: ignore[override]
        self,
        do: Callable[[], Awaitable[T]],
        fail: Callable[..., Any],
        is_retryable: Callable[[Exception], bool] | None = None,
        with_failure_count: bool = False,
    ) -> T:
        return await super().call_with_retry(
            do, fail, lambda error: worth_retrying(error, is_retryable), with_failure_count)


def worth_retrying(error: Exception, is_retryable: Callable[[Exception], bool] | None) -> bool:
    """A transient error, unless it is a refusal (no wait cures it) or the caller says no."""
    return not isinstance(error, REFUSED) and (is_retryable is None or is_retryable(error))
