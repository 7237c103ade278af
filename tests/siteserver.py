"""Serves a `sitegraph.Site` on loopback, one aiohttp server per host, and logs every request.

Usable without pytest (benchmarks, scripts), like httpserver:

    from siteserver import serve_site          # with tests/ on sys.path
    with serve_site(seed=6) as srv:            # 127.0.0.21-23, a 2,000-page site
        print(srv.base_urls, srv.site.seeds)
        ...
        srv.log.count(url), srv.log.gaps(0)

Each host has its own address (127.0.0.21, .22, .23): the crawler's per-host rate limiter
keys on the host name without the port, so one address with three ports would be one host.
The site is built after the sockets are bound, because its links spell out the ports.

The servers run in one background thread of the calling process (one event loop for all
hosts). The e2e crawls run in `crawler worker` processes, so they share nothing with it; an
in-process crawl shares the GIL, and a request can then be stamped late by about one switch
interval (5 ms): compare Crawl-delay gaps with a tolerance of that order. Every reply is
built from the site's data in microseconds, so the server itself adds no measurable delay.

Time stamps are `time.monotonic()` at the server when the handler starts (the request head
has been read), as in httpserver. On Linux that clock is system-wide, so stamps compare with
ones taken in worker processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Self

from aiohttp import web
from sitegraph import Site, build_site

from crawler.urls import InvalidURL, canonicalize

DEFAULT_ADDRESSES = ("127.0.0.21", "127.0.0.22", "127.0.0.23")
DEFAULT_SEED = 6
DEFAULT_PAGES = 2000
ROBOTS = "/robots.txt"
SHUTDOWN_TIMEOUT = 0.5  # s: no handler here waits on anything, so stop is quick


@dataclass(frozen=True, slots=True)
class Hit:
    """One request as the server saw it."""

    host: int  # index in Site.hosts
    url: str  # canonical URL of the request
    target: str  # path and query as sent
    at: float  # time.monotonic() at arrival
    method: str
    user_agent: str
    status: int


class RequestLog:
    """Every request to any host of a served site, thread-safe."""

    def __init__(self, hosts: Sequence[str]) -> None:
        self._hosts = list(hosts)
        self._hits: list[Hit] = []
        self._cond = threading.Condition()

    def add(self, hit: Hit) -> None:
        with self._cond:
            self._hits.append(hit)
            self._cond.notify_all()

    def requests(self) -> list[Hit]:
        with self._cond:
            return list(self._hits)

    def count(self, url: str) -> int:
        """Requests for `url` (any spelling of it)."""
        canonical = canonicalize(url)
        return sum(h.url == canonical for h in self.requests())

    def urls(self) -> list[str]:
        return [h.url for h in self.requests()]

    def gaps(self, host: int | str) -> list[float]:
        """Sorted inter-arrival gaps (s) of a host's requests, robots.txt left out.

        `host` is an index, an authority ("127.0.0.21:40123") or a base URL.
        """
        index = host if isinstance(host, int) else self._host_index(host)
        times = sorted(h.at for h in self.requests() if h.host == index and h.target != ROBOTS)
        return sorted(b - a for a, b in itertools.pairwise(times))

    def reset(self) -> None:
        with self._cond:
            self._hits.clear()

    def wait_for(self, predicate: Callable[[list[Hit]], bool], timeout: float = 5.0) -> bool:
        """Block until predicate(requests so far) holds (True) or the timeout passed (False)."""
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self._hits), timeout)

    def _host_index(self, host: str) -> int:
        return self._hosts.index(host.removeprefix("http://").rstrip("/"))


class SiteServer:
    """One aiohttp server per address; `start()` binds them, `serve(site)` fills them."""

    def __init__(self, addresses: Sequence[str] = DEFAULT_ADDRESSES) -> None:
        self.addresses = tuple(addresses)
        self.hosts: tuple[str, ...] = ()  # "127.0.0.21:40123", ... once started
        self.log = RequestLog(())
        self._site: Site | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runners: list[web.AppRunner] = []

    @property
    def site(self) -> Site:
        if self._site is None:
            raise RuntimeError("no site served yet: call serve(site)")
        return self._site

    @property
    def base_urls(self) -> list[str]:
        return [f"http://{h}" for h in self.hosts]

    # --- lifecycle ---------------------------------------------------------------------

    def start(self) -> Self:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="siteserver", daemon=True
        )
        self._thread.start()
        try:
            fut = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
            self.hosts = tuple(fut.result(10))
        except BaseException:
            self.stop()
            raise
        self.log = RequestLog(self.hosts)
        return self

    async def _start(self) -> list[str]:
        hosts = []
        for index, address in enumerate(self.addresses):
            runner = web.AppRunner(
                self._app(index), handle_signals=False, access_log=None,
                shutdown_timeout=SHUTDOWN_TIMEOUT,
            )  # fmt: skip
            await runner.setup()
            self._runners.append(runner)
            await web.TCPSite(runner, address, 0, backlog=1024).start()
            hosts.append(f"{address}:{runner.addresses[0][1]}")
        return hosts

    def serve(self, site: Site) -> Self:
        """Answer from `site` from now on; its hosts must be ours (build it with `self.hosts`)."""
        if site.hosts != self.hosts:
            raise ValueError(f"site built for {site.hosts}, served on {self.hosts}")
        self._site = site
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        for runner in self._runners:
            asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        self._loop = self._thread = None
        self._runners = []

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- what the log offers, here too --------------------------------------------------

    def requests(self) -> list[Hit]:
        return self.log.requests()

    def count(self, url: str) -> int:
        return self.log.count(url)

    def gaps(self, host: int | str) -> list[float]:
        return self.log.gaps(host)

    def reset(self) -> None:
        self.log.reset()

    # --- the app --------------------------------------------------------------------------

    def _app(self, index: int) -> web.Application:
        async def handle(request: web.Request) -> web.Response:
            at = time.monotonic()
            try:
                url = canonicalize(f"http://{self.hosts[index]}{request.raw_path}")
            except InvalidURL:
                url = ""
            key = self._site.key_of(url) if self._site is not None and url else None
            reply = self.site.respond(key) if key is not None else None
            status = reply.status if reply is not None else 400
            self.log.add(Hit(
                index, url, request.raw_path, at, request.method,
                request.headers.get("User-Agent", ""), status,
            ))  # fmt: skip
            if reply is None:
                return web.Response(status=400, text="bad request")
            headers = {"Content-Type": reply.content_type, **dict(reply.headers)}
            return web.Response(status=reply.status, body=reply.body, headers=headers)

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        return app


@contextlib.contextmanager
def serve_site(
    addresses: Sequence[str] = DEFAULT_ADDRESSES,
    *,
    seed: int = DEFAULT_SEED,
    pages: int = DEFAULT_PAGES,
    **build: Any,
) -> Iterator[SiteServer]:
    """Bind the addresses, build the site for them (`build_site` keywords), serve it."""
    with SiteServer(addresses) as server:
        server.serve(build_site(seed, server.hosts, pages, **build))
        yield server


# --- pytest fixtures (only when pytest is importable) -----------------------------------------

try:
    import pytest
except ImportError:  # used from a plain script
    pytest = None  # type: ignore[assignment]

if pytest is not None:

    @pytest.fixture(scope="session")
    def site_server_session() -> Iterator[SiteServer]:
        """The default site (2,000 pages, 3 hosts, seed 6) for the whole session."""
        with serve_site() as server:
            yield server

    @pytest.fixture
    def site_server(site_server_session: SiteServer) -> SiteServer:
        """The default site with an empty request log: .base_urls, .site, .log."""
        site_server_session.reset()
        return site_server_session

    @pytest.fixture
    def make_site_server() -> Iterator[Callable[..., SiteServer]]:
        """Factory: make_site_server(addresses=..., seed=..., pages=..., crawl_delay=...)."""
        stack = contextlib.ExitStack()

        def make(addresses: Sequence[str] = DEFAULT_ADDRESSES, **kw: Any) -> SiteServer:
            return stack.enter_context(serve_site(addresses, **kw))

        with stack:
            yield make
