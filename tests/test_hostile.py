"""Hostile servers: every behaviour ends as a classified result within the timeouts, on both
engines, and neither the engine nor the runner that drives it goes down.

The guarantee (README, "Hostile servers"): whatever a server does, `Engine.fetch` returns one
FetchResult within `timeout` (+ scheduling slack), with an error class or an HTTP status; its
record is JSON-safe; the engine keeps serving; memory stays within the body cap.

Case -> test (`engines::` = test_engines.py; those cases are not repeated here):

    slow-loris body, a byte at a time      engines::test_total_timeout_on_a_dripping_server
    slow-loris header line                 test_hostile_error[slow-loris-headers]
    slow-loris chunk-size line             test_hostile_error[slow-loris-chunk-size]
    endless body (chunked, no length)      test_hostile_error[endless-body],
                                           test_endless_body_memory_bounded
    body larger than the cap (with length) engines::test_too_large_body
    decompression (gzip) bomb              engines::test_gzip_bomb_capped_with_bounded_memory
    redirect loop                          engines::test_too_many_redirects
    redirect to a private address (SSRF)   engines::test_redirect_into_a_blocked_network_refused
      ... spelled ::ffff:, ::1, 0.0.0.0,
          in decimal or in hex             test_redirect_to_private_spellings
    broken chunked encoding                test_hostile_error[broken-chunked]
    connection reset before any response   test_hostile_error[reset-before-response]
    clean close before any response        test_hostile_error[close-before-response]
    reset in the middle of the body        engines::test_connection_dropped_mid_body
    not HTTP at all (an SSH banner)        test_hostile_error[not-http]
    1 MiB header line / 1 MiB of headers   test_hostile_error[huge-header-line|many-headers]
    invalid / unknown charset              test_odd_headers_are_results[*charset*]
    non-UTF-8 bytes in Content-Type        test_odd_headers_are_results[latin1-content-type]
    non-UTF-8 / UTF-8 bytes in Location    test_odd_headers_are_results[*-location]
    TLS: self-signed certificate           engines::test_tls_self_signed_refused_when_verifying
    TLS: plain HTTP on an https:// port    test_hostile_error[plain-http-on-https]
    TLS: handshake reset                   test_hostile_error[tls-handshake-reset]
    TLS: handshake never answered          test_hostile_error[tls-handshake-silent]
    accepts TCP, never answers             engines::test_timeout_on_a_silent_server
    TLS failing on every new connection    test_tls_failures_reuse_one_context (memory)
    a crawl over many host names           test_guard_dns_cache_bounded (memory)
    all of them at once, engine survives   test_engine_survives_everything_at_once
    all of them through the runner         test_runner_one_record_per_url
"""

from __future__ import annotations

import asyncio
import random
import time
import tracemalloc
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import fakeredis
import pytest
import urllib3.connection
from httpserver import PAGE, HTTPServer
from rawserver import TLS_HANG, TLS_RESET, RawServer

from crawler.engines import FetchConfig, make_engine
from crawler.guard import DNS_CACHE_MAX, Guard
from crawler.ratelimit import AsyncRateLimiter, LimiterConfig
from crawler.records import RETRYABLE_ERRORS, ErrorClass, FetchResult, Record
from crawler.retry import RetryPolicy
from crawler.runner import BatchRunner, RunnerOptions
from crawler.store import ResultStore

MODES = ["async", "threads"]
both = pytest.mark.parametrize("mode", MODES)
# A hung fetch thread would also hang the engine's close: the "thread" method dumps every
# stack and ends the run instead of waiting forever.
pytestmark = pytest.mark.timeout(60, method="thread")

TIMEOUT = 1.0  # s, the total budget of one attempt: every case must end within it...
SLACK = 3.0  # s ...plus this, for a loaded 2-core machine (never a tight timing assertion)
MAX_BYTES = 256 * 1024
E = ErrorClass


def config(**overrides: Any) -> FetchConfig:
    """Small timeouts; read_timeout well above the raw server's 0.2 s drip, so only the total
    budget can end a slow-loris."""
    base: dict[str, Any] = {
        "concurrency": 32,
        "timeout": TIMEOUT,
        "connect_timeout": 0.5,
        "read_timeout": 0.8,
        "max_bytes": MAX_BYTES,
        "allow_private_networks": True,
        "dns_ttl": 10,
    }
    return FetchConfig(**(base | overrides))


# --- the servers (one set for the module: starting them is most of a case's cost) -----------


class Servers:
    """Every hostile server on its own 127.0.0.x address; `url(kind, path)` names a case."""

    def __init__(self) -> None:
        self.http = HTTPServer("127.0.0.2")
        self.raw = RawServer("127.0.0.3")
        self.tls_reset = RawServer("127.0.0.4", on_connect=TLS_RESET)
        self.tls_hang = RawServer("127.0.0.5", on_connect=TLS_HANG)
        self.all = [self.http, self.raw, self.tls_reset, self.tls_hang]

    def url(self, kind: str, path: str) -> str:
        if kind == "http":
            return self.http.url(path)
        if kind == "plain-as-tls":  # a plain HTTP server behind an https:// URL
            return self.http.url(path).replace("http://", "https://", 1)
        if kind == "raw":
            return self.raw.url(path)
        return {"tls-reset": self.tls_reset, "tls-hang": self.tls_hang}[kind].url(
            path, scheme="https"
        )


@pytest.fixture(scope="module")
def servers() -> Iterator[Servers]:
    s = Servers()
    try:
        for srv in s.all:
            srv.start()
        s.http.set_route("/charset-unknown", PAGE, content_type="text/html; charset=x-no-such")
        s.http.set_route("/charset-broken", PAGE, headers={"Content-Type": 'Text/HTML; charset="'})
        s.http.set_route("/café", PAGE, content_type="text/html")
        yield s
    finally:
        for srv in s.all:
            srv.stop()


# (kind, path, error class) of every case that must end as an error.
ERRORS = [
    pytest.param("raw", "/slow-headers", E.TIMEOUT, id="slow-loris-headers"),
    pytest.param("raw", "/slow-chunk-size", E.TIMEOUT, id="slow-loris-chunk-size"),
    pytest.param("http", "/endless", E.TOO_LARGE, id="endless-body"),
    pytest.param("raw", "/broken-chunked", E.CONNECTION, id="broken-chunked"),
    pytest.param("raw", "/reset", E.CONNECTION, id="reset-before-response"),
    pytest.param("raw", "/close", E.CONNECTION, id="close-before-response"),
    pytest.param("raw", "/garbage-status", E.CONNECTION, id="not-http"),
    pytest.param("raw", "/huge-header", E.CONNECTION, id="huge-header-line"),
    pytest.param("raw", "/many-headers", E.CONNECTION, id="many-headers"),
    pytest.param("plain-as-tls", "/ok", E.TLS, id="plain-http-on-https"),
    pytest.param("tls-reset", "/", E.CONNECTION, id="tls-handshake-reset"),
    pytest.param("tls-hang", "/", E.TIMEOUT, id="tls-handshake-silent"),
]

# (kind, path, status, content_type, final path) of odd headers that are still results.
RESULTS = [
    pytest.param("http", "/charset-unknown", 200, "text/html", None, id="unknown-charset"),
    pytest.param("http", "/charset-broken", 200, "text/html", None, id="broken-charset"),
    pytest.param("raw", "/latin1-content-type", 200, "text/h?ml", None, id="latin1-content-type"),
    # Location bytes that are not UTF-8: percent-encoded byte by byte, as browsers do.
    pytest.param("raw", "/latin1-location", 404, None, "/caf%E9?q=%FF", id="latin1-location"),
    # UTF-8 Location bytes: the same URL from both engines (no Latin-1 mojibake).
    pytest.param(
        "http", "/redirect-to?url=/caf%C3%A9", 200, "text/html", "/caf%C3%A9", id="utf8-location"
    ),
]


async def timed_fetch(mode: str, url: str, **overrides: Any) -> tuple[FetchResult, float]:
    """The result and the wall time of fetch() alone (engine start and close excluded)."""
    async with make_engine(mode, config(**overrides)) as engine:
        started = time.monotonic()
        res = await engine.fetch(url)
        return res, time.monotonic() - started


def assert_json_safe(res: FetchResult) -> None:
    """The record of any result serializes: a store write can never fail on it."""
    Record.from_result(res, attempts=1).to_json()


# --- one case at a time -------------------------------------------------------------------


@both
@pytest.mark.parametrize(("kind", "path", "error"), ERRORS)
async def test_hostile_error(
    mode: str, kind: str, path: str, error: ErrorClass, servers: Servers
) -> None:
    res, wall = await timed_fetch(mode, servers.url(kind, path))
    assert (res.status, res.error) == (None, error), res.error_detail
    assert (res.bytes, res.body) == (0, None)
    assert res.error_detail
    assert wall < TIMEOUT + SLACK
    assert_json_safe(res)


@both
@pytest.mark.parametrize(("kind", "path", "status", "content_type", "final_path"), RESULTS)
async def test_odd_headers_are_results(
    mode: str, kind: str, path: str, status: int, content_type: str | None,
    final_path: str | None, servers: Servers,
) -> None:  # fmt: skip
    res, wall = await timed_fetch(mode, servers.url(kind, path))
    assert (res.status, res.error, res.content_type) == (status, None, content_type)
    if final_path is not None:
        assert res.final_url == servers.url(kind, final_path)
        assert res.redirects == 1
    assert wall < TIMEOUT + SLACK
    assert_json_safe(res)


@both
@pytest.mark.parametrize(
    ("host", "error"),
    [
        pytest.param("[::ffff:127.0.0.3]", E.BLOCKED_ADDRESS, id="ipv4-mapped"),
        pytest.param("[::1]", E.BLOCKED_ADDRESS, id="ipv6-loopback"),
        pytest.param("0.0.0.0", E.BLOCKED_ADDRESS, id="unspecified"),
        pytest.param("2130706435", E.INVALID_URL, id="decimal"),
        pytest.param("0x7f.0.0.3", E.INVALID_URL, id="hex"),
    ],
)
async def test_redirect_to_private_spellings(
    mode: str, host: str, error: ErrorClass, servers: Servers
) -> None:
    # Given an allowed server that redirects to another spelling of a private address
    before = servers.raw.connections
    url = servers.http.url(f"/redirect-to?url=http://{host}:{servers.raw.port}/ok")
    # When the crawler, refusing private networks but 127.0.0.2, fetches it
    res, _ = await timed_fetch(
        mode, url, allow_private_networks=False, allowed_networks=("127.0.0.2/32",)
    )
    # Then the hop is refused before any connection is made (an unusable Location is no hop)
    assert (res.status, res.error) == (None, error)
    assert res.redirects == (1 if error == E.BLOCKED_ADDRESS else 0)
    assert servers.raw.connections == before


@both
async def test_endless_body_memory_bounded(mode: str, servers: Servers) -> None:
    async with make_engine(mode, config(timeout=10.0, keep_body=True)) as engine:
        await engine.fetch(servers.http.url("/ok"))  # warm up: connection, imports
        tracemalloc.start()
        try:
            res = await engine.fetch(servers.http.url("/endless"))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert res.error == E.TOO_LARGE
    assert peak < 3 * MAX_BYTES + (4 << 20)  # the cap plus buffers, whatever the body


async def test_tls_failures_reuse_one_context(
    servers: Servers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Thread engine: a host whose TLS fails costs a new connection per fetch; each used to
    build a context and parse certifi's whole bundle again (CPU, and an RSS that crept)."""
    built: list[object] = []
    wrapped: list[object] = []
    real_build, real_wrap = (
        urllib3.connection.create_urllib3_context,
        urllib3.connection.ssl_wrap_socket,
    )

    def build(*args: Any, **kwargs: Any) -> Any:
        built.append(args)
        return real_build(*args, **kwargs)

    def wrap(*args: Any, **kwargs: Any) -> Any:
        wrapped.append(kwargs.get("ca_certs"))
        return real_wrap(*args, **kwargs)

    monkeypatch.setattr(urllib3.connection, "create_urllib3_context", build)
    monkeypatch.setattr(urllib3.connection, "ssl_wrap_socket", wrap)
    async with make_engine("threads", config()) as engine:
        results = [await engine.fetch(servers.url("plain-as-tls", f"/ok?{i}")) for i in range(5)]
    assert {r.error for r in results} == {E.TLS}
    assert (built, wrapped) == ([], [None] * 5)  # five handshakes, one shared context


def test_guard_dns_cache_bounded() -> None:
    """Per-host state: the thread engine's checked-answer cache over a crawl of many names."""

    class AnyName:
        async def resolve(self, host: str, port: int) -> list[str]:
            return self.resolve_sync(host, port)

        def resolve_sync(self, host: str, port: int) -> list[str]:
            return ["93.184.216.34"]  # a public address: allowed, never contacted here

    guard = Guard(AnyName(), allow_private=False, cache_ttl=300)
    for i in range(3 * DNS_CACHE_MAX):
        assert guard.resolve_sync(f"host{i}.test", 80) == ["93.184.216.34"]
    assert 0 < len(guard._cache) <= DNS_CACHE_MAX
    assert (f"host{3 * DNS_CACHE_MAX - 1}.test", 80) in guard._cache  # the newest is kept


# --- all at once ---------------------------------------------------------------------------


def hostile_urls(servers: Servers) -> dict[str, ErrorClass | int]:
    """URL -> the error class (or status) it must end with."""
    want: dict[str, ErrorClass | int] = {}
    for p in ERRORS:
        kind, path, error = p.values
        want[servers.url(kind, path)] = error
    for p in RESULTS:
        kind, path, status, _, _ = p.values
        want[servers.url(kind, path)] = status
    return want


def outcome(res: FetchResult | dict[str, Any]) -> ErrorClass | int | None:
    if isinstance(res, dict):
        return E(res["error"]) if res["error"] else res["status"]
    return res.error if res.error is not None else res.status


@both
async def test_engine_survives_everything_at_once(mode: str, servers: Servers) -> None:
    # Given every hostile URL and some good pages, fetched concurrently by one engine
    want = hostile_urls(servers)
    good = [servers.http.url(f"/page/{i}") for i in range(20)]
    async with make_engine(mode, config()) as engine:
        started = time.monotonic()
        results = await asyncio.gather(*(engine.fetch(u) for u in [*want, *good]))
        wall = time.monotonic() - started
        # Then each ends as expected, within one budget (they run side by side)...
        got = {r.url: outcome(r) for r in results}
        assert got == want | dict.fromkeys(good, 200)
        assert wall < TIMEOUT + SLACK
        # ...and the engine still serves.
        after = await engine.fetch(servers.http.url("/ok"))
    assert (after.status, after.bytes) == (200, len(PAGE))


async def batches(urls: Sequence[str], size: int = 10) -> AsyncIterator[Sequence[str]]:
    for i in range(0, len(urls), size):
        yield urls[i : i + size]


@both
async def test_runner_one_record_per_url(mode: str, servers: Servers) -> None:
    # Given a runner (fakeredis limiter and store) over hostile URLs mixed with good pages
    want = hostile_urls(servers)
    good = [servers.http.url(f"/page/{i}") for i in range(40)]
    urls = [*want, *good]
    random.Random(5).shuffle(urls)  # hostile ones spread among the good, the same every run
    redis = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
    store = ResultStore(redis, "hostile")
    policy = RetryPolicy(retries=1, backoff=0.01)
    async with make_engine(mode, config()) as engine:
        runner = BatchRunner(
            engine, AsyncRateLimiter(redis, LimiterConfig()),
            RunnerOptions(concurrency=16, policy=policy, worker="w"),
        )  # fmt: skip
        # When it runs them all
        stats = await runner.run(batches(urls), store)
    # Then every URL has exactly one record: good pages ok, hostile ones classified
    records: dict[str, dict[str, Any]] = {}
    async for rec in store.iter_records():
        assert rec["url"] not in records, f"two records for {rec['url']}"
        records[rec["url"]] = rec
    assert set(records) == set(urls)
    assert all(records[u]["ok"] for u in good)
    assert {u: outcome(records[u]) for u in want} == want
    # Retryable failures were tried twice, the others once.
    for u, expected in want.items():
        assert records[u]["attempts"] == (2 if expected in RETRYABLE_ERRORS else 1), u
    assert stats.done == len(urls)
    assert stats.ok == len(good) + sum(1 for v in want.values() if v == 200)
