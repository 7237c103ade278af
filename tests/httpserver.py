"""A local test HTTP server (aiohttp, in a background thread) and its pytest fixtures.

Usable without pytest (benchmarks, scripts):

    from httpserver import HTTPServer, serve_many     # with tests/ on sys.path
    with HTTPServer("127.0.0.2") as srv:
        print(srv.url("/ok"))
    with serve_many(["127.0.0.2", "127.0.0.3"]) as (a, b):
        ...

Routes (every server has all of them):
    /ok                      small HTML page
    /page/{n}                small HTML page linking to /page/{n+1} and /page/{2n}
    /status/{code}           that status, tiny body
    /retry-after/{seconds}   429 with Retry-After: {seconds}
    /flaky/{key}/{n}         503 the first n times per key, then 200
    /redirect/{n}            302 chain: /redirect/{n-1} ... /redirect/0 answers 200
    /redirect-loop           302 to itself
    /redirect-to?url=U&status=302   redirect to any URL (any method)
    /bad-location            302 to a non-http scheme
    /big/{bytes}             that many bytes, streamed in 64 KiB writes, with Content-Length
    /endless                 chunked (no Content-Length), 64 KiB writes that never end
    /gzip                    a small valid gzip page (Content-Encoding: gzip)
    /deflate, /deflate-raw   the same page as zlib / raw deflate (Content-Encoding: deflate)
    /gzip-bomb?size=N        gzip of N zero bytes (default 1 GiB), compressed while sent
    /hang                    accepts the request, never answers
    /drip?bytes=N&interval=S one byte every S seconds (default 5 bytes, 1 s)
    /delay/{ms}              200 after ms milliseconds
    /reset                   promises 100000 bytes, sends 1000, drops the connection
    /headers                 the request headers as JSON
    /echo                    any method: {"method", "body", "headers"} of the request as JSON
    set_route(path, ...)     any fixed response (e.g. /robots.txt), checked before the above
Every arrival is logged (path, time.monotonic(), client address, headers), thread-safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import shutil
import ssl
import subprocess
import threading
import time
import zlib
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from aiohttp import web

PAGE = b"<!doctype html><html><head><title>ok</title></head><body><p>hello</p></body></html>"
_ZEROS = bytes(256 * 1024)  # gzip-bomb input step: ~1 ms of zlib work
WRITE_CHUNK = 64 * 1024
# Handlers still running at stop (e.g. /hang) are cancelled after this long.
SHUTDOWN_TIMEOUT = 0.5


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class Arrival:
    path: str
    at: float  # time.monotonic() when the request arrived
    client: tuple[str, int]
    query: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    method: str = "GET"
    body: bytes = b""


@dataclass(frozen=True, slots=True)
class Fixed:
    status: int
    body: bytes
    headers: dict[str, str]


class HTTPServer:
    """The test app on one address: `start()`/`stop()` or a `with` block."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        ssl_context: ssl.SSLContext | None = None,
        log_arrivals: bool = True,
    ) -> None:
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self.log_arrivals = log_arrivals  # False for long benchmarks: nothing kept per request
        self.scheme = "https" if ssl_context else "http"
        self._arrivals: list[Arrival] = []
        self._cond = threading.Condition()
        self._flaky: dict[str, int] = {}
        self._fixed: dict[str, Fixed] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    # --- lifecycle ---------------------------------------------------------------------

    def start(self) -> Self:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=f"httpserver-{self.host}", daemon=True
        )
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    async def _start(self) -> None:
        self._runner = web.AppRunner(
            build_app(self),
            handle_signals=False,
            access_log=None,
            shutdown_timeout=SHUTDOWN_TIMEOUT,
            handler_cancellation=True,  # a client that goes away ends /hang and /drip
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, ssl_context=self.ssl_context)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        self._loop = self._thread = self._runner = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- for tests ------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    def url(self, path: str = "/") -> str:
        return self.base_url + (path if path.startswith("/") else "/" + path)

    def arrivals(self) -> list[Arrival]:
        with self._cond:
            return list(self._arrivals)

    def paths(self) -> list[str]:
        return [a.path for a in self.arrivals()]

    def client_ports(self) -> set[int]:
        """Distinct client ports seen: the number of TCP connections used."""
        return {a.client[1] for a in self.arrivals()}

    def clear(self) -> None:
        with self._cond:
            self._arrivals.clear()
            self._flaky.clear()

    def wait_for_arrivals(self, n: int, timeout: float = 5.0) -> bool:
        """Block until at least n requests arrived (True) or the timeout passed (False)."""
        with self._cond:
            return self._cond.wait_for(lambda: len(self._arrivals) >= n, timeout)

    def set_route(
        self,
        path: str,
        body: bytes | str = b"",
        *,
        status: int = 200,
        content_type: str = "text/plain",
        headers: dict[str, str] | None = None,
    ) -> None:
        """Serve a fixed response at `path` (takes precedence over the built-in routes)."""
        data = body.encode() if isinstance(body, str) else body
        self._fixed[path] = Fixed(status, data, {"Content-Type": content_type, **(headers or {})})

    def _record(self, request: web.Request, body: bytes) -> None:
        if not self.log_arrivals:
            return
        peer = request.transport.get_extra_info("peername") if request.transport else None
        client = (str(peer[0]), int(peer[1])) if peer else ("", 0)
        arrival = Arrival(
            request.path, time.monotonic(), client, request.query_string, dict(request.headers),
            request.method, body,
        )
        with self._cond:
            self._arrivals.append(arrival)
            self._cond.notify_all()

    def _flaky_hit(self, key: str) -> int:
        with self._cond:
            self._flaky[key] = self._flaky.get(key, 0) + 1
            return self._flaky[key]


# --- the app --------------------------------------------------------------------------------


def build_app(server: HTTPServer) -> web.Application:
    @web.middleware
    async def log_and_fixed(request: web.Request, handler: Any) -> web.StreamResponse:
        server._record(request, await request.read() if request.can_read_body else b"")
        fixed = server._fixed.get(request.path)
        if fixed is not None:
            return web.Response(status=fixed.status, body=fixed.body, headers=fixed.headers)
        return await handler(request)

    async def flaky(request: web.Request) -> web.Response:
        key, n = request.match_info["key"], int(request.match_info["n"])
        if server._flaky_hit(key) <= n:
            return web.Response(status=503, text="try again")
        return _html(PAGE)

    app = web.Application(middlewares=[log_and_fixed])
    app.router.add_get("/ok", _const(lambda: _html(PAGE)))
    app.router.add_get("/page/{n:\\d+}", page)
    app.router.add_get("/status/{code:\\d+}", status)
    app.router.add_get("/retry-after/{seconds}", retry_after)
    app.router.add_get("/flaky/{key}/{n:\\d+}", flaky)
    app.router.add_get("/redirect/{n:\\d+}", redirect_chain)
    app.router.add_get("/redirect-loop", _const(lambda: _redirect("/redirect-loop")))
    app.router.add_route("*", "/redirect-to", redirect_to)
    app.router.add_route("*", "/echo", echo)
    app.router.add_get("/bad-location", _const(lambda: _redirect("ftp://127.0.0.1/file")))
    app.router.add_get("/big/{size:\\d+}", big)
    app.router.add_get("/endless", endless)
    app.router.add_get("/gzip", _const(lambda: _encoded(gzip.compress(PAGE), "gzip")))
    app.router.add_get("/deflate", _const(lambda: _encoded(zlib.compress(PAGE), "deflate")))
    app.router.add_get("/deflate-raw", _const(lambda: _encoded(_raw_deflate(PAGE), "deflate")))
    app.router.add_get("/gzip-bomb", gzip_bomb)
    app.router.add_get("/hang", hang)
    app.router.add_get("/drip", drip)
    app.router.add_get("/delay/{ms:\\d+}", delay)
    app.router.add_get("/reset", reset)
    app.router.add_get("/headers", echo_headers)
    return app


def _const(make: Callable[[], web.Response]) -> Handler:
    """A handler that ignores the request and answers make()."""

    async def handler(request: web.Request) -> web.Response:
        return make()

    return handler


async def echo_headers(request: web.Request) -> web.Response:
    return web.json_response(dict(request.headers))


async def echo(request: web.Request) -> web.Response:
    """Any method: the request's method, body (text) and headers as JSON."""
    body = (await request.read()).decode("utf-8", "replace")
    return web.json_response({"method": request.method, "body": body,
                              "headers": dict(request.headers)})


def _html(body: bytes, status: int = 200) -> web.Response:
    return web.Response(status=status, body=body, content_type="text/html", charset="utf-8")


def _redirect(location: str, status: int = 302) -> web.Response:
    return web.Response(status=status, headers={"Location": location}, text="moved")


def _encoded(body: bytes, encoding: str) -> web.Response:
    return web.Response(
        body=body, headers={"Content-Encoding": encoding, "Content-Type": "text/html"}
    )


def _raw_deflate(data: bytes) -> bytes:
    z = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    return z.compress(data) + z.flush()


async def page(request: web.Request) -> web.Response:
    n = int(request.match_info["n"])
    links = f'<a href="/page/{n + 1}">next</a> <a href="/page/{2 * n}">double</a>'
    return _html(f"<!doctype html><html><body><h1>page {n}</h1>{links}</body></html>".encode())


async def status(request: web.Request) -> web.Response:
    code = int(request.match_info["code"])
    return web.Response(status=code, text=f"status {code}")


async def retry_after(request: web.Request) -> web.Response:
    return web.Response(
        status=429, headers={"Retry-After": request.match_info["seconds"]}, text="slow down"
    )


async def redirect_chain(request: web.Request) -> web.Response:
    n = int(request.match_info["n"])
    return _redirect(f"/redirect/{n - 1}") if n > 0 else _html(PAGE)


async def redirect_to(request: web.Request) -> web.Response:
    return _redirect(request.query["url"], int(request.query.get("status", "302")))


async def big(request: web.Request) -> web.StreamResponse:
    size = int(request.match_info["size"])
    resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    resp.content_length = size
    await resp.prepare(request)
    block = b"a" * WRITE_CHUNK
    sent = 0
    with contextlib.suppress(ConnectionResetError):  # the client may stop reading
        while sent < size:
            n = min(WRITE_CHUNK, size - sent)
            await resp.write(block[:n])
            sent += n
        await resp.write_eof()
    return resp


async def endless(request: web.Request) -> web.StreamResponse:
    """A body with no announced length that never ends: only the client's cap stops it."""
    resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    await resp.prepare(request)  # no content_length: chunked
    block = b"e" * WRITE_CHUNK
    with contextlib.suppress(ConnectionResetError):  # the client is expected to give up
        while True:
            await resp.write(block)
    return resp


async def gzip_bomb(request: web.Request) -> web.StreamResponse:
    """gzip of `size` zeros (about 1000:1), compressed as it is sent: never held inflated."""
    size = int(request.query.get("size", str(1 << 30)))
    resp = web.StreamResponse(headers={"Content-Encoding": "gzip", "Content-Type": "text/html"})
    await resp.prepare(request)
    z = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = memoryview(_ZEROS)
    left = size
    with contextlib.suppress(ConnectionResetError):  # the client is expected to give up
        while left > 0:
            n = min(len(zeros), left)
            out = z.compress(zeros[:n])
            left -= n
            if out:
                await resp.write(out)
            else:
                await asyncio.sleep(0)  # keep the server's loop responsive
        await resp.write(z.flush())
        await resp.write_eof()
    return resp


async def hang(request: web.Request) -> web.StreamResponse:
    await asyncio.Event().wait()  # until the client leaves or the server stops
    raise AssertionError("unreachable")


async def drip(request: web.Request) -> web.StreamResponse:
    count = int(request.query.get("bytes", "5"))
    interval = float(request.query.get("interval", "1"))
    resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
    await resp.prepare(request)
    with contextlib.suppress(ConnectionResetError):
        for _ in range(count):
            await resp.write(b"x")
            await asyncio.sleep(interval)
        await resp.write_eof()
    return resp


async def delay(request: web.Request) -> web.Response:
    await asyncio.sleep(int(request.match_info["ms"]) / 1000)
    return _html(PAGE)


async def reset(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
    resp.content_length = 100_000
    await resp.prepare(request)
    await resp.write(b"x" * 1000)
    assert request.transport is not None
    request.transport.abort()
    await asyncio.Event().wait()  # cancelled now that the connection is gone
    raise AssertionError("unreachable")


# --- several addresses, TLS -------------------------------------------------------------------


def start_servers(hosts: Sequence[str]) -> list[HTTPServer]:
    """One started server per address (127.0.0.2, 127.0.0.3, ...); stop each when done."""
    servers: list[HTTPServer] = []
    try:
        for host in hosts:
            servers.append(HTTPServer(host).start())
    except BaseException:
        for srv in servers:
            srv.stop()
        raise
    return servers


@contextlib.contextmanager
def serve_many(hosts: Sequence[str]) -> Iterator[list[HTTPServer]]:
    servers = start_servers(hosts)
    try:
        yield servers
    finally:
        for srv in servers:
            srv.stop()


def self_signed_cert(directory: Path, host: str = "127.0.0.1") -> tuple[Path, Path]:
    """A throwaway certificate for `host` (via the openssl CLI): (certfile, keyfile)."""
    exe = shutil.which("openssl")
    if exe is None:
        raise RuntimeError("openssl is not installed")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [exe, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "2", "-subj", f"/CN={host}",
         "-addext", f"subjectAltName=IP:{host},DNS:localhost",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def server_tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx


# --- pytest fixtures (only when pytest is importable) -----------------------------------------

try:
    import pytest
except ImportError:  # used from a plain script
    pytest = None  # type: ignore[assignment]

if pytest is not None:

    @pytest.fixture
    def http_server() -> Iterator[HTTPServer]:
        """A fresh server on 127.0.0.1 for one test."""
        with HTTPServer("127.0.0.1") as srv:
            yield srv

    @pytest.fixture(scope="module")
    def http_server_module() -> Iterator[HTTPServer]:
        """One server on 127.0.0.1 shared by a module's tests (call .clear() if you count)."""
        with HTTPServer("127.0.0.1") as srv:
            yield srv

    @pytest.fixture
    def make_http_server() -> Iterator[Any]:
        """Factory: make_http_server("127.0.0.2", ssl_context=None) -> started HTTPServer."""
        servers: list[HTTPServer] = []

        def make(
            host: str = "127.0.0.1", *, ssl_context: ssl.SSLContext | None = None
        ) -> HTTPServer:
            srv = HTTPServer(host, ssl_context=ssl_context).start()
            servers.append(srv)
            return srv

        yield make
        for srv in servers:
            srv.stop()

    @pytest.fixture(scope="session")
    def tls_cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
        """(certfile, keyfile) of a self-signed certificate for 127.0.0.1."""
        if shutil.which("openssl") is None:
            pytest.skip("openssl is not installed")
        return self_signed_cert(tmp_path_factory.mktemp("tls"))

    @pytest.fixture
    def https_server(tls_cert: tuple[Path, Path]) -> Iterator[HTTPServer]:
        """The same app over TLS on 127.0.0.1 with a self-signed certificate."""
        with HTTPServer("127.0.0.1", ssl_context=server_tls_context(*tls_cert)) as srv:
            yield srv
