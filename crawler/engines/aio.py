"""The asyncio engine: one aiohttp session per worker process, a semaphore bounding fetches."""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import ssl
from typing import Any, ClassVar

import aiohttp
import aiohttp_socks
import certifi
import python_socks
import yarl
from aiohttp_socks import ProxyConnector, ProxyType

from crawler.engines.base import (
    CHUNK,
    DRAIN_LIMIT,
    ORIGIN_BOUND_HEADERS,
    Attempt,
    BeforeHop,
    Engine,
    ascii_location,
    classify_own,
    short_detail,
)
from crawler.engines.config import FetchConfig
from crawler.engines.deadlines import Deadlines
from crawler.guard import AiohttpGuardResolver, Resolver
from crawler.logs import Throttle
from crawler.records import ErrorClass, FetchResult

log = logging.getLogger(__name__)
_unexpected = Throttle()  # an unknown error class may hit every URL: one traceback a minute


def tls_context(verify: bool) -> ssl.SSLContext | bool:
    """certifi's CA bundle, or False (no verification) only when the job said --insecure."""
    return ssl.create_default_context(cafile=certifi.where()) if verify else False


def classify(exc: BaseException) -> tuple[ErrorClass, str]:
    """Every exception of an aiohttp attempt mapped to an error class, in one place."""
    own = classify_own(exc)
    if own is not None:
        return own
    detail = short_detail(f"{type(exc).__name__}: {exc}")
    if isinstance(exc, (aiohttp.ClientSSLError, ssl.SSLError, aiohttp.ServerFingerprintMismatch)):
        return ErrorClass.TLS, detail
    if isinstance(exc, (TimeoutError, aiohttp_socks.ProxyTimeoutError)):
        return ErrorClass.TIMEOUT, detail  # asyncio.timeout, ServerTimeoutError, Connection/...
    # A SOCKS proxy that refuses, fails its handshake or cannot reach the target.
    if isinstance(exc, (aiohttp_socks.ProxyError, aiohttp_socks.ProxyConnectionError,
                        python_socks.ProxyError, python_socks.ProxyConnectionError)):
        return ErrorClass.CONNECTION, detail
    if isinstance(exc, (aiohttp.ClientConnectorDNSError, socket.gaierror)):
        return ErrorClass.DNS, detail
    if isinstance(exc, (aiohttp.InvalidURL, ValueError)):  # yarl raises ValueError/UnicodeError
        return ErrorClass.INVALID_URL, detail
    # refused, reset, payload, disconnected, a body shorter than its Content-Length
    if isinstance(exc, (aiohttp.ClientError, OSError, asyncio.IncompleteReadError)):
        return ErrorClass.CONNECTION, detail
    _unexpected.log(log, logging.WARNING, "unexpected fetch error", exc_info=exc)
    return ErrorClass.CONNECTION, short_detail(f"unexpected {detail}")


class AioEngine(Engine):
    """aiohttp: bodies read undecoded and decoded under the cap; redirects followed by hand."""

    name: ClassVar[str] = "async"

    def __init__(self, config: FetchConfig, *, resolver: Resolver | None = None) -> None:
        super().__init__(config, resolver=resolver)
        self._session: aiohttp.ClientSession | None = None
        self._sem: asyncio.Semaphore | None = None
        self._bound: dict[str, str] | None = None
        self._deadlines: Deadlines | None = None

    async def start(self) -> None:
        if self._session is not None:
            return
        c = self.config
        connector_options: dict[str, Any] = {
            "limit": c.concurrency,
            "limit_per_host": c.limit_per_host,
            "ttl_dns_cache": c.dns_ttl,
            "keepalive_timeout": c.keepalive_timeout,
            "ssl": tls_context(c.verify_tls),
        }
        proxy = self.proxy
        connector: aiohttp.TCPConnector
        if proxy is not None and proxy.is_socks:
            # python-socks connects to the proxy itself (resolving its name) and hands it the
            # target's name (remote DNS: crawler.engines.proxy); IP literals are checked by
            # Attempt before any request.
            connector = ProxyConnector(
                proxy_type=ProxyType.SOCKS5 if proxy.kind == "socks5h" else ProxyType.SOCKS4,
                host=proxy.host, port=proxy.port, username=proxy.username,
                password=proxy.password, rdns=True, **connector_options)
        else:
            # With an HTTP proxy only the proxy's name is ever resolved here (the guard trusts
            # it); without one every target is resolved and checked through the guard.
            connector = aiohttp.TCPConnector(
                resolver=AiohttpGuardResolver(self.guard), **connector_options)
        self._session = aiohttp.ClientSession(
            connector=connector,
            # An HTTP proxy for every request; its credentials (in the URL) become the
            # Proxy-Authorization header of the proxy request, never part of a target URL.
            proxy=proxy.url() if proxy is not None and not proxy.is_socks else None,
            # The total budget (all hops and the body) is fetch()'s asyncio.timeout: a second
            # total timer per request here would only cost time.
            timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=c.connect_timeout, sock_read=c.read_timeout
            ),
            # Sent with every request without a per-request merge; headers meant for the first
            # origin only (Authorization, Cookie) are added per request, same-origin hops only.
            headers={
                k: v for k, v in self.headers.items() if k.lower() not in ORIGIN_BOUND_HEADERS
            },
            auto_decompress=False,
            trust_env=False,  # no proxy from the environment: the guard checks the real peer
            # With --cookies, one jar for this engine (a job's, on workers), per domain as
            # browsers keep them; unsafe=True: IP-literal hosts keep cookies too. Else none:
            # URLs of different jobs share no state.
            cookie_jar=(aiohttp.CookieJar(unsafe=True) if c.cookies
                        else aiohttp.DummyCookieJar()),
        )
        self._sem = asyncio.Semaphore(c.concurrency)
        self._deadlines = Deadlines(c.timeout)
        self._bound = {
            k: v for k, v in self.headers.items() if k.lower() in ORIGIN_BOUND_HEADERS
        } or None

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def fetch(self, url: str, *, before_hop: BeforeHop | None = None,
                    method: str = "GET", headers: tuple[tuple[str, str], ...] = (),
                    body: str | None = None) -> FetchResult:
        if self._session is None or self._sem is None or self._deadlines is None:
            raise RuntimeError("AioEngine.start() was not awaited")
        async with self._sem:
            attempt = self.attempt(url, method, headers, body)
            task = asyncio.current_task()
            assert task is not None
            cancelling = task.cancelling()
            key = self._deadlines.start(task, asyncio.get_running_loop())
            try:
                return await self._fetch(self._session, attempt, before_hop)
            except asyncio.CancelledError:
                # Our budget ran out, and nobody else asked to cancel: a timeout, not a stop.
                if self._deadlines.expired(task) and task.uncancel() <= cancelling:
                    return attempt.failed(*classify(attempt.deadline_error()))
                raise
            except Exception as exc:
                failure: BaseException = exc
                if self._deadlines.expired(task):  # a library turned our cancel into an error
                    task.uncancel()
                    failure = attempt.deadline_error()
                return attempt.failed(*classify(failure))
            finally:
                self._deadlines.finish(task, key)

    async def _fetch(self, session: aiohttp.ClientSession, attempt: Attempt,
                     before_hop: BeforeHop | None) -> FetchResult:
        url = attempt.begin()
        target: yarl.URL | str = _yarl(url)  # redirect hops: as the Location said
        while True:
            # attempt.headers is the engine's own dict for a plain request (the session sends
            # all but the origin-bound ones) until a cross-origin hop replaces it; a request's
            # own headers make it a dict of its own, sent whole (over the session's).
            own = self._bound if attempt.headers is self.headers else attempt.headers
            # A body is sent with the Content-Type the request gave, or none (as requests
            # does): aiohttp would add application/octet-stream.
            skip = _NO_AUTO_TYPE if attempt.body is not None else None
            async with session.request(attempt.method, target, headers=own, data=attempt.body,
                                       skip_auto_headers=skip, allow_redirects=False) as resp:
                nxt = attempt.follow(resp.status, _location(resp))
                if nxt is None:
                    body = attempt.decoder(resp.headers)
                    length = resp.content_length
                    if length is not None and length <= self.config.max_bytes:
                        # Announced and within the cap: one read (aiohttp stops at the length,
                        # and a shorter body raises); the decoder still caps what a
                        # compressed body inflates to.
                        body.feed(await resp.read())
                    else:
                        async for chunk in resp.content.iter_chunked(CHUNK):
                            body.feed(chunk)
                    body.finish()
                    return attempt.done(resp.status, resp.headers, body)
                await _drain(resp)
            if before_hop is not None:
                await before_hop(nxt)
            target = nxt


_NO_AUTO_TYPE = ("Content-Type",)

# Characters that need no percent-encoding, and only upper-case escapes: what intake's
# canonical form looks like (crawler.urls), which yarl would leave unchanged anyway.
_PLAIN = re.compile(r"[A-Za-z0-9\-._~:/?@!$&'()*+,;=]*")
_ESCAPED = re.compile(r"(?:[A-Za-z0-9\-._~:/?@!$&'()*+,;=]|%[0-9A-F]{2})*")


def _yarl(url: str) -> yarl.URL | str:
    """A seed or found URL in canonical form skips yarl's re-encoding and path normalisation
    (about 1 us a request); anything else gets yarl's full treatment."""
    encoded = (_ESCAPED if "%" in url else _PLAIN).fullmatch(url)
    return yarl.URL(url, encoded=True) if encoded else url


def _location(resp: aiohttp.ClientResponse) -> str | None:
    """Location as an ASCII URL; aiohttp decodes header bytes as UTF-8 with surrogateescape."""
    loc = resp.headers.get("Location")
    return None if loc is None else ascii_location(loc.encode("utf-8", "surrogateescape"))


async def _drain(resp: aiohttp.ClientResponse) -> None:
    """Read a small redirect body so the connection goes back to the pool."""
    seen = 0
    async for chunk in resp.content.iter_chunked(CHUNK):
        seen += len(chunk)
        if seen > DRAIN_LIMIT:
            return
