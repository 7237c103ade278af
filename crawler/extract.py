"""Extraction hooks: `--extract package.module:function` turns a page into the record's `data`.

The function gets a `Page` (URL, status, headers, body and text, the request's meta) and
returns a JSON-serialisable dict (or None); `page.follow(url_or_request)` asks for more
requests, which then go through the job's scope, dedupe, depth and page limits like found
links. It runs in a small thread pool, never on the event loop: a slow or CPU-heavy function
cannot stall other fetches. Whatever it does wrong (raises, returns a non-dict, data that is
not JSON or over DATA_MAX) becomes `error: extract_failed` with the reason on that record; the
page's status stays in the record and the worker goes on.

Workers import the function by name (`importlib`), from their own Python path: the module
must be installed in the worker's environment or on its PYTHONPATH.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import re
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin

import orjson

from crawler.errors import InputError
from crawler.logs import Throttle
from crawler.request import BadRequest, parse_object
from crawler.urls import InvalidURL, canonicalize

log = logging.getLogger(__name__)
_failures = Throttle()  # a broken function fails every page: one log line a minute

SPEC = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*:[A-Za-z_]\w*")
DATA_MAX = 256 * 1024  # bytes of a record's `data` as JSON: it rides in Redis with the record
FOLLOW_MAX = 10_000  # requests one page may ask for
THREADS = 4  # extraction threads per process: user code holds the GIL anyway
_CHARSET = re.compile(r"charset\s*=\s*[\"']?([\w.:-]+)", re.IGNORECASE)


class ExtractImportError(ValueError):
    """The function named by --extract cannot be imported (one line, says what to fix)."""


def check_spec(spec: str) -> str:
    """`package.module:function`, or ValueError saying the form."""
    if not SPEC.fullmatch(spec):
        raise ValueError(f"--extract {spec!r}: expected package.module:function")
    return spec


def load(spec: str) -> Callable[[Page], Any]:
    """The function named by `spec`, imported; ExtractImportError with the reason."""
    module_name, _, name = check_spec(spec).partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or any error the module raises while loading
        raise ExtractImportError(
            f"--extract {spec}: cannot import {module_name} ({type(exc).__name__}: {exc}); "
            "install it where the crawl runs or put it on PYTHONPATH") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ExtractImportError(f"--extract {spec}: {module_name} has no function {name}")
    return fn  # type: ignore[no-any-return]


@dataclass(slots=True)
class Page:
    """What the extraction function sees of one fetched page."""

    url: str  # the requested URL (canonical)
    final_url: str  # after redirects
    status: int
    headers: Mapping[str, str]  # response headers, names in lower case
    body: bytes  # decoded (gzip/deflate undone), at most the job's --max-bytes
    meta: Any = None  # the request's meta, as given
    method: str = "GET"
    depth: int = 0
    follows: list[Any] = field(default_factory=list)

    @property
    def text(self) -> str:
        """The body as text: the charset of Content-Type, else UTF-8 (bad bytes replaced)."""
        m = _CHARSET.search(self.headers.get("content-type", ""))
        try:
            return self.body.decode(m.group(1) if m else "utf-8", "replace")
        except LookupError:  # an unknown charset name
            return self.body.decode("utf-8", "replace")

    def follow(self, request: str | Mapping[str, Any]) -> None:
        """Ask for another request: a URL (relative to the final URL) or a request object
        (`{"url": ..., "method": ..., "meta": ...}`, see README "Structured input")."""
        self.follows.append(request)


@dataclass(slots=True)
class Extracted:
    """The outcome for one page: its data, the entries it asked for, or why it failed."""

    data: Any = None
    follow: list[str] = field(default_factory=list)
    error: str | None = None
    refused: int = 0  # follow requests that were not valid (skipped, logged)


def check_extract(spec: str) -> None:
    """Where the crawl is started: the function must import here (InputError: exit 2)."""
    try:
        load(spec)
    except ExtractImportError as exc:
        raise InputError(str(exc)) from None


class Extractor:
    """Runs one job's function for its pages, in threads. Thread-safe; `close()` at the end."""

    def __init__(self, spec: str, *, threads: int = THREADS) -> None:
        self.spec = spec
        self._fn: Callable[[Page], Any] | None = None
        self._error: str | None = None
        try:
            self._fn = load(spec)
        except ExtractImportError as exc:  # every page of the job says so; the worker lives
            self._error = str(exc)
            log.error("%s", exc)
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="extract")

    async def run(self, page: Page) -> Extracted:
        if self._fn is None:
            return Extracted(error=self._error)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._call, self._fn, page)

    def _call(self, fn: Callable[[Page], Any], page: Page) -> Extracted:
        try:
            data = fn(page)
        except Exception as exc:
            detail = f"{type(exc).__name__}: {exc}"
            _failures.log(log, logging.WARNING, "--extract %s failed on %s: %s", self.spec,
                          page.url, detail)
            return Extracted(error=detail)
        if data is not None and not isinstance(data, dict):
            return Extracted(error=f"returned {type(data).__name__}, not a dict or None")
        if data is not None:
            try:
                size = len(orjson.dumps(data))
            except TypeError as exc:
                return Extracted(error=f"returned data that is not JSON-serialisable: {exc}")
            if size > DATA_MAX:
                return Extracted(error=f"returned {size} bytes of data (at most {DATA_MAX})")
        out = Extracted(data=data)
        for item in page.follows[:FOLLOW_MAX]:
            try:
                out.follow.append(_entry(item, page.final_url))
            except (BadRequest, InvalidURL, TypeError, ValueError) as exc:
                out.refused += 1
                _failures.log(log, logging.WARNING, "--extract %s: page %s asked to follow "
                              "%.200r: %s", self.spec, page.url, item, exc)
        return out

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def _entry(item: Any, base: str) -> str:
    """A follow request as a batch entry (crawler.request); relative URLs against `base`."""
    if isinstance(item, str):
        return canonicalize(urljoin(base, item))
    if isinstance(item, Mapping) and isinstance(item.get("url"), str):
        return parse_object({**item, "url": urljoin(base, item["url"])}).entry
    return parse_object(item).entry  # says what is wrong
