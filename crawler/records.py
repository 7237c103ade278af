"""The record contract: one JSON object per URL, plus the closed set of error classes.

Users and tools parse these records, so field names and error class values are a public
contract: add fields, never rename or remove them.
"""

from __future__ import annotations

import builtins
import dataclasses
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import orjson


class ErrorClass(StrEnum):
    """Why a URL produced no HTTP status (or, for extract_failed, no data). An HTTP status
    (even 404) is a result, not an error."""

    TIMEOUT = "timeout"
    CONNECTION = "connection"
    DNS = "dns"
    TLS = "tls"
    TOO_LARGE = "too_large"
    TOO_MANY_REDIRECTS = "too_many_redirects"
    INVALID_URL = "invalid_url"
    BLOCKED_ADDRESS = "blocked_address"
    ROBOTS_DISALLOWED = "robots_disallowed"
    EXTRACT_FAILED = "extract_failed"  # the page was fetched; the job's --extract function failed


# Network failures worth another attempt; the others are deterministic for a given URL.
RETRYABLE_ERRORS = frozenset({ErrorClass.TIMEOUT, ErrorClass.CONNECTION, ErrorClass.DNS})
# Statuses worth another attempt: throttling and transient server trouble.
RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
# Statuses that mean "the host asks everyone to slow down": fed to the shared limiter.
PENALTY_STATUSES = frozenset({429, 503})


@dataclass(slots=True)
class FetchResult:
    """What an engine saw for one attempt at one URL (redirects followed inside the attempt)."""

    url: str
    final_url: str | None = None
    status: int | None = None
    error: ErrorClass | None = None
    error_detail: str | None = None
    bytes: int = 0
    content_type: str | None = None
    redirects: int = 0
    elapsed_ms: float = 0.0
    retry_after: str | None = None  # raw Retry-After header value, parsed by the runner
    body: builtins.bytes | None = None  # decoded body, only when the job keeps bodies
    headers: dict[str, str] | None = None  # names in lower case; only for --extract


@dataclass(slots=True)
class Record:
    """The stored and exported result for one URL of a job: exactly one per URL."""

    url: str
    final_url: str | None
    status: int | None
    ok: bool
    error: str | None
    error_detail: str | None
    attempts: int
    elapsed_ms: float
    bytes: int
    content_type: str | None
    fetched_at: str
    depth: int = 0
    worker: str = ""
    redirects: int = 0
    job: str = ""
    body_stored: bool = False
    method: str = "GET"
    meta: Any = None  # the request's meta, unchanged (crawler.request)
    data: Any = None  # what the job's --extract function returned for this page
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_result(
        cls,
        res: FetchResult,
        *,
        attempts: int,
        depth: int = 0,
        worker: str = "",
        job: str = "",
        fetched_at: str | None = None,
        method: str = "GET",
        meta: Any = None,
    ) -> Record:
        status = res.status
        return cls(
            url=res.url,
            final_url=res.final_url,
            status=status,
            ok=res.error is None and status is not None and 200 <= status < 300,
            error=str(res.error) if res.error is not None else None,
            error_detail=res.error_detail,
            attempts=attempts,
            elapsed_ms=round(res.elapsed_ms, 3),
            bytes=res.bytes,
            content_type=res.content_type,
            fetched_at=fetched_at or utc_now_iso(),
            depth=depth,
            worker=worker,
            redirects=res.redirects,
            job=job,
            method=method,
            meta=meta,
        )

    def to_dict(self) -> dict[str, Any]:
        d = {name: getattr(self, name) for name in _RECORD_FIELDS}
        if self.extra:
            d.update(self.extra)
        return d

    def to_json(self) -> builtins.bytes:
        return orjson.dumps(self.to_dict())


# Field names in declaration order, computed once (to_dict runs for every record).
_RECORD_FIELDS = tuple(f.name for f in dataclasses.fields(Record) if f.name != "extra")

# Column order for CSV export: the contract fields first, in the README's order.
CSV_FIELDS = (
    "url",
    "final_url",
    "status",
    "ok",
    "error",
    "error_detail",
    "attempts",
    "elapsed_ms",
    "bytes",
    "content_type",
    "fetched_at",
    "depth",
    "worker",
    "redirects",
    "job",
    "body_stored",
    "method",
    "meta",  # JSON text in CSV
    "data",  # JSON text in CSV
)
# Columns whose values are any JSON: CSV holds them as JSON text.
CSV_JSON_FIELDS = ("meta", "data")


def status_class(status: int | None) -> str:
    """'2xx'..'5xx' for counters; 'none' when no status was received."""
    if status is None:
        return "none"
    return f"{status // 100}xx"


_second: tuple[int, str] = (-1, "")  # the last whole second formatted, and its text


def utc_now_iso() -> str:
    """'2026-12-03T10:49:16.123Z'. Runs for every record: the date and time of day are
    formatted once per second, only the milliseconds per call."""
    global _second
    now = time.time()
    whole = int(now)
    if whole != _second[0]:
        text = datetime.fromtimestamp(whole, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        _second = (whole, text)
    return f"{_second[1]}.{int((now - whole) * 1000):03d}Z"
