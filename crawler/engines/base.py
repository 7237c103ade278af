"""The engine interface and every decision both engines share (no I/O here).

An engine turns one URL into one FetchResult: one attempt, redirects followed inside it, each
hop's address checked by the SSRF guard. The engines only send; this module decides what to
send, where a redirect leads, when to stop, and how a result or failure is recorded.

Our own failure exceptions (mapped by `classify_own`, used by both engines):

    InvalidURL          the URL or a Location is not a usable http(s) URL  -> invalid_url
    TooManyRedirects    more than max_redirects hops                       -> too_many_redirects
    DeadlineExceeded    the attempt's total timeout ran out (TimeoutError) -> timeout
    guard.BlockedAddress, guard.DNSFailure                   -> blocked_address, dns
    body.TooLarge, body.BadEncoding                          -> too_large, connection
"""

from __future__ import annotations

import abc
import functools
import re
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping
from types import TracebackType
from typing import Any, ClassVar, Self
from urllib.parse import quote, urljoin, urlsplit

from crawler.body import BadEncoding, BodyDecoder, TooLarge
from crawler.engines.config import FetchConfig
from crawler.engines.proxy import parse_proxy
from crawler.guard import BlockedAddress, DNSFailure, Guard, Resolver, SystemResolver, ip_literal
from crawler.logs import mask
from crawler.records import ErrorClass, FetchResult

# Raw body bytes read per network call.
CHUNK = 64 * 1024
# A redirect's body is read up to this much so its connection can be reused; beyond, dropped.
DRAIN_LIMIT = 64 * 1024
DETAIL_MAX = 200
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# Never forwarded to another origin on a redirect (they were meant for the first one).
ORIGIN_BOUND_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie"})
ACCEPT_ENCODING = "gzip, deflate"  # exactly what crawler.body decodes

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_ASCII = "".join(map(chr, range(128)))
_NUMERIC_HOST = re.compile(r"[0-9.]+|0x[0-9a-fx.]*")


class InvalidURL(Exception):
    """The URL (or a redirect's Location) is not a usable http(s) URL."""


class TooManyRedirects(Exception):
    """The attempt needed more than max_redirects hops."""


class DeadlineExceeded(TimeoutError):
    """The attempt's total time budget (FetchConfig.timeout) ran out."""


# --- pure decisions ----------------------------------------------------------------------


def build_headers(config: FetchConfig) -> dict[str, str]:
    """Request headers for every hop: ours first, the job's extra headers override them."""
    ours = {"User-Agent": config.user_agent, "Accept": "*/*", "Accept-Encoding": ACCEPT_ENCODING}
    return merged_headers(ours, config.headers)


# A plain "scheme://host[:port]/..." with nothing urlsplit would read differently: no
# userinfo, brackets, backslash, or query/fragment right after the authority.
_SIMPLE = re.compile(r"(https?)://([A-Za-z0-9._~-]+)(?::([0-9]{1,5}))?(?=/|$)")


def check_url(url: str) -> str:
    """The URL's host if it is a fetchable http(s) URL; raises InvalidURL otherwise.

    Runs for every request: a simple URL (all canonical ones) is read by one regex, the
    rest by urlsplit; tests check with hypothesis that both agree."""
    if _CONTROL.search(url):
        raise InvalidURL("URL contains control characters")
    m = _SIMPLE.match(url)
    if m is not None and (m[3] is None or int(m[3]) <= 65535):
        return _fetchable(m[2].lower())
    return _check_url_slowly(url)


def _check_url_slowly(url: str) -> str:
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError for a bad port
    except ValueError as exc:
        raise InvalidURL(f"unparseable URL: {exc}") from exc
    if parts.scheme.lower() not in ("http", "https"):
        raise InvalidURL(f"unsupported scheme {parts.scheme or '(none)'!r}")
    host = parts.hostname or ""
    if not host:
        raise InvalidURL("URL has no host")
    return _fetchable(host)


def _fetchable(host: str) -> str:
    """`host` itself, or InvalidURL saying why it cannot be fetched."""
    problem = _host_problem(host)
    if problem is not None:
        raise InvalidURL(problem)
    return host


@functools.lru_cache(maxsize=4096)
def _host_problem(host: str) -> str | None:
    """Why `host` cannot be fetched, or None. Memoised: a crawl asks about few hosts often."""
    if ip_literal(host) is None:
        if _NUMERIC_HOST.fullmatch(host):
            return f"{host!r} is not a canonical IP address"
        try:
            host.encode("idna")
        except UnicodeError:
            return f"invalid host name {host!r}"
    return None


def next_url(current: str, location: str) -> str:
    """Where a redirect leads: Location resolved against the current URL, validated."""
    location = location.strip()
    if not location:
        raise InvalidURL("redirect with an empty Location")
    try:
        target = urljoin(current, location)
    except ValueError as exc:
        raise InvalidURL(f"unparseable Location {location[:80]!r}") from exc
    check_url(target)
    return target


def redirected_method(status: int, method: str) -> str:
    """The method of the request a redirect leads to: 303 makes anything but HEAD a GET, and
    so do 301 and 302 for a POST (what browsers and requests do); 307 and 308 keep it (and the
    body)."""
    if status == 303 and method != "HEAD":
        return "GET"
    if status in (301, 302) and method == "POST":
        return "GET"
    return method


def merged_headers(base: dict[str, str], extra: tuple[tuple[str, str], ...]) -> dict[str, str]:
    """A request's own headers over the job's (names compared without case)."""
    out = dict(base)
    for name, value in extra:
        for key in [k for k in out if k.lower() == name.lower()]:
            del out[key]
        out[name] = value
    return out


# Describe a body: dropped with it when a redirect turns the request into a GET.
BODY_HEADERS = frozenset({"content-type", "content-encoding", "content-language",
                          "content-location"})


def same_origin(a: str, b: str) -> bool:
    pa, pb = urlsplit(a), urlsplit(b)
    return (pa.scheme.lower(), pa.hostname, pa.port) == (pb.scheme.lower(), pb.hostname, pb.port)


def ascii_location(raw: bytes) -> str:
    """A Location header's bytes with every non-ASCII byte percent-encoded, as browsers do.

    Servers put raw UTF-8 or Latin-1 there, and aiohttp and http.client decode header bytes
    differently; from the bytes, both engines request (and record) the same ASCII URL.
    """
    return raw.decode("ascii") if raw.isascii() else quote(raw, safe=_ASCII)


def mime_type(content_type: str | None) -> str | None:
    """'text/html; charset=utf-8' -> 'text/html'; non-ASCII characters become '?'.

    A media type is ASCII: anything else is a hostile or broken header, and its characters
    (lone surrogates from aiohttp's decoding) must not reach the record's JSON.
    """
    value = (content_type or "").split(";", 1)[0].strip().lower()
    if not value.isascii():
        value = value.encode("ascii", "replace").decode("ascii")
    return value or None


def short_detail(text: str) -> str:
    """One line, at most DETAIL_MAX characters, always encodable as UTF-8 (JSON-safe), with
    credentials masked (a proxy's password in a library's message, say) before it is cut."""
    line = mask(" ".join(text.split()))
    if not line.isascii():
        line = line.encode("utf-8", "backslashreplace").decode("utf-8")
    return line if len(line) <= DETAIL_MAX else line[: DETAIL_MAX - 3] + "..."


def causes(exc: BaseException) -> Iterator[BaseException]:
    """The exception, then what it wraps (__cause__, __context__, urllib3's .reason)."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        cur = todo.pop(0)
        if cur is None or id(cur) in seen or len(seen) > 10:
            continue
        seen.add(id(cur))
        yield cur
        reason = getattr(cur, "reason", None)
        wrapped = [a for a in getattr(cur, "args", ()) if isinstance(a, BaseException)]
        todo += [cur.__cause__, cur.__context__, *wrapped]
        if isinstance(reason, BaseException):
            todo.append(reason)


_OWN: tuple[tuple[type[BaseException], ErrorClass], ...] = (
    (BlockedAddress, ErrorClass.BLOCKED_ADDRESS),
    (DNSFailure, ErrorClass.DNS),
    (TooLarge, ErrorClass.TOO_LARGE),
    (TooManyRedirects, ErrorClass.TOO_MANY_REDIRECTS),
    (InvalidURL, ErrorClass.INVALID_URL),
    (DeadlineExceeded, ErrorClass.TIMEOUT),
    (BadEncoding, ErrorClass.CONNECTION),
)


def classify_own(exc: BaseException) -> tuple[ErrorClass, str] | None:
    """Our own failures, even when a library wrapped them; None for anything else."""
    for cur in causes(exc):
        for kind, error in _OWN:
            if isinstance(cur, kind):
                return error, short_detail(str(cur) or kind.__name__)
    return None


# --- one attempt ---------------------------------------------------------------------------


BeforeHop = Callable[[str], Coroutine[Any, Any, None]]


class Attempt:
    """The state of one fetch: the current hop, redirects, the clock; builds the result."""

    def __init__(
        self, url: str, config: FetchConfig, guard: Guard, headers: dict[str, str], *,
        method: str = "GET", body: str | None = None,
    ) -> None:
        self.url = url
        self.hop = url
        self.config = config
        self.guard = guard
        self.redirects = 0
        self.headers = headers  # shared and never mutated: follow() replaces it
        self.method = method
        self.body = None if body is None else body.encode()
        self.started = time.perf_counter()
        self.deadline = time.monotonic() + config.timeout

    def begin(self) -> str:
        """The first URL to request, validated and (for an IP literal) checked."""
        self.guard.check_literal(check_url(self.url))
        return self.url

    def follow(self, status: int, location: str | None) -> str | None:
        """The next hop for a redirect response, or None when this response is the result."""
        if status not in REDIRECT_STATUSES or location is None:
            return None
        if self.redirects >= self.config.max_redirects:
            raise TooManyRedirects(f"more than max_redirects={self.config.max_redirects}")
        target = next_url(self.hop, location)
        if not same_origin(self.hop, target):
            self.headers = {
                k: v for k, v in self.headers.items() if k.lower() not in ORIGIN_BOUND_HEADERS
            }
        method = redirected_method(status, self.method)
        if method != self.method:
            self.method = method
            if self.body is not None:
                self.body = None
                self.headers = {
                    k: v for k, v in self.headers.items() if k.lower() not in BODY_HEADERS
                }
        self.redirects += 1
        self.hop = target
        # Checked like a name's addresses will be: a blocked hop is reported as the final URL.
        self.guard.check_literal(check_url(target))
        return target

    def remaining(self) -> float:
        """Seconds left of the total budget; DeadlineExceeded when none are."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise self.deadline_error()
        return left

    def expired(self) -> bool:
        return time.monotonic() >= self.deadline

    def deadline_error(self) -> DeadlineExceeded:
        return DeadlineExceeded(f"timed out after {self.config.timeout:g}s (total)")

    def decoder(self, headers: Mapping[str, str]) -> BodyDecoder:
        return BodyDecoder(
            headers.get("Content-Encoding"), self.config.max_bytes, keep=self.config.keep_body
        )

    def done(self, status: int, headers: Mapping[str, str], body: BodyDecoder) -> FetchResult:
        return FetchResult(
            url=self.url,
            final_url=self.hop,
            status=status,
            bytes=body.size,
            content_type=mime_type(headers.get("Content-Type")),
            redirects=self.redirects,
            elapsed_ms=self._elapsed_ms(),
            retry_after=headers.get("Retry-After"),
            body=body.body,
            headers={k.lower(): v for k, v in headers.items()} if self.config.keep_headers
            else None,
        )

    def failed(self, error: ErrorClass, detail: str) -> FetchResult:
        """An error result: no status, no body (so both engines report the same)."""
        return FetchResult(
            url=self.url,
            final_url=self.hop,
            error=error,
            error_detail=short_detail(detail),
            redirects=self.redirects,
            elapsed_ms=self._elapsed_ms(),
        )

    def _elapsed_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000


# --- the interface ---------------------------------------------------------------------------


class Engine(abc.ABC):
    """Fetches URLs for a whole worker process: start once, fetch many times, close."""

    name: ClassVar[str]
    # Whether the guard caches checked answers (the aiohttp connector has its own DNS cache).
    guard_caches_dns: ClassVar[bool] = False

    def __init__(self, config: FetchConfig, *, resolver: Resolver | None = None) -> None:
        self.config = config
        self.proxy = parse_proxy(config.proxy) if config.proxy else None
        self.guard = Guard(
            resolver or SystemResolver(),
            allow_private=config.allow_private_networks,
            allowed_networks=config.allowed_networks,
            cache_ttl=config.dns_ttl if self.guard_caches_dns else 0,
            trusted_hosts=(self.proxy.host,) if self.proxy else (),
        )
        self.headers = build_headers(config)  # the same for every first hop: built once

    def attempt(self, url: str, method: str = "GET", headers: tuple[tuple[str, str], ...] = (),
                body: str | None = None) -> Attempt:
        """A fresh attempt; a request's own headers are merged over the job's (a new dict:
        the shared one stays as is, and the engines know it by identity)."""
        return Attempt(url, self.config, self.guard,
                       merged_headers(self.headers, headers) if headers else self.headers,
                       method=method, body=body)

    @abc.abstractmethod
    async def start(self) -> None:
        """Create the session/pool; called inside the running loop, once per process."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections and threads."""

    @abc.abstractmethod
    async def fetch(self, url: str, *, before_hop: BeforeHop | None = None,
                    method: str = "GET", headers: tuple[tuple[str, str], ...] = (),
                    body: str | None = None) -> FetchResult:
        """One attempt at `url`; never raises except CancelledError. `before_hop(url)` is
        awaited before each redirect hop is requested: the caller's politeness (the runner
        takes a rate-limit slot for the hop's host), which the engine knows nothing of.
        `method`, `headers` (over the job's) and `body` (text, sent as UTF-8) come from a
        structured request (crawler.request); redirects follow `redirected_method`."""

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
