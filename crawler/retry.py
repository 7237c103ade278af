"""Retry decisions: whether an attempt is worth repeating, and how long to wait first.

Pure functions of their inputs (the random source and the clock are passed in), so the
policy is table-tested without I/O and shared by both engines through the runner.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from crawler.records import PENALTY_STATUSES, RETRYABLE_ERRORS, RETRYABLE_STATUSES, FetchResult


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """Up to `retries` extra attempts; exponential back-off, full jitter; Retry-After honoured."""

    retries: int = 3
    backoff: float = 0.5  # s: base of the exponential back-off
    backoff_cap: float = 30.0  # s: no single back-off is longer
    retry_after_cap: float = 120.0  # s: a server cannot park a URL longer than this

    def is_retryable(self, res: FetchResult) -> bool:
        if res.error is not None:
            return res.error in RETRYABLE_ERRORS
        return res.status in RETRYABLE_STATUSES

    def delay(
        self,
        res: FetchResult,
        attempts: int,
        *,
        rand: Callable[[], float] = random.random,
        now: datetime | None = None,
    ) -> float | None:
        """Seconds to wait before the next attempt, or None when this result is final.

        `attempts` counts the attempts made so far (1 after the first).
        """
        if attempts > self.retries or not self.is_retryable(res):
            return None
        # Full jitter (AWS architecture blog): spreads retries of a failed burst evenly.
        backoff = rand() * min(self.backoff_cap, self.backoff * 2 ** (attempts - 1))
        hinted = parse_retry_after(res.retry_after, now=now)
        if hinted is None:
            return backoff
        return max(backoff, min(hinted, self.retry_after_cap))


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Retry-After as seconds from now: delta-seconds or an HTTP date; None when absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    now = now or datetime.now(UTC)
    return max(0.0, (when - now).total_seconds())


def wants_penalty(res: FetchResult) -> bool:
    """A 429 or 503 asks every worker to slow down on this host, not just this one."""
    return res.error is None and res.status in PENALTY_STATUSES
