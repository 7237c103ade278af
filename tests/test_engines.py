"""Both engines against the local test server: every scenario runs on "async" and "threads"."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
import tracemalloc
from collections.abc import Iterator
from typing import Any

import pytest
from httpserver import PAGE, HTTPServer
from hypothesis import given, settings
from hypothesis import strategies as st

from crawler.engines import AioEngine, FetchConfig, ThreadEngine, make_engine
from crawler.guard import Resolver, StaticResolver, ip_literal
from crawler.records import ErrorClass, FetchResult

MODES = ["async", "threads"]
both = pytest.mark.parametrize("mode", MODES)


def config(**overrides: Any) -> FetchConfig:
    """Short timeouts so the file runs in seconds; private networks allowed (local server)."""
    base: dict[str, Any] = {
        "concurrency": 8,
        "timeout": 3.0,
        "connect_timeout": 1.0,
        "read_timeout": 1.0,
        "max_bytes": 256 * 1024,
        "allow_private_networks": True,
        "dns_ttl": 10,
    }
    return FetchConfig(**(base | overrides))


async def fetch(
    mode: str, url: str, *, resolver: Resolver | None = None, **overrides: Any
) -> FetchResult:
    async with make_engine(mode, config(**overrides), resolver=resolver) as engine:
        return await engine.fetch(url)


@pytest.fixture(autouse=True)
def no_real_dns(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Fail the test if anything asks the system resolver for a name (only literals pass)."""
    real = socket.getaddrinfo
    asked: list[str] = []

    def guarded(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host is not None and ip_literal(str(host)) is None:
            asked.append(str(host))
            raise socket.gaierror(socket.EAI_NONAME, "real DNS is not allowed in tests")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", guarded)
    yield asked
    assert asked == [], f"real DNS lookups attempted: {asked}"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- results --------------------------------------------------------------------------------


@both
async def test_ok(mode: str, http_server: HTTPServer) -> None:
    url = http_server.url("/ok")
    res = await fetch(mode, url)
    assert (res.url, res.final_url, res.status, res.error) == (url, url, 200, None)
    assert res.bytes == len(PAGE)
    assert res.content_type == "text/html"
    assert res.redirects == 0 and res.retry_after is None and res.body is None
    assert res.error_detail is None and res.elapsed_ms > 0


@both
async def test_keep_body(mode: str, http_server: HTTPServer) -> None:
    res = await fetch(mode, http_server.url("/ok"), keep_body=True)
    assert res.body == PAGE


@both
@pytest.mark.parametrize("code", [404, 500, 503])
async def test_http_status_is_a_result_not_an_error(
    mode: str, code: int, http_server: HTTPServer
) -> None:
    res = await fetch(mode, http_server.url(f"/status/{code}"))
    assert (res.status, res.error) == (code, None)
    assert res.content_type == "text/plain"


@both
async def test_retry_after_surfaced(mode: str, http_server: HTTPServer) -> None:
    res = await fetch(mode, http_server.url("/retry-after/7"))
    assert (res.status, res.retry_after) == (429, "7")


@both
@pytest.mark.parametrize("path", ["/gzip", "/deflate", "/deflate-raw"])
async def test_compressed_body_decoded(mode: str, path: str, http_server: HTTPServer) -> None:
    res = await fetch(mode, http_server.url(path), keep_body=True)
    assert (res.status, res.body, res.bytes) == (200, PAGE, len(PAGE))


@both
async def test_unknown_encoding_counted_raw(mode: str, http_server: HTTPServer) -> None:
    http_server.set_route("/br", b"\x0b\x02\x80raw", headers={"Content-Encoding": "br"})
    res = await fetch(mode, http_server.url("/br"), keep_body=True)
    assert (res.status, res.body) == (200, b"\x0b\x02\x80raw")


# --- redirects ------------------------------------------------------------------------------


@both
async def test_redirect_chain_followed(mode: str, http_server: HTTPServer) -> None:
    res = await fetch(mode, http_server.url("/redirect/3"), max_redirects=3)
    assert (res.status, res.redirects) == (200, 3)
    assert res.final_url == http_server.url("/redirect/0")
    # Every hop reused the first connection (redirect bodies are drained).
    assert len(http_server.client_ports()) == 1


@both
async def test_too_many_redirects(mode: str, http_server: HTTPServer) -> None:
    res = await fetch(mode, http_server.url("/redirect-loop"), max_redirects=3)
    assert (res.status, res.error, res.redirects) == (None, ErrorClass.TOO_MANY_REDIRECTS, 3)
    assert http_server.paths() == ["/redirect-loop"] * 4


@both
async def test_non_http_location_is_invalid_url(mode: str, http_server: HTTPServer) -> None:
    res = await fetch(mode, http_server.url("/bad-location"))
    assert res.error == ErrorClass.INVALID_URL
    assert "ftp" in (res.error_detail or "")


@both
@pytest.mark.parametrize(
    "url",
    [
        pytest.param("ftp://127.0.0.1/x", id="scheme"),
        pytest.param("http://", id="no-host"),
        pytest.param("not a url", id="no-scheme"),
        pytest.param("", id="empty"),
        pytest.param("http://[::1/x", id="bad-ipv6"),
        pytest.param("http://127.0.0.1:99999/", id="bad-port"),
        pytest.param("http://127.1/", id="non-canonical-ip"),
        pytest.param("http://a\r\nb/", id="control-chars"),
    ],
)
async def test_invalid_url(mode: str, url: str) -> None:
    res = await fetch(mode, url)
    assert (res.status, res.error) == (None, ErrorClass.INVALID_URL)


@both
async def test_credentials_not_forwarded_to_another_origin(
    mode: str, make_http_server: Any
) -> None:
    a, b = make_http_server("127.0.0.2"), make_http_server("127.0.0.3")
    target = b.url("/ok")
    res = await fetch(
        mode,
        a.url(f"/redirect-to?url={target}"),
        headers=(("Authorization", "Bearer secret"), ("X-Job", "7")),
    )
    assert res.status == 200
    assert a.arrivals()[0].headers.get("Authorization") == "Bearer secret"
    assert "Authorization" not in b.arrivals()[0].headers
    assert b.arrivals()[0].headers.get("X-Job") == "7"


# --- error classes --------------------------------------------------------------------------


@both
async def test_timeout_on_a_silent_server(mode: str, http_server: HTTPServer) -> None:
    res = await fetch(mode, http_server.url("/hang"), read_timeout=0.3)
    assert (res.status, res.error) == (None, ErrorClass.TIMEOUT)
    assert 250 < res.elapsed_ms < 2000


@both
async def test_total_timeout_on_a_dripping_server(mode: str, http_server: HTTPServer) -> None:
    # Each byte comes well within read_timeout, but the whole body takes longer than `timeout`.
    res = await fetch(
        mode, http_server.url("/drip?bytes=50&interval=0.1"), timeout=0.6, read_timeout=1.0
    )
    assert res.error == ErrorClass.TIMEOUT
    assert 500 < res.elapsed_ms < 1500


@both
async def test_connection_refused(mode: str) -> None:
    res = await fetch(mode, f"http://127.0.0.1:{closed_port()}/ok")
    assert (res.status, res.error) == (None, ErrorClass.CONNECTION)


@both
async def test_connection_dropped_mid_body(mode: str, http_server: HTTPServer) -> None:
    res = await fetch(mode, http_server.url("/reset"))
    assert (res.status, res.error) == (None, ErrorClass.CONNECTION)


@both
async def test_dns_failure_and_success_through_the_resolver(
    mode: str, http_server: HTTPServer
) -> None:
    resolver = StaticResolver({"site.test": ["127.0.0.1"]})
    ok = await fetch(mode, f"http://site.test:{http_server.port}/ok", resolver=resolver)
    assert (ok.status, ok.bytes) == (200, len(PAGE))
    assert http_server.arrivals()[0].headers["Host"] == f"site.test:{http_server.port}"
    res = await fetch(mode, f"http://unknown.test:{http_server.port}/ok", resolver=resolver)
    assert (res.status, res.error) == (None, ErrorClass.DNS)
    assert "unknown.test" in (res.error_detail or "")


@both
async def test_tls_self_signed_refused_when_verifying(mode: str, https_server: HTTPServer) -> None:
    res = await fetch(mode, https_server.url("/ok"))
    assert (res.status, res.error) == (None, ErrorClass.TLS)
    assert https_server.arrivals() == []


@both
async def test_tls_insecure_accepts_self_signed(mode: str, https_server: HTTPServer) -> None:
    res = await fetch(mode, https_server.url("/ok"), verify_tls=False)
    assert (res.status, res.bytes) == (200, len(PAGE))


@both
async def test_too_large_body(mode: str, http_server: HTTPServer) -> None:
    exact = await fetch(mode, http_server.url("/big/100000"), max_bytes=100_000)
    assert (exact.status, exact.bytes) == (200, 100_000)
    res = await fetch(mode, http_server.url("/big/100001"), max_bytes=100_000)
    assert (res.status, res.error, res.bytes, res.body) == (None, ErrorClass.TOO_LARGE, 0, None)


# --- memory ---------------------------------------------------------------------------------

MAX_BYTES = 1 << 20
# Generous on purpose: the bound is what matters (the inflated sizes are 1 GiB and 64 MiB).
MEMORY_BOUND = 3 * MAX_BYTES + 4 * (1 << 20)


async def peak_memory_of(mode: str, url: str, **overrides: Any) -> tuple[FetchResult, int]:
    async with make_engine(mode, config(max_bytes=MAX_BYTES, timeout=20, **overrides)) as engine:
        await engine.fetch(url.rsplit("/", 1)[0] + "/ok")  # warm up: connection, imports
        tracemalloc.start()
        try:
            res = await engine.fetch(url)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    return res, peak


@both
async def test_gzip_bomb_capped_with_bounded_memory(mode: str, http_server: HTTPServer) -> None:
    res, peak = await peak_memory_of(mode, http_server.url("/gzip-bomb"), keep_body=True)
    assert res.error == ErrorClass.TOO_LARGE
    assert peak < MEMORY_BOUND


@both
async def test_big_body_capped_with_bounded_memory(mode: str, http_server: HTTPServer) -> None:
    res, peak = await peak_memory_of(mode, http_server.url(f"/big/{64 << 20}"), keep_body=True)
    assert res.error == ErrorClass.TOO_LARGE
    assert peak < MEMORY_BOUND


# --- connections and headers ----------------------------------------------------------------


@both
async def test_connections_are_reused(mode: str, http_server: HTTPServer) -> None:
    async with make_engine(mode, config(concurrency=4)) as engine:
        results = await asyncio.gather(
            *(engine.fetch(http_server.url(f"/page/{i}")) for i in range(40))
        )
        for i in range(10):  # and sequentially, after the burst
            results.append(await engine.fetch(http_server.url(f"/page/{i}")))
    assert all(r.status == 200 for r in results)
    assert len(http_server.arrivals()) == 50
    assert len(http_server.client_ports()) <= 4


class CountingResolver(StaticResolver):
    """Counts the lookups that reach it (the engine's DNS cache should answer the rest)."""

    def __init__(self, mapping: dict[str, list[str]]) -> None:
        super().__init__(mapping)
        self.lookups = 0

    def resolve_sync(self, host: str, port: int) -> list[str]:
        self.lookups += 1
        return super().resolve_sync(host, port)


@both
async def test_a_name_is_resolved_once_and_its_connections_reused(
    mode: str, http_server: HTTPServer
) -> None:
    # The DNS cache (aiohttp's ttl_dns_cache; the guard's cache for threads) and keep-alive,
    # counted where they show: lookups at the resolver, client ports at the server.
    resolver = CountingResolver({"site.test": ["127.0.0.1"]})
    async with make_engine(mode, config(concurrency=4), resolver=resolver) as engine:
        for burst in range(3):
            results = await asyncio.gather(*(
                engine.fetch(f"http://site.test:{http_server.port}/page/{burst * 20 + i}")
                for i in range(20)))
            assert all(r.status == 200 for r in results)
    assert len(http_server.arrivals()) == 60
    assert len(http_server.client_ports()) <= 4
    assert 1 <= resolver.lookups <= 4  # at most one per connection opened, not per request


@both
async def test_headers_and_user_agent_sent(mode: str, http_server: HTTPServer) -> None:
    res = await fetch(
        mode,
        http_server.url("/headers"),
        keep_body=True,
        user_agent="test-agent/1.0",
        headers=(("X-Test", "yes"), ("accept", "text/html")),
    )
    assert res.body is not None
    sent = {k.lower(): v for k, v in json.loads(res.body).items()}
    assert sent["user-agent"] == "test-agent/1.0"
    assert sent["x-test"] == "yes"
    assert sent["accept"] == "text/html"
    assert sent["accept-encoding"] == "gzip, deflate"
    assert "cookie" not in sent


# --- the SSRF guard -------------------------------------------------------------------------


@both
async def test_private_address_blocked_without_contact(mode: str, http_server: HTTPServer) -> None:
    res = await fetch(mode, http_server.url("/ok"), allow_private_networks=False)
    assert (res.status, res.error) == (None, ErrorClass.BLOCKED_ADDRESS)
    assert "--allow-private-networks" in (res.error_detail or "")
    resolver = StaticResolver({"inside.test": ["127.0.0.1"]})
    res = await fetch(
        mode,
        f"http://inside.test:{http_server.port}/ok",
        resolver=resolver,
        allow_private_networks=False,
    )
    assert res.error == ErrorClass.BLOCKED_ADDRESS
    assert http_server.arrivals() == []


@both
@pytest.mark.parametrize("via", ["literal", "name"])
async def test_redirect_into_a_blocked_network_refused(
    mode: str, via: str, make_http_server: Any
) -> None:
    # Given a public-ish server (127.0.0.2, allowed) that redirects to 127.0.0.3 (not allowed)
    outside, inside = make_http_server("127.0.0.2"), make_http_server("127.0.0.3")
    host = "127.0.0.3" if via == "literal" else "internal.test"
    resolver = StaticResolver({"internal.test": ["127.0.0.3"]})
    # When the crawler fetches the allowed server
    res = await fetch(
        mode,
        outside.url(f"/redirect-to?url=http://{host}:{inside.port}/ok"),
        resolver=resolver,
        allow_private_networks=False,
        allowed_networks=("127.0.0.2/32",),
    )
    # Then the hop is refused and nothing ever reached 127.0.0.3
    assert (res.status, res.error, res.redirects) == (None, ErrorClass.BLOCKED_ADDRESS, 1)
    assert len(outside.arrivals()) == 1
    assert inside.arrivals() == []


@both
async def test_allowed_network_lets_one_private_host_through(
    mode: str, make_http_server: Any
) -> None:
    srv = make_http_server("127.0.0.2")
    res = await fetch(
        mode,
        srv.url("/ok"),
        allow_private_networks=False,
        allowed_networks=("127.0.0.2/32",),
    )
    assert res.status == 200


# --- both engines agree, and the factory ----------------------------------------------------


@pytest.mark.parametrize(
    "path",
    ["/ok", "/status/404", "/gzip", "/redirect/2", "/redirect-loop", "/bad-location", "/big/300000",
     "/retry-after/3", "/reset"],
)  # fmt: skip
async def test_engines_agree(path: str, http_server: HTTPServer) -> None:
    url = http_server.url(path)
    results = [await fetch(mode, url, keep_body=True) for mode in MODES]
    a, b = (dataclasses.replace(r, elapsed_ms=0.0, error_detail=None) for r in results)
    assert a == b


async def test_make_engine() -> None:
    assert isinstance(make_engine("async", config()), AioEngine)
    assert isinstance(make_engine("threads", config()), ThreadEngine)
    assert (AioEngine.name, ThreadEngine.name) == ("async", "threads")
    with pytest.raises(ValueError, match="unknown engine"):
        make_engine("curl", config())


def test_thread_engine_fetch_sync(http_server: HTTPServer) -> None:
    engine = ThreadEngine(config())
    try:
        res = engine.fetch_sync(http_server.url("/ok"))
    finally:
        engine.close_sync()
    assert res.status == 200


async def test_async_body_shorter_than_its_content_length_is_a_connection_error() -> None:
    import asyncio as _asyncio

    from crawler.engines.aio import classify

    error, _detail = classify(_asyncio.IncompleteReadError(b"abc", 10))
    assert error == "connection"


# --- the request-path fast checks ---------------------------------------------------------

_HOSTS = st.sampled_from(["a.test", "A.Test", "127.0.0.1", "1.2.3", "0x7f.1", "a_b.test",
                          "[::1]", "", "xn--bcher-kva.de", "b\u00fccher.de", "a b", "h%41"])
_PORTS = st.sampled_from(["", ":", ":80", ":080", ":65535", ":65536", ":99999", ":0", ":x"])
_TAILS = st.sampled_from(["", "/", "/p?q=1", "?q", "#f", "/a@b", "\\x", "/\u00e9", ":1/"])


@given(st.sampled_from(["http", "https", "HTTP", "ftp", ""]),
       st.sampled_from(["://", ":/", "//"]), st.sampled_from(["", "user:pw@"]),
       _HOSTS, _PORTS, _TAILS)
@settings(max_examples=600, deadline=None)
def test_check_url_fast_path_agrees_with_urlsplit(
    scheme: str, sep: str, userinfo: str, host: str, port: str, tail: str
) -> None:
    from crawler.engines.base import InvalidURL, _check_url_slowly, check_url

    url = f"{scheme}{sep}{userinfo}{host}{port}{tail}"

    def outcome(check: Any) -> tuple[str, str]:
        try:
            return ("host", check(url))
        except InvalidURL as exc:
            return ("invalid", str(exc))

    assert outcome(check_url) == outcome(_check_url_slowly)
