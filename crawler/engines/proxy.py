"""A job's proxy URL: parsed and checked once, shown only with its password masked (pure).

    http://[user:password@]host:port      an HTTP proxy: absolute-form GET, CONNECT for https
    https://[user:password@]host:port     the same, spoken over TLS to the proxy
    socks5://[user:password@]host:port    SOCKS5 (socks5h:// is the same: see below)
    socks4://[user@]host:port             SOCKS4a (socks4a:// is the same; no password in SOCKS4)

Names are always resolved by the proxy (SOCKS5 with remote DNS, SOCKS4a), never locally: the
request leaves from the proxy, so only the proxy's view of a name matters, and a local lookup
would leak every crawled name to the local resolver. The SSRF guard still checks IP-literal
targets (crawler.engines.base.Attempt); the proxy's own address is the user's explicit choice
and is never refused (crawler.guard.Guard's `trusted_hosts`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit

SCHEMES = ("http", "https", "socks4", "socks4a", "socks5", "socks5h")
# What each scheme is sent as: SOCKS always with remote DNS (see the module docstring).
_KIND = {"http": "http", "https": "https", "socks4": "socks4a", "socks4a": "socks4a",
         "socks5": "socks5h", "socks5h": "socks5h"}
_UNSAFE = re.compile(r"[\x00-\x20\x7f]")


@dataclass(frozen=True, slots=True)
class Proxy:
    """One proxy: `kind` is http, https, socks4a or socks5h; credentials percent-decoded."""

    kind: str
    host: str
    port: int
    username: str | None = None
    password: str | None = None

    @property
    def is_socks(self) -> bool:
        return self.kind.startswith("socks")

    def url(self, *, credentials: bool = True) -> str:
        """The proxy as a URL for the HTTP clients (credentials percent-encoded again)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        auth = ""
        if credentials and self.username is not None:
            auth = quote(self.username, safe="")
            if self.password is not None:
                auth += ":" + quote(self.password, safe="")
            auth += "@"
        return f"{self.kind}://{auth}{host}:{self.port}"

    def masked(self) -> str:
        """The proxy for logs and errors: `scheme://user:***@host:port`."""
        shown = self.url(credentials=False)
        if self.username is None:
            return shown
        kind, _, rest = shown.partition("://")
        secret = ":***" if self.password is not None else ""
        return f"{kind}://{quote(self.username, safe='')}{secret}@{rest}"


def parse_proxy(url: str) -> Proxy:
    """The Proxy a URL names; ValueError with a one-line reason that never repeats the
    password (the caller shows the value masked)."""
    if _UNSAFE.search(url):
        raise ValueError("the proxy URL contains spaces or control characters")
    try:
        parts = urlsplit(url)
    except ValueError:
        raise ValueError("the proxy URL does not parse (expected scheme://host:port)") from None
    try:
        port = parts.port
    except ValueError:
        port = 0
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise ValueError(f"unsupported proxy scheme {scheme or '(none)'!r} (expected "
                         "http, https, socks4, socks4a, socks5 or socks5h)")
    if not parts.hostname:
        raise ValueError("no host in the proxy URL (expected scheme://host:port)")
    if not port:
        raise ValueError("the proxy URL needs a port from 1 to 65535 "
                         "(e.g. http://proxy.example:3128)")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError("a proxy URL is scheme://[user:password@]host:port, with no path")
    username = None if parts.username is None else unquote(parts.username)
    password = None if parts.password is None else unquote(parts.password)
    if password is not None and _KIND[scheme] == "socks4a":
        raise ValueError("SOCKS4 takes a user id only, no password (use socks5://)")
    return Proxy(_KIND[scheme], parts.hostname, port, username, password)
