"""Sitemaps: page URLs a site lists for crawlers, found through robots.txt and sitemap indexes.

Parsing is pure (text or bytes in, URLs out); `expand_sitemaps` is the only I/O, through a
fetch callable it is given, so it knows nothing of engines, Redis or HTTP libraries. URLs
come out raw: the caller canonicalizes and scopes them as it does links.

Hostile input is expected, and every bound comes from the sitemap protocol
(https://www.sitemaps.org/protocol.html): at most `MAX_SITEMAP_BYTES` decoded bytes and
`MAX_LOCS` URLs per file. Parsing never raises on bad input: it keeps what it read before
the problem (a cap reached, broken gzip, broken XML) and says why it stopped in
`Sitemap.error`, so one bad file costs its own URLs only.

XML goes through lxml's incremental parser with entities left unresolved, no DTD loaded
and no network: an XXE or billion-laughs payload expands nothing, reads no file, sends no
request (lxml rather than defusedxml because the pull parser lets a gzip stream be parsed
as it is decoded, under one byte cap). A ``<loc>`` holding an entity reference or any other
node is dropped rather than half read.
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit

from lxml import etree

from crawler.urls import InvalidURL, canonicalize

__all__ = [
    "MAX_LOCS",
    "MAX_SITEMAP_BYTES",
    "Fetch",
    "Sitemap",
    "SitemapKind",
    "expand_sitemaps",
    "parse_sitemap",
    "sitemaps_in_robots",
]

log = logging.getLogger(__name__)

#: The protocol's size limit for one sitemap, uncompressed; gzip bombs stop here.
MAX_SITEMAP_BYTES = 50 * 1024 * 1024
#: The protocol's limit on URLs (or child sitemaps) in one file.
MAX_LOCS = 50_000
#: Index nesting followed by `expand_sitemaps`: the protocol allows none, real sites use one
#: or two (an index of per-section indexes); more is a loop or a trap.
MAX_DEPTH = 3
#: Sitemap files fetched per expansion: large news sites publish a few hundred.
MAX_FILES = 1000

SitemapKind = Literal["urlset", "index", "unknown"]
#: ``fetch(url) -> (HTTP status or None on error, body or None)``.
Fetch = Callable[[str], Awaitable[tuple[int | None, bytes | None]]]

_GZIP_MAGIC = b"\x1f\x8b"
_GZIP_WBITS = 16 + zlib.MAX_WBITS
# Compressed input per decompress call, and most output per call: small enough that a bomb
# is stopped within a chunk of the cap, large enough that calls are few.
_IN_CHUNK = 16 * 1024
_OUT_CHUNK = 256 * 1024
_XML_WHITESPACE = b" \t\r\n"
_UTF8_BOM = b"\xef\xbb\xbf"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")  # XML in UTF-16: lxml reads the BOM
# Root element -> (kind, the element each <loc> must sit in).
_ROOTS: dict[str, tuple[SitemapKind, str]] = {
    "urlset": ("urlset", "url"),
    "sitemapindex": ("index", "sitemap"),
}


@dataclass
class Sitemap:
    """One parsed sitemap file: page URLs (``urlset``) or sitemap URLs (``index``).

    `error` is None when the whole file was read, else why parsing stopped early; `locs`
    then holds what was read before.
    """

    kind: SitemapKind
    locs: list[str] = field(default_factory=list)
    error: str | None = None


def sitemaps_in_robots(robots_text: str) -> list[str]:
    """The absolute http(s) URLs of robots.txt ``Sitemap:`` lines, each once, in file order.

    The field name is case-insensitive and the line may be anywhere: sitemaps belong to no
    user-agent group. ``#`` starts a comment, as everywhere in robots.txt (RFC 9309).
    """
    seen: dict[str, None] = {}
    for line in robots_text.removeprefix("\ufeff").splitlines():
        name, colon, value = line.partition(":")
        if not colon or name.strip().lower() != "sitemap":
            continue
        url = value.partition("#")[0].strip()
        if _is_absolute_http(url):
            seen.setdefault(url, None)
    return list(seen)


def _is_absolute_http(url: str) -> bool:
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def parse_sitemap(
    body: bytes, *, max_bytes: int = MAX_SITEMAP_BYTES, max_locs: int = MAX_LOCS
) -> Sitemap:
    """Parse an XML sitemap or sitemap index, gzipped or not, or a plain-text sitemap.

    Gzip is recognised by its magic bytes, whatever the Content-Type said (servers label
    ``.xml.gz`` every way). At most `max_bytes` decoded bytes are parsed and `max_locs` URLs
    kept; past either, parsing stops and `Sitemap.error` says so. Never raises on bad input.
    """
    decoded = _Decoded(body, max_bytes)
    chunks = iter(decoded)
    first = b""
    for chunk in chunks:  # skip a BOM and leading whitespace, up to the cap
        first = (chunk if first else chunk.removeprefix(_UTF8_BOM)).lstrip(_XML_WHITESPACE)
        if first:
            break
    if not first:
        return Sitemap("unknown", error=decoded.error)
    rest = _prepend(first, chunks)
    if first.startswith((b"<", *_UTF16_BOMS)):
        sitemap = _parse_xml(rest, max_locs)
    else:
        sitemap = _parse_text(rest, max_locs)
    sitemap.error = decoded.error or sitemap.error  # a cut body also breaks its XML: say why
    return sitemap


def _prepend(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    yield first
    yield from rest


class _Decoded:
    """A body's decoded bytes in chunks, gunzipped if it starts with the gzip magic.

    Stops after `max_bytes`; `error` says why it ended early (cap, broken gzip) once the
    chunks are consumed, and is None when the whole body was decoded.
    """

    def __init__(self, body: bytes, max_bytes: int) -> None:
        self.body = body
        self.max_bytes = max_bytes
        self.error: str | None = None

    def __iter__(self) -> Iterator[bytes]:
        source = self._gunzip() if self.body.startswith(_GZIP_MAGIC) else self._plain()
        left = self.max_bytes
        for chunk in source:
            if len(chunk) > left:
                self.error = f"more than {self.max_bytes} bytes decoded: parsed the first ones"
                yield chunk[:left]
                return
            left -= len(chunk)
            yield chunk

    def _plain(self) -> Iterator[bytes]:
        view = memoryview(self.body)
        for start in range(0, len(view), _OUT_CHUNK):
            yield bytes(view[start : start + _OUT_CHUNK])

    def _gunzip(self) -> Iterator[bytes]:
        # Fed in small slices so that `unconsumed_tail` never copies the whole body; a body
        # of several gzip members (legal, from concatenated files) is read to its end.
        data = memoryview(self.body)
        pos = 0
        inflater = zlib.decompressobj(_GZIP_WBITS)
        try:
            while pos < len(data):
                pending = bytes(data[pos : pos + _IN_CHUNK])
                pos += len(pending)
                while pending and not inflater.eof:
                    yield inflater.decompress(pending, _OUT_CHUNK)
                    pending = inflater.unconsumed_tail
                if inflater.eof:
                    pos -= len(inflater.unused_data)  # the input after this member
                    if bytes(data[pos : pos + 2]) != _GZIP_MAGIC:
                        return  # bytes after the last member are ignored, as gzip -d does
                    inflater = zlib.decompressobj(_GZIP_WBITS)
            # Output zlib still holds once all input is in (a long match cut by _OUT_CHUNK).
            while not inflater.eof and (chunk := inflater.decompress(b"", _OUT_CHUNK)):
                yield chunk
        except zlib.error as exc:
            self.error = f"broken gzip: {exc}"
            return
        if not inflater.eof:
            self.error = "broken gzip: the stream ends early"


def _parse_xml(chunks: Iterable[bytes], max_locs: int) -> Sitemap:
    parser = etree.XMLPullParser(
        events=("start", "end"),
        resolve_entities=False,  # no XXE, no billion laughs: entity references stay nodes
        no_network=True,  # no DTD or entity is ever fetched
        load_dtd=False,
        huge_tree=False,  # libxml2's own caps on depth and text node size stay on
    )
    collector = _Collector(max_locs)
    for chunk in chunks:
        try:
            parser.feed(chunk)
        except etree.XMLSyntaxError as exc:
            collector.take(parser.read_events())  # what was parsed before the error stands
            return collector.result(f"broken XML: {exc}")
        if collector.take(parser.read_events()):
            return collector.result()
    try:
        parser.close()
    except etree.XMLSyntaxError as exc:
        collector.take(parser.read_events())
        return collector.result(f"broken XML: {exc}")
    collector.take(parser.read_events())
    return collector.result()


class _Collector:
    """Turns pull-parser events into a `Sitemap`, freeing each ``<url>`` once read."""

    def __init__(self, max_locs: int) -> None:
        self.max_locs = max_locs
        self.kind: SitemapKind = "unknown"
        self.parent = ""  # the element a <loc> must sit in, under the root
        self.locs: list[str] = []
        self.depth = 0
        self.error: str | None = None

    def take(self, events: Iterable[tuple[str, etree._Element]]) -> bool:
        """Consume `events`; True when parsing can stop (unknown root, or the cap reached)."""
        for event, element in events:
            if event == "start":
                self.depth += 1
                if self.depth == 1:
                    self.kind, self.parent = _ROOTS.get(_local(element.tag), ("unknown", ""))
                    if self.kind == "unknown":
                        return True
                continue
            if self.depth == 3 and _local(element.tag) == "loc":
                parent = element.getparent()
                if parent is not None and _local(parent.tag) == self.parent:
                    self._add(element)
            elif self.depth == 2:
                element.clear()
                while element.getprevious() is not None:
                    del element.getparent()[0]  # type: ignore[union-attr]
            self.depth -= 1
            if len(self.locs) >= self.max_locs:
                self.error = f"more than {self.max_locs} locs: kept the first ones"
                return True
        return False

    def _add(self, loc: etree._Element) -> None:
        # A child node (an unresolved entity, a comment, an element) means the text is not
        # one URL: dropped rather than cut at the node.
        if len(loc) == 0 and (url := (loc.text or "").strip()):
            self.locs.append(url)

    def result(self, error: str | None = None) -> Sitemap:
        return Sitemap(self.kind, self.locs, error or self.error)


def _local(tag: object) -> str:
    """An element's name without its namespace: sitemaps are read with or without one."""
    return tag.rpartition("}")[2] if isinstance(tag, str) else ""


def _parse_text(chunks: Iterable[bytes], max_locs: int) -> Sitemap:
    """A plain-text sitemap: one absolute http(s) URL per line; other lines are skipped."""
    locs: list[str] = []
    for raw in b"".join(chunks).splitlines():
        try:
            line = raw.strip().decode("utf-8")
        except UnicodeDecodeError:
            continue
        if line[:8].lower().startswith(("http://", "https://")):
            if len(locs) >= max_locs:
                return Sitemap("urlset", locs, f"more than {max_locs} locs: kept the first ones")
            locs.append(line)
    return Sitemap("urlset" if locs else "unknown", locs)


async def expand_sitemaps(
    roots: Sequence[str],
    fetch: Fetch,
    *,
    max_depth: int = MAX_DEPTH,
    max_files: int = MAX_FILES,
    max_urls: int | None = None,
) -> AsyncIterator[str]:
    """Yield the page URLs of sitemap files `roots`, following indexes breadth-first.

    The roots are level 0 and an index's children one level below it; children deeper than
    `max_depth` are not fetched (``max_depth=0``: the roots only). A file is fetched once
    (by canonical URL, which is what `fetch` gets), at most `max_files` in all; a status
    other than 2xx or a None body skips the file, as does an invalid URL. `fetch` is the
    place to refuse a file (scope, robots): return ``(None, None)``. Page URLs come raw,
    each once, at most `max_urls` of them; remembering them costs memory in proportion.
    Parsing runs in a worker thread, so a 50 MiB file does not stall the event loop.
    """
    if max_urls is not None and max_urls <= 0:
        return
    queued: set[str] = set()
    level = _new_files(roots, queued)
    yielded: set[str] = set()
    fetched = 0
    for depth in range(max_depth + 1):
        children: list[str] = []
        for url in level:
            if fetched >= max_files:
                log.debug("sitemaps: stopped at %d files", max_files)
                return
            fetched += 1
            status, body = await fetch(url)
            if status is None or not 200 <= status < 300 or body is None:
                log.debug("sitemaps: skipped %s (status %s)", url, status)
                continue
            sitemap = await asyncio.to_thread(parse_sitemap, body)
            if sitemap.error:
                log.debug("sitemaps: %s: %s", url, sitemap.error)
            if sitemap.kind == "index":
                if depth < max_depth:
                    children += _new_files(sitemap.locs, queued)
                continue
            for page in sitemap.locs:
                if page not in yielded:
                    yielded.add(page)
                    yield page
                    if max_urls is not None and len(yielded) >= max_urls:
                        return
        level = children


def _new_files(urls: Iterable[str], queued: set[str]) -> list[str]:
    """The canonical form of each URL not queued before, in order; marks them queued."""
    new = []
    for url in urls:
        try:
            canonical = canonicalize(url)
        except InvalidURL:
            continue
        if canonical not in queued:
            queued.add(canonical)
            new.append(canonical)
    return new
