"""The thread-pool engine: requests in a ThreadPoolExecutor, one Session per thread.

Connections are opened by guarded urllib3 connection classes: the host is resolved through
the Guard and the socket connects to exactly the address that was checked, while TLS keeps
SNI and certificate verification on the original host name. With a proxy, connections go to
the proxy only (crawler.engines.proxy: the proxy resolves the targets' names).
"""

from __future__ import annotations

import asyncio
import http.client
import io
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any, ClassVar, cast

import certifi
import requests
import urllib3
from requests.adapters import HTTPAdapter
from requests.cookies import RequestsCookieJar, extract_cookies_to_jar, get_cookie_header
from requests.models import PreparedRequest
from requests.utils import get_auth_from_url
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool
from urllib3.contrib.socks import SOCKSConnection, SOCKSProxyManager
from urllib3.exceptions import (
    ConnectTimeoutError,
    InsecureRequestWarning,
    LocationParseError,
    NameResolutionError,
    NewConnectionError,
)
from urllib3.util import connection
from urllib3.util.ssl_ import create_urllib3_context

from crawler.engines.base import (
    CHUNK,
    DRAIN_LIMIT,
    Attempt,
    BeforeHop,
    Engine,
    ascii_location,
    causes,
    classify_own,
    short_detail,
)
from crawler.engines.config import FetchConfig
from crawler.guard import Guard, Resolver
from crawler.logs import Throttle
from crawler.records import ErrorClass, FetchResult

log = logging.getLogger(__name__)
_unexpected = Throttle()  # an unknown error class may hit every URL: one traceback a minute

# Per-thread host pools kept (LRU): a thread crawling many hosts keeps this many warm.
HOST_POOLS = 64


def _detail(exc: BaseException) -> str:
    reason = getattr(exc.args[0], "reason", None) if exc.args else None  # MaxRetryError
    inner = reason if isinstance(reason, BaseException) else exc
    return short_detail(f"{type(inner).__name__}: {inner}")


# Refused, reset, IncompleteRead, ChunkedEncodingError, protocol errors.
_CONNECTION_ERRORS = (
    requests.RequestException,
    urllib3.exceptions.HTTPError,
    http.client.HTTPException,
    OSError,
)


def classify(exc: BaseException) -> tuple[ErrorClass, str]:
    """Every exception of a requests/urllib3 attempt mapped to an error class, in one place."""
    own = classify_own(exc)
    if own is not None:
        return own
    detail = _detail(exc)
    if isinstance(exc, (requests.Timeout, urllib3.exceptions.TimeoutError, TimeoutError)):
        return ErrorClass.TIMEOUT, detail
    if isinstance(exc, (requests.exceptions.SSLError, urllib3.exceptions.SSLError, ssl.SSLError)):
        return ErrorClass.TLS, detail
    # TLS to an https:// proxy failed (aiohttp says ClientSSLError: the same class)
    if isinstance(exc, requests.exceptions.ProxyError) and any(
            isinstance(c, ssl.SSLError) for c in causes(exc)):
        return ErrorClass.TLS, detail
    if isinstance(exc, requests.ConnectionError) and _name_resolution(exc):
        return ErrorClass.DNS, detail
    if isinstance(
        exc,
        (
            requests.exceptions.InvalidURL,
            requests.exceptions.MissingSchema,
            requests.exceptions.InvalidSchema,
            requests.exceptions.URLRequired,
            LocationParseError,
            ValueError,
        ),
    ):
        return ErrorClass.INVALID_URL, detail
    if isinstance(exc, _CONNECTION_ERRORS):
        return ErrorClass.CONNECTION, detail
    _unexpected.log(log, logging.WARNING, "unexpected fetch error", exc_info=exc)
    return ErrorClass.CONNECTION, short_detail(f"unexpected {detail}")


def _name_resolution(exc: BaseException) -> bool:
    return any(isinstance(c, (NameResolutionError, socket.gaierror)) for c in causes(exc))


# --- the total budget on every read -------------------------------------------------------------

# The attempt running on this thread: its time.monotonic() deadline, or None.
_budget = threading.local()


class _BudgetedReader(io.RawIOBase):
    """A response's socket reads, each bounded by what is left of the attempt's total budget.

    A socket timeout bounds one recv; a server that drips a byte at a time (a header line, a
    chunk-size line) restarts it forever. Capping every recv at the time left bounds the sum.
    """

    def __init__(self, raw: io.RawIOBase, sock: socket.socket, deadline: float) -> None:
        super().__init__()
        self._raw = raw
        self._sock = sock
        self._deadline = deadline
        self._cap = sock.gettimeout()  # the read timeout urllib3 set for this request

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int | None:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("total timeout")  # urllib3 maps it to ReadTimeoutError
        if self._cap is None or left < self._cap:
            self._sock.settimeout(left)
        return self._raw.readinto(buffer)

    def close(self) -> None:
        if not self.closed:
            self._raw.close()  # SocketIO: releases its hold on the socket
        super().close()


class _BudgetedResponse(http.client.HTTPResponse):
    """http.client's response reading (headers and body) through a _BudgetedReader."""

    def __init__(self, sock: socket.socket, *args: Any, **kwargs: Any) -> None:
        super().__init__(sock, *args, **kwargs)
        deadline: float | None = getattr(_budget, "deadline", None)
        if deadline is not None:
            raw = self.fp.detach()  # nothing was read yet: the buffer is empty
            self.fp = io.BufferedReader(_BudgetedReader(raw, sock, deadline))


# --- guarded urllib3 plumbing ------------------------------------------------------------------


class _GuardedConnectionMixin:
    """Resolve through the Guard and connect to a checked address, never to the raw name."""

    _dns_host: str
    port: int
    host: str
    timeout: Any
    source_address: Any
    socket_options: Any

    response_class: type[http.client.HTTPResponse] = _BudgetedResponse

    def __init__(self, *args: Any, guard: Guard, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._guard = guard

    def _new_conn(self) -> socket.socket:
        addrs = self._guard.resolve_sync(self._dns_host, self.port)  # BlockedAddress, DNSFailure
        error: Exception | None = None
        for addr in addrs:
            try:
                return connection.create_connection(
                    (addr, self.port),
                    self.timeout,
                    source_address=self.source_address,
                    socket_options=self.socket_options,
                )
            except TimeoutError:
                error = ConnectTimeoutError(
                    self, f"Connection to {self.host} ({addr}) timed out after {self.timeout}s"
                )
            except OSError as exc:
                conn = cast(HTTPConnection, self)
                error = NewConnectionError(conn, f"Failed to establish a new connection: {exc}")
        assert error is not None  # resolve_sync never returns an empty list
        raise error


class GuardedHTTPConnection(_GuardedConnectionMixin, HTTPConnection):
    pass


class GuardedHTTPSConnection(_GuardedConnectionMixin, HTTPSConnection):
    pass


class _GuardedPools(urllib3.PoolManager):
    """Pools that open only guarded connections (with budgeted reads)."""

    guard: Guard

    def _new_pool(
        self, scheme: str, host: str, port: int, request_context: dict[str, Any] | None = None
    ) -> HTTPConnectionPool:
        pool = super()._new_pool(scheme, host, port, request_context)
        pool.ConnectionCls = GuardedHTTPSConnection if scheme == "https" else GuardedHTTPConnection
        pool.conn_kw["guard"] = self.guard
        return pool


class GuardedPoolManager(_GuardedPools):
    """A PoolManager whose pools open only guarded connections."""

    def __init__(self, guard: Guard, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.guard = guard


class GuardedProxyManager(_GuardedPools, urllib3.ProxyManager):
    """An HTTP(S) proxy's pools: every connection goes to the proxy (through the guard, which
    trusts the proxy's own address), with budgeted reads like direct ones."""

    def __init__(self, guard: Guard, proxy_url: str, **kwargs: Any) -> None:
        urllib3.ProxyManager.__init__(self, proxy_url, **kwargs)
        self.guard = guard


class _BudgetedSOCKSConnection(SOCKSConnection):
    """PySocks connects to the proxy (remote DNS: the target's name goes to the proxy)."""

    response_class: type[http.client.HTTPResponse] = _BudgetedResponse


class _BudgetedSOCKSHTTPSConnection(_BudgetedSOCKSConnection, HTTPSConnection):
    pass


class BudgetedSOCKSProxyManager(SOCKSProxyManager):
    """A SOCKS proxy's pools, with budgeted reads like direct ones."""

    def _new_pool(
        self, scheme: str, host: str, port: int, request_context: dict[str, Any] | None = None
    ) -> HTTPConnectionPool:
        pool = super()._new_pool(scheme, host, port, request_context)
        pool.ConnectionCls = (_BudgetedSOCKSHTTPSConnection if scheme == "https"
                              else _BudgetedSOCKSConnection)
        return pool


def verified_tls_context() -> ssl.SSLContext:
    """What urllib3 builds for a verified connection, with certifi's CAs, built once.

    Given a CA path instead, urllib3 parses the whole bundle again for every new connection:
    CPU, and a heap that kept growing on hosts whose TLS fails (a new connection each time).
    """
    ctx = create_urllib3_context(cert_reqs=ssl.CERT_REQUIRED)
    ctx.load_verify_locations(certifi.where())
    return ctx


class GuardedAdapter(HTTPAdapter):
    """A requests adapter over a GuardedPoolManager, or over the job's proxy; with `cookies`,
    every request takes that jar's cookies for its URL and gives it the response's."""

    def __init__(
        self, guard: Guard, *, ssl_context: ssl.SSLContext | None = None,
        cookies: CookieJar | None = None, **kwargs: Any
    ) -> None:
        self.guard = guard  # set first: HTTPAdapter.__init__ calls init_poolmanager
        self.ssl_context = ssl_context  # verified connections share it (CAs loaded once)
        self.cookies = cookies
        super().__init__(**kwargs)

    def send(self, request: PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        # Here, not in Session.cookies: a Session copies its whole jar into every request it
        # prepares, and a job's jar is shared by every thread (CookieJar locks inside).
        jar = self.cookies
        if jar is None:
            return super().send(request, *args, **kwargs)
        # The job's own --header 'Cookie: ...' is kept, the jar's cookies follow it (the jar
        # adds nothing to a request that has a Cookie header).
        own = request.headers.pop("Cookie", None)
        cookies = "; ".join(str(v) for v in (own, get_cookie_header(jar, request)) if v)
        if cookies:
            request.headers["Cookie"] = cookies
        resp = super().send(request, *args, **kwargs)
        extract_cookies_to_jar(jar, request, resp.raw)
        return resp

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        """The pools for the job's proxy, built like ours (guarded, shared TLS context)."""
        manager = self.proxy_manager.get(proxy)
        if manager is None:
            if self.ssl_context is not None:
                proxy_kwargs["ssl_context"] = self.ssl_context
            pools: dict[str, Any] = {"num_pools": self._pool_connections,
                                     "maxsize": self._pool_maxsize, "block": self._pool_block}
            if proxy.lower().startswith("socks"):
                user, password = get_auth_from_url(proxy)
                manager = BudgetedSOCKSProxyManager(
                    proxy, username=user or None, password=password or None,
                    **pools, **proxy_kwargs)
            else:
                manager = GuardedProxyManager(
                    self.guard, proxy, proxy_headers=self.proxy_headers(proxy),
                    **pools, **proxy_kwargs)
            self.proxy_manager[proxy] = manager
        return manager

    def init_poolmanager(
        self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any
    ) -> None:
        self._pool_connections = connections
        self._pool_maxsize = maxsize
        self._pool_block = block
        if self.ssl_context is not None:
            pool_kwargs["ssl_context"] = self.ssl_context
        self.poolmanager = GuardedPoolManager(
            self.guard, num_pools=connections, maxsize=maxsize, block=block, **pool_kwargs
        )

    def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
        if verify is True and cert is None and self.ssl_context is not None:
            conn.cert_reqs = "CERT_REQUIRED"  # no ca_certs: the shared context has them
            return
        super().cert_verify(conn, url, verify, cert)


# --- the engine -------------------------------------------------------------------------------


class _Session(requests.Session):
    """A Session that never prepares a redirect: we follow them ourselves (Attempt.follow).

    With allow_redirects=False requests still builds the next request from Location, and
    raises UnicodeDecodeError for a Location that is not UTF-8.
    """

    def get_redirect_target(self, resp: requests.Response) -> None:
        return None


class ThreadEngine(Engine):
    """requests + a thread pool; `fetch_sync` is the whole attempt, `fetch` runs it in the pool."""

    name: ClassVar[str] = "threads"
    guard_caches_dns = True

    def __init__(self, config: FetchConfig, *, resolver: Resolver | None = None) -> None:
        super().__init__(config, resolver=resolver)
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._tls = verified_tls_context() if config.verify_tls else None
        # --cookies: one jar for every thread's session (http.cookiejar locks inside).
        self._jar: CookieJar | None = RequestsCookieJar() if config.cookies else None
        if not config.verify_tls:
            # The job asked for --insecure; one warning per request would only be noise.
            urllib3.disable_warnings(InsecureRequestWarning)

    async def start(self) -> None:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.config.concurrency, thread_name_prefix="fetch")

    async def close(self) -> None:
        await asyncio.to_thread(self.close_sync)

    def close_sync(self) -> None:
        """Wait for running fetches (bounded by the timeouts), then close every connection."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)
        with self._lock:
            sessions, self._sessions = self._sessions, []
            self._local = threading.local()  # closed sessions are never handed out again
        for session in sessions:
            session.close()

    async def fetch(self, url: str, *, before_hop: BeforeHop | None = None,
                    method: str = "GET", headers: tuple[tuple[str, str], ...] = (),
                    body: str | None = None) -> FetchResult:
        if self._pool is None:
            raise RuntimeError("ThreadEngine.start() was not awaited")
        loop = asyncio.get_running_loop()
        hop = None
        if before_hop is not None:
            def hop(target: str) -> None:  # on a pool thread: wait for the loop's answer
                asyncio.run_coroutine_threadsafe(before_hop(target), loop).result()
        return await loop.run_in_executor(self._pool, partial(
            self.fetch_sync, url, hop, method=method, headers=headers, body=body))

    def fetch_sync(self, url: str, before_hop: Callable[[str], None] | None = None, *,
                   method: str = "GET", headers: tuple[tuple[str, str], ...] = (),
                   body: str | None = None) -> FetchResult:
        """One attempt, blocking the calling thread; never raises."""
        attempt = self.attempt(url, method, headers, body)
        _budget.deadline = attempt.deadline
        try:
            return self._fetch(self._session(), attempt, before_hop)
        except Exception as exc:
            failure = attempt.deadline_error() if attempt.expired() else exc
            return attempt.failed(*classify(failure))
        finally:
            _budget.deadline = None

    def _fetch(self, session: requests.Session, attempt: Attempt,
               before_hop: Callable[[str], None] | None) -> FetchResult:
        url = attempt.begin()
        while True:
            left = attempt.remaining()
            timeout = (min(self.config.connect_timeout, left), min(self.config.read_timeout, left))
            resp = session.request(
                attempt.method, url, headers=attempt.headers, data=attempt.body, stream=True,
                allow_redirects=False, timeout=timeout,
            )
            try:
                loc = resp.headers.get("Location")  # http.client decodes header bytes as Latin-1
                nxt = attempt.follow(
                    resp.status_code, None if loc is None else ascii_location(loc.encode("latin-1"))
                )
                if nxt is None:
                    body = attempt.decoder(resp.headers)
                    for chunk in self._chunks(resp, attempt):
                        body.feed(chunk)
                    body.finish()
                    return attempt.done(resp.status_code, resp.headers, body)
                seen = 0
                for chunk in self._chunks(resp, attempt):
                    seen += len(chunk)
                    if seen > DRAIN_LIMIT:
                        break
            finally:
                resp.close()  # a fully read response already went back to the pool
            if before_hop is not None:
                before_hop(nxt)
            url = nxt

    def _chunks(self, resp: requests.Response, attempt: Attempt) -> Iterator[bytes]:
        """Raw (undecoded) body chunks as they arrive (each read is budgeted: _BudgetedReader)."""
        raw = resp.raw
        while True:
            attempt.remaining()  # DeadlineExceeded between chunks
            chunk = raw.read1(CHUNK, decode_content=False)
            if not chunk:
                return
            yield chunk

    def _session(self) -> requests.Session:
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = _Session()
            session.trust_env = False  # no proxy/.netrc from the environment
            session.headers.clear()  # every header comes from build_headers
            session.verify = self.config.verify_tls  # True: certifi, via self._tls
            # The session's own jar never keeps a cookie; a job's jar (--cookies) is the
            # adapter's, one for all threads of this engine.
            session.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))
            if self.proxy is not None:  # every request, http and https targets alike
                url = self.proxy.url()
                session.proxies = {"http": url, "https": url}
            adapter = GuardedAdapter(
                self.guard,
                ssl_context=self._tls,
                cookies=self._jar,
                pool_connections=HOST_POOLS,
                pool_maxsize=self.config.concurrency,
                max_retries=0,
            )
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            self._local.session = session
            with self._lock:
                self._sessions.append(session)
        return session
