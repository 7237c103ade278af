"""Retry decisions as a table: which results retry, and how long they wait."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from crawler.records import ErrorClass, FetchResult
from crawler.retry import RetryPolicy, parse_retry_after, wants_penalty

NOW = datetime(2026, 11, 25, 12, 0, 0, tzinfo=UTC)
POLICY = RetryPolicy(retries=3, backoff=0.5, backoff_cap=4.0, retry_after_cap=60.0)


def res(status: int | None = None, error: ErrorClass | None = None, ra: str | None = None):
    return FetchResult(url="http://x/", status=status, error=error, retry_after=ra)


@pytest.mark.parametrize(
    ("result", "attempts", "expected"),
    [
        pytest.param(res(200), 1, None, id="200-final"),
        pytest.param(res(404), 1, None, id="404-final"),
        pytest.param(res(500), 1, 0.5, id="500-retry"),
        pytest.param(res(502), 2, 1.0, id="502-second-backoff-doubles"),
        pytest.param(res(504), 3, 2.0, id="504-third"),
        pytest.param(res(503), 4, None, id="retries-exhausted"),
        pytest.param(res(429, ra="7"), 1, 7.0, id="retry-after-seconds"),
        pytest.param(res(429, ra="600"), 1, 60.0, id="retry-after-capped"),
        pytest.param(res(429, ra="Wed, 25 Nov 2026 12:00:09 GMT"), 1, 9.0, id="retry-after-date"),
        pytest.param(res(429, ra="garbage"), 1, 0.5, id="retry-after-bad-uses-backoff"),
        pytest.param(res(error=ErrorClass.TIMEOUT), 1, 0.5, id="timeout-retry"),
        pytest.param(res(error=ErrorClass.CONNECTION), 1, 0.5, id="connection-retry"),
        pytest.param(res(error=ErrorClass.DNS), 1, 0.5, id="dns-retry"),
        pytest.param(res(error=ErrorClass.TLS), 1, None, id="tls-final"),
        pytest.param(res(error=ErrorClass.TOO_LARGE), 1, None, id="too-large-final"),
        pytest.param(res(error=ErrorClass.BLOCKED_ADDRESS), 1, None, id="blocked-final"),
        pytest.param(res(error=ErrorClass.TIMEOUT), 9, None, id="backoff-exhausted"),
    ],
)
def test_delay_table(result: FetchResult, attempts: int, expected: float | None) -> None:
    # rand() = 1.0 shows the top of the full-jitter range.
    assert POLICY.delay(result, attempts, rand=lambda: 1.0, now=NOW) == expected


def test_backoff_is_capped_and_jittered() -> None:
    p = RetryPolicy(retries=20, backoff=0.5, backoff_cap=4.0)
    assert p.delay(res(500), 10, rand=lambda: 1.0) == 4.0
    assert p.delay(res(500), 10, rand=lambda: 0.25) == 1.0
    assert p.delay(res(500), 1, rand=lambda: 0.0) == 0.0


def test_zero_retries_never_retry() -> None:
    assert RetryPolicy(retries=0).delay(res(503), 1) is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None), ("", None), ("0", 0.0), (" 12 ", 12.0), ("-3", None), ("soon", None),
        ("Wed, 25 Nov 2026 11:59:00 GMT", 0.0),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, now=NOW) == expected


def test_penalty_statuses() -> None:
    assert wants_penalty(res(429)) and wants_penalty(res(503))
    assert not wants_penalty(res(500)) and not wants_penalty(res(error=ErrorClass.TIMEOUT))
