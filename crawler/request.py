"""A crawl request: a URL, or a JSON object with method, headers, body, meta and priority.

Input (a file, stdin, the Python API) mixes both forms freely: a line that starts with ``{``
is a JSON object, any other line a URL. A request travels through the job as one string,
its *entry*: the canonical URL itself for a plain GET (so URL lines cost no more than they
did), else compact JSON (`CrawlRequest.entry`). Batches in Redis, hand-backs and delayed
batches hold entries; the runner decodes them (`decode`).

Identity (`CrawlRequest.key`, what a job dedupes on and keys its records by): the URL for a
GET without a body, else method, URL and a digest of the body. Headers, meta and priority do
not count: the same request asked twice with other headers is one request (as in Scrapy).

Pure: no I/O. Validation failures raise `BadRequest` with a reason a user can act on.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from crawler.urls import InvalidURL, canonicalize

METHODS = frozenset({"GET", "HEAD", "POST"})
FIELDS = frozenset({"url", "method", "headers", "body", "json", "meta", "priority"})
MAX_HEADERS = 64
PRIORITY_MIN, PRIORITY_MAX = -100, 100
# Set by the crawler (framing, connection handling): a request may not choose them.
RESERVED_HEADERS = frozenset({
    "host", "content-length", "transfer-encoding", "connection", "keep-alive", "upgrade",
    "te", "trailer", "proxy-connection", "accept-encoding"})
# A header name is an RFC 9110 token; a value printable ASCII, spaces and tabs (the engines
# send anything else differently). The job's --header and User-Agent checks use them too.
HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
HEADER_VALUE = re.compile(r"[\t\x20-\x7e]*")


class BadRequest(ValueError):
    """A JSON request line that cannot be crawled; the message says why."""


@dataclass(frozen=True, slots=True)
class CrawlRequest:
    """One request of a job. `url` is canonical; `body` is text sent as UTF-8."""

    url: str
    method: str = "GET"
    headers: tuple[tuple[str, str], ...] = ()
    body: str | None = None
    meta: Any = None
    priority: int = 0

    @property
    def plain(self) -> bool:
        """A bare GET: its entry is the URL itself."""
        return (self.method == "GET" and not self.headers and self.body is None
                and self.meta is None and self.priority == 0)

    @property
    def key(self) -> str:
        """What the job dedupes on and keys the record by (see the module docstring)."""
        if self.method == "GET" and self.body is None:
            return self.url
        if self.body is None:
            return f"{self.method} {self.url}"
        digest = hashlib.blake2b(self.body.encode(), digest_size=16).hexdigest()
        return f"{self.method} {self.url} {digest}"

    @property
    def entry(self) -> str:
        """The form a batch holds: the URL for a plain GET, else compact JSON."""
        if self.plain:
            return self.url
        d: dict[str, Any] = {"url": self.url}
        if self.method != "GET":
            d["method"] = self.method
        if self.headers:
            d["headers"] = [list(h) for h in self.headers]
        if self.body is not None:
            d["body"] = self.body
        if self.meta is not None:
            d["meta"] = self.meta
        if self.priority:
            d["priority"] = self.priority
        return orjson.dumps(d).decode()


def decode(entry: str) -> CrawlRequest:
    """The request an entry stands for (entries were validated when accepted)."""
    if not entry.startswith("{"):
        return CrawlRequest(entry)
    d = orjson.loads(entry)
    return CrawlRequest(
        d["url"], d.get("method", "GET"), tuple((n, v) for n, v in d.get("headers", ())),
        d.get("body"), d.get("meta"), d.get("priority", 0))


def by_priority(entries: Sequence[str]) -> list[tuple[int, list[str]]]:
    """Entries grouped by their line priority, highest first, order kept within a group (a
    batch has one priority: crawler.schedule ranks batches)."""
    groups: dict[int, list[str]] = {}
    for e in entries:
        p = orjson.loads(e).get("priority", 0) if e.startswith("{") else 0
        groups.setdefault(p, []).append(e)
    return sorted(groups.items(), key=lambda g: -g[0])


def entry_url(entry: str) -> str:
    """The URL of an entry, without decoding a plain one."""
    return entry if not entry.startswith("{") else decode(entry).url


def entry_key(entry: str) -> str:
    """`decode(entry).key`, without decoding a plain URL."""
    return entry if not entry.startswith("{") else decode(entry).key


def parse_line(text: str) -> CrawlRequest:
    """A JSON request line -> a validated request; `BadRequest` or `InvalidURL` otherwise."""
    try:
        obj = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"not valid JSON: {str(exc).split(':', 1)[0]}") from None
    return parse_object(obj)


def parse_object(obj: Any) -> CrawlRequest:
    """A request given as a mapping (a parsed JSON line, or a dict from the Python API)."""
    if not isinstance(obj, Mapping):
        raise BadRequest("a JSON line must be an object")
    unknown = sorted(set(obj) - FIELDS)
    if unknown:
        raise BadRequest(f"unknown field {unknown[0]!r} (fields: url, method, headers, body, "
                         "json, meta, priority)")
    url = obj.get("url")
    if not isinstance(url, str):
        raise BadRequest("'url' must be a string" if "url" in obj else "'url' is missing")
    url = canonicalize(url)  # InvalidURL: the same reasons as a URL line
    if "body" in obj and "json" in obj:
        raise BadRequest("give 'body' or 'json', not both")
    body = _body(obj)
    method = obj.get("method", "POST" if body is not None else "GET")
    if not isinstance(method, str) or method.upper() not in METHODS:
        raise BadRequest(f"'method' must be one of GET, HEAD, POST, not {method!r}")
    method = method.upper()
    if body is not None and method != "POST":
        raise BadRequest(f"a body needs method POST, not {method}")
    headers = _headers(obj.get("headers"))
    if "json" in obj and not any(n.lower() == "content-type" for n, _ in headers):
        headers += (("Content-Type", "application/json"),)
    priority = obj.get("priority", 0)
    if (not isinstance(priority, int) or isinstance(priority, bool)
            or not PRIORITY_MIN <= priority <= PRIORITY_MAX):
        raise BadRequest(f"'priority' must be an integer from {PRIORITY_MIN} to "
                         f"{PRIORITY_MAX}")
    meta = obj.get("meta")
    try:
        orjson.dumps(meta)
    except TypeError as exc:  # only from the Python API: a JSON line is JSON already
        raise BadRequest(f"'meta' is not JSON-serialisable: {exc}") from None
    return CrawlRequest(url, method, headers, body, meta, priority)


def _body(obj: Mapping[str, Any]) -> str | None:
    if "json" in obj:
        try:
            return orjson.dumps(obj["json"]).decode()
        except TypeError as exc:
            raise BadRequest(f"'json' is not JSON-serialisable: {exc}") from None
    body = obj.get("body")
    if body is not None and not isinstance(body, str):
        raise BadRequest("'body' must be a string (use 'json' for an object)")
    return body


def _headers(raw: Any) -> tuple[tuple[str, str], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, Mapping):
        raise BadRequest("'headers' must be an object of name: value strings")
    if len(raw) > MAX_HEADERS:
        raise BadRequest(f"at most {MAX_HEADERS} headers")
    out: list[tuple[str, str]] = []
    for name, value in raw.items():
        if not isinstance(name, str) or not HEADER_NAME.fullmatch(name):
            raise BadRequest(f"header name {name!r} is not a valid token")
        if name.lower() in RESERVED_HEADERS:
            raise BadRequest(f"header {name!r} is set by the crawler")
        if not isinstance(value, str) or not HEADER_VALUE.fullmatch(value):
            raise BadRequest(f"header {name!r} needs a printable ASCII string value")
        out.append((name, value))
    return tuple(out)


__all__ = ["BadRequest", "CrawlRequest", "InvalidURL", "by_priority", "decode", "entry_key",
           "entry_url", "parse_line", "parse_object"]
