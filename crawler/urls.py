"""URL intake: read seed URLs one per line, validate them and put them in canonical form.

Pure apart from reading the stream it is given. Two URLs that a server treats as the same
resource should give the same string here, because that string is what the Redis frontier
dedupes on; everything a crawler cannot fetch (other schemes, no host, a bad port, an
invalid IDNA name) is rejected with a `RejectReason` instead of failing later in an engine.

Choices worth knowing:

* Userinfo (``user:pass@``) is *kept*: a seed list may deliberately carry basic-auth
  credentials, and dropping them would silently change the request. It is never shown to a
  user: `Rejected.text` and `mask_userinfo` replace the password with ``***``.
* Default ports (``:80`` for http, ``:443`` for https) are dropped, port 0 is rejected.
* Hosts: lowercased; a non-ASCII host goes through IDNA 2008 with UTS #46 mapping (the
  ``idna`` package), so ``bücher.de`` and ``xn--bcher-kva.de`` are one host; ASCII hosts
  may hold ``_`` (common in real subdomains, although IDNA forbids it); a host whose last
  label is numeric must be a dotted-quad IPv4 address; IPv6 literals stay in brackets, in
  RFC 5952 form, and zone ids are rejected (a crawler cannot use link-local addresses).
* Path, query and percent-encoding are left to `w3lib.url.canonicalize_url`: dot segments
  resolved, query arguments sorted, spaces become ``%20`` in the path and ``+`` in the query,
  ``%xx`` upper-cased (or decoded when unreserved), fragment dropped.
* A raw line is at most `MAX_URL_LENGTH` bytes after stripping, and so is the canonical form.
* Speed: a URL already in simple canonical form (``http://127.0.0.1:8080/page/1``,
  ``https://www.example.com/a?x=1&y=2``) is recognised by one regex and returned without
  w3lib, ~15-25x faster; tests check with hypothesis that both paths always agree.
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import re
import sys
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, BinaryIO, TextIO
from urllib.parse import SplitResult, unquote, urlsplit, urlunsplit

import idna
import orjson
from w3lib.url import canonicalize_url

from crawler.errors import InputError

__all__ = [
    "MAX_URL_LENGTH",
    "IntakeStats",
    "InvalidURL",
    "RejectReason",
    "Rejected",
    "accept_urls",
    "canonicalize",
    "iter_urls",
    "mask_userinfo",
    "open_source",
]

#: Longest accepted URL, raw line or canonical form. 2048 is what old browsers and many
#: servers and CDNs still cap a request line near; longer seeds are almost always garbage.
MAX_URL_LENGTH = 2048
#: How many rejected lines `IntakeStats` keeps as examples: enough to spot a pattern.
MAX_EXAMPLES = 5
#: Width of a rejected line shown to a user: one terminal line.
DISPLAY_WIDTH = 80

DEFAULT_PORTS = {"http": 80, "https": 443}
_UTF8_BOM = b"\xef\xbb\xbf"
_ASCII_WHITESPACE = " \t\r\n\f\v"
#: Longest JSON request line (crawler.request): bodies and meta ride in Redis with the URL.
MAX_REQUEST_LINE = 64 * 1024
# One read of a physical line: a maximal URL plus room for indentation and CRLF. Anything
# longer is rejected without ever holding more than this (and one discard chunk) in memory;
# a line that starts with "{" (a JSON request) may go on to _JSON_READ_LIMIT.
_READ_LIMIT = MAX_URL_LENGTH + 64
_JSON_READ_LIMIT = MAX_REQUEST_LINE + 64
_DISCARD_CHUNK = 16 * 1024
# C0 controls, DEL and C1 controls: never part of a URL someone meant to type.
_CONTROL_CHARS = re.compile("[\x00-\x1f\x7f-\x9f]")
_ASCII_LABEL = re.compile(r"[a-z0-9_-]{1,63}\Z")
_MAX_HOST_LENGTH = 253
# Scheme, "//", user, ":" then password up to the last "@" of the authority (as urllib splits).
_PASSWORD = re.compile(r"^((?:[A-Za-z][A-Za-z0-9+.\-]*:)?//[^/?#@:]*:)[^/?#]*@")

# The fast path of `canonicalize`: URLs the slow path would return unchanged (but for a "/"
# added to an empty path), recognised without parsing. Only lowercase http(s); no userinfo;
# a lowercase ASCII host that `_check_ascii_host` accepts as is (labels of 1-63 of
# [a-z0-9_-], no "xn--" label, at most 253 characters, no trailing dot, a numeric last label
# only in a dotted-quad IPv4 address without leading zeros, no "0x..." last label: the URL
# Standard reads both as IPv4 numbers); a port of 1-65535 without a
# leading zero that is not the scheme's default; a path of characters w3lib never quotes
# ("%", ";", "[", "]", "|" excluded) with no "." or ".." segment; an optional query of
# non-empty ``key=value`` fields over [A-Za-z0-9._~+-] (sortedness is checked in code); no
# fragment. Anything else, including a near miss, goes through `_canonicalize_slow`.
_AUTHORITY_END = r"(?:[:/?]|\Z)"
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_FAST_LABEL = r"(?!xn--)[a-z0-9_-]{1,63}"
_FAST_HOST = (
    rf"(?:(?:{_OCTET}\.){{3}}{_OCTET}"
    rf"|(?=[a-z0-9._-]{{1,253}}{_AUTHORITY_END})"
    rf"(?:{_FAST_LABEL}\.)*(?!(?:[0-9]+|0x[0-9a-f]*){_AUTHORITY_END}){_FAST_LABEL})"
)
_FAST_PORT = (
    r"(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3})"
)
_FAST_FIELD = r"[A-Za-z0-9._~+-]*=[A-Za-z0-9._~+-]*"
_FAST_URL = re.compile(
    rf"(?:http://{_FAST_HOST}(?::(?!80(?:[/?]|\Z)){_FAST_PORT})?"
    rf"|https://{_FAST_HOST}(?::(?!443(?:[/?]|\Z)){_FAST_PORT})?)"
    r"(?P<path>(?:/(?!\.\.?(?:[/?]|\Z))[A-Za-z0-9._~!$&'()*+,=:@-]*)*)"
    rf"(?:\?(?P<query>{_FAST_FIELD}(?:&{_FAST_FIELD})*))?"
)


class RejectReason(StrEnum):
    """Why an input line is not a crawlable URL; values are shown to users."""

    TOO_LONG = "too_long"
    NOT_UTF8 = "not_utf8"
    CONTROL_CHARS = "control_chars"
    UNPARSEABLE = "unparseable"
    MISSING_SCHEME = "missing_scheme"
    BAD_SCHEME = "bad_scheme"
    EMPTY_HOST = "empty_host"
    BAD_HOST = "bad_host"
    BAD_PORT = "bad_port"
    BAD_REQUEST = "bad_request"  # a JSON request line (crawler.request) that is not valid


class InvalidURL(ValueError):
    """A URL that `canonicalize` refuses; `reason` says which rule it broke."""

    def __init__(self, reason: RejectReason, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else str(reason))
        self.reason = reason


def canonicalize(raw: str) -> str:
    """Return the canonical form of an http(s) URL, or raise `InvalidURL`.

    Idempotent: ``canonicalize(canonicalize(x)) == canonicalize(x)``. Never raises anything
    but `InvalidURL`, so intake can count every bad line instead of crashing on one.

    A URL already in canonical form and simple (see `_FAST_URL`) is returned as is, without
    parsing; everything else goes through `_canonicalize_slow`, which gives the same answer
    for those URLs too (tests/test_urls.py checks fast == slow with hypothesis).
    """
    text = raw.strip(_ASCII_WHITESPACE)
    if len(text) < MAX_URL_LENGTH and (m := _FAST_URL.fullmatch(text)) is not None:
        query = m["query"]
        if query is None or "&" not in query or _query_is_sorted(query):
            path_end = m.end("path")
            if m.start("path") == path_end:  # no path: canonical form has "/"
                return f"{text[:path_end]}/{text[path_end:]}"
            return text
    return _canonicalize_slow(raw)


def _query_is_sorted(query: str) -> bool:
    """Whether w3lib's sort would keep the ``key=value`` fields of a `_FAST_URL` query in order.

    w3lib sorts ``(unquote_plus(key), unquote_plus(value))`` pairs as bytes. In the fast
    alphabet unquoting only maps "+" to " ", and both sort below every other allowed
    character, so the raw ASCII strings sort alike. Every field has exactly one "=", and
    ``key + "\\0" + value`` sorts like the pair because NUL sorts below every character.
    """
    fields = query.replace("=", "\0").split("&")
    return fields == sorted(fields)


def _canonicalize_slow(raw: str) -> str:
    """`canonicalize` for any input: parse, check and rebuild with w3lib."""
    text = raw.strip(_ASCII_WHITESPACE)
    if len(text) > MAX_URL_LENGTH:
        raise InvalidURL(RejectReason.TOO_LONG, f"{len(text)} characters")
    if _CONTROL_CHARS.search(text):
        raise InvalidURL(RejectReason.CONTROL_CHARS)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates, e.g. from surrogateescape decoding
        raise InvalidURL(RejectReason.NOT_UTF8) from None
    try:
        parts = urlsplit(text)
    except ValueError as exc:  # unbalanced brackets, netloc broken by NFKC normalisation
        raise InvalidURL(RejectReason.UNPARSEABLE, str(exc)) from None
    if not parts.scheme:
        raise InvalidURL(RejectReason.MISSING_SCHEME)
    if parts.scheme not in DEFAULT_PORTS:  # urlsplit has already lowercased the scheme
        raise InvalidURL(RejectReason.BAD_SCHEME, parts.scheme)
    netloc = _canonical_netloc(parts)
    try:
        url = canonicalize_url(
            urlunsplit((parts.scheme, netloc, parts.path, parts.query, "")),
            keep_fragments=False,
        )
    except (ValueError, UnicodeError) as exc:
        raise InvalidURL(RejectReason.UNPARSEABLE, str(exc)) from None
    if len(url) > MAX_URL_LENGTH:
        raise InvalidURL(RejectReason.TOO_LONG, f"{len(url)} characters once canonical")
    return url


def _canonical_netloc(parts: SplitResult) -> str:
    """Rebuild ``userinfo@host:port`` with an encoded host and without a default port."""
    try:
        port = parts.port
    except ValueError as exc:  # not a number, or out of 0-65535
        raise InvalidURL(RejectReason.BAD_PORT, str(exc)) from None
    if port == 0:
        raise InvalidURL(RejectReason.BAD_PORT, "port 0")
    if not parts.hostname:
        raise InvalidURL(RejectReason.EMPTY_HOST)
    userinfo, _, hostport = parts.netloc.rpartition("@")
    result = f"{userinfo}@" if userinfo else ""
    result += _canonical_host(parts.hostname, bracketed=hostport.startswith("["))
    if port is not None and port != DEFAULT_PORTS[parts.scheme]:
        result += f":{port}"
    return result


def _canonical_host(hostname: str, *, bracketed: bool) -> str:
    """Return the ASCII form of a host urlsplit has already lowercased and unbracketed."""
    if bracketed:
        try:
            address = ipaddress.IPv6Address(hostname)
        except ValueError:  # IPvFuture, or a zone id not percent-encoded
            raise InvalidURL(RejectReason.BAD_HOST, hostname) from None
        if address.scope_id:
            raise InvalidURL(RejectReason.BAD_HOST, "IPv6 zone id")
        return f"[{address.compressed}]"
    try:
        # Browsers percent-decode a host before anything else (URL Standard, host parser).
        host = unquote(hostname, errors="strict").lower()
        if not host.isascii():
            host = idna.encode(host, uts46=True).decode("ascii")
    except (idna.IDNAError, UnicodeError, ValueError) as exc:
        raise InvalidURL(RejectReason.BAD_HOST, str(exc)) from None
    _check_ascii_host(host)
    return host


def _check_ascii_host(host: str) -> None:
    """Reject a lowercase ASCII host that no resolver would accept."""
    labels = host.removesuffix(".").split(".")
    if len(host.removesuffix(".")) > _MAX_HOST_LENGTH:
        raise InvalidURL(RejectReason.BAD_HOST, "host longer than 253 characters")
    if not all(_ASCII_LABEL.match(label) for label in labels):
        raise InvalidURL(RejectReason.BAD_HOST, host)
    if labels[-1].isdigit():  # the URL Standard parses such a host as IPv4
        try:
            ipaddress.IPv4Address(host.removesuffix("."))
        except ValueError:
            raise InvalidURL(RejectReason.BAD_HOST, "not an IPv4 address") from None
    for label in labels:
        if label.startswith("xn--"):
            try:
                idna.decode(label)
            except (idna.IDNAError, UnicodeError):
                raise InvalidURL(RejectReason.BAD_HOST, f"bad A-label {label}") from None


def mask_userinfo(url: str) -> str:
    """Replace the password in ``scheme://user:password@host`` with ``***`` for display."""
    return _PASSWORD.sub(r"\1***@", url, count=1)


def _display(line: bytes) -> str:
    """Make a raw line safe to print: escaped, password masked, one terminal line wide."""
    text = mask_userinfo(line.decode("utf-8", "backslashreplace"))[: DISPLAY_WIDTH + 1]
    text = "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)
    if len(text) > DISPLAY_WIDTH:
        text = text[: DISPLAY_WIDTH - 3] + "..."
    return text


@dataclass
class Rejected:
    """One rejected input line, kept as an example for the user."""

    lineno: int
    text: str
    reason: RejectReason
    detail: str = ""  # what exactly is wrong (JSON request lines)


@dataclass
class IntakeStats:
    """Counts of what intake did with each line; the caller prints `summary()` to stderr."""

    lines: int = 0
    accepted: int = 0
    rejected: int = 0
    skipped: int = 0  # blank lines and comments
    duplicates: int = 0  # incremented by the caller: dedupe happens downstream, in Redis
    over_limit: int = 0  # dropped downstream too: beyond the job's max_pages
    # Why reading stopped before the end (an I/O error): the input ended there, and what was
    # accepted before it stands. None when the input was read to its end.
    read_error: str | None = None
    # The line a submit stopped reading at, its job holding --max-queued URLs (None: not hit).
    stopped_at: int | None = None
    by_reason: Counter[RejectReason] = field(default_factory=Counter)
    examples: list[Rejected] = field(default_factory=list)

    def reject(self, lineno: int, line: bytes, reason: RejectReason, detail: str = "") -> None:
        """Count a rejected line and keep it as an example if it is among the first few."""
        self.rejected += 1
        self.by_reason[reason] += 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(Rejected(lineno, _display(line), reason, detail))

    def summary(self) -> str:
        """A few lines for stderr: the totals, then the first rejected lines."""
        head = f"read {self.lines} lines: {self.accepted} accepted, {self.rejected} rejected"
        if self.by_reason:
            ordered = sorted(self.by_reason.items(), key=lambda kv: (-kv[1], kv[0]))
            head += " (" + ", ".join(f"{reason}: {n}" for reason, n in ordered) + ")"
        head += f", {self.skipped} skipped, {self.duplicates} duplicates"
        if self.over_limit:
            head += f", {self.over_limit} over --max-pages"
        lines = [head]
        lines += [f"  line {r.lineno}: {r.reason}: {r.detail + ': ' if r.detail else ''}"
                  f"{r.text}" for r in self.examples]
        if self.rejected > len(self.examples):
            lines.append(f"  ... and {self.rejected - len(self.examples)} more rejected lines")
        return "\n".join(lines)


@contextmanager
def open_source(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """Open a URL list for binary reading; ``"-"`` is stdin, which is left open afterwards.

    Raises `InputError` with a one-line message when the file cannot be opened.
    """
    if isinstance(path, str) and path == "-":
        stdin = getattr(sys.stdin, "buffer", None)
        if stdin is None:
            raise InputError("cannot read stdin: it is closed or not a byte stream")
        yield stdin
        return
    try:
        stream = open(path, "rb")  # noqa: SIM115 - closed by the with below
    except OSError as exc:
        raise InputError(f"cannot read {os.fsdecode(path)}: {exc.strerror or exc}") from None
    with stream:
        yield stream


def iter_urls(
    source: BinaryIO | TextIO | str | os.PathLike[str], stats: IntakeStats
) -> Iterator[str]:
    """Yield the canonical URL of each valid line of `source`, counting every line in `stats`.

    `source` is a path, ``"-"`` for stdin, or an open binary or text stream (not closed
    here). Lazy and bounded in memory: one line of at most ``_READ_LIMIT`` bytes at a time.
    A path is opened on the first ``next()``, so `InputError` surfaces there. Does not
    dedupe: the frontier does that in Redis, across jobs.
    """
    if isinstance(source, str | os.PathLike):
        with open_source(source) as stream:
            yield from _iter_stream(stream, stats)
    else:
        yield from _iter_stream(source, stats)


def accept_urls(urls: Iterable[str | Mapping[str, Any]], stats: IntakeStats) -> Iterator[str]:
    """The same intake for the Python API's `submit(urls)`: URL strings, JSON request strings,
    or request mappings (``{"url": ..., "method": "POST", "json": {...}, "meta": ...}``).
    Runs of strings go through the file intake as they are; mappings are parsed here."""
    for strings, group in itertools.groupby(enumerate(urls, 1),
                                             key=lambda item: isinstance(item[1], str)):
        if strings:
            yield from _accept(((n, u.encode("utf-8", "surrogatepass"),  # type: ignore[union-attr]
                                 len(u) <= _READ_LIMIT) for n, u in group), stats)
            continue
        for n, obj in group:
            stats.lines += 1
            try:
                entry = _request().parse_object(obj).entry
            except (_request().BadRequest, InvalidURL) as exc:
                stats.reject(n, orjson.dumps(obj, default=repr), *_why(exc))
                continue
            stats.accepted += 1
            yield entry


def _request() -> Any:
    """crawler.request, which imports this module (so not at the top)."""
    from crawler import request

    return request


def _iter_stream(stream: BinaryIO | TextIO, stats: IntakeStats) -> Iterator[str]:
    return _accept(_lines_until_error(stream, stats), stats)


def _lines_until_error(
    stream: BinaryIO | TextIO, stats: IntakeStats
) -> Iterator[tuple[int, bytes, bool]]:
    """`_physical_lines`, ending at a read error (noted in `stats`) instead of raising it.

    The URLs accepted before the error have already gone downstream (a job's batches, a
    crawl): ending the input keeps them, where an exception would abandon them half-done.
    """
    try:
        yield from _physical_lines(stream)
    except (OSError, UnicodeDecodeError) as exc:
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        stats.read_error = f"cannot read the input after line {stats.lines}: {detail}"


def _accept(lines: Iterable[tuple[int, bytes, bool]], stats: IntakeStats) -> Iterator[str]:
    """Entries (crawler.request) of the accepted lines: the canonical URL of a URL line, the
    entry of a JSON request line (one that starts with "{")."""
    # The per-line work is kept to a minimum (no helper calls on the common path): with the
    # fast path of `canonicalize`, reading and counting are a large share of intake.
    for lineno, line, complete in lines:
        stats.lines += 1
        if lineno == 1:
            line = line.removeprefix(_UTF8_BOM)
        line = line.strip()
        if line.startswith(b"#") or (complete and not line):
            stats.skipped += 1
            continue
        if line[0] == 0x7B:  # "{": a JSON request line (an index allocates nothing)
            entry = _json_line(lineno, line, complete, stats)
            if entry is not None:
                yield entry
            continue
        if not complete or len(line) > MAX_URL_LENGTH:
            stats.reject(lineno, line, RejectReason.TOO_LONG)
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            stats.reject(lineno, line, RejectReason.NOT_UTF8)
            continue
        try:
            url = canonicalize(text)
        except InvalidURL as exc:
            stats.reject(lineno, line, exc.reason)
            continue
        stats.accepted += 1
        yield url


def _json_line(lineno: int, line: bytes, complete: bool, stats: IntakeStats) -> str | None:
    """The entry of a JSON request line, or None (rejected and counted). Out of `_accept`'s
    loop: the loop stays short (under tracemalloc, every allocation scans its line table)."""
    request = _request()
    if not complete or len(line) > MAX_REQUEST_LINE:
        stats.reject(lineno, line, RejectReason.TOO_LONG,
                     f"a JSON line holds at most {MAX_REQUEST_LINE} bytes")
        return None
    try:
        entry = request.parse_line(line.decode("utf-8")).entry
    except UnicodeDecodeError:
        stats.reject(lineno, line, RejectReason.NOT_UTF8)
        return None
    except (request.BadRequest, InvalidURL) as exc:
        stats.reject(lineno, line, *_why(exc))
        return None
    stats.accepted += 1
    return str(entry)


def _why(exc: ValueError) -> tuple[RejectReason, str]:
    """A JSON request's reject reason: its URL's own reason, or bad_request and the detail."""
    if isinstance(exc, InvalidURL):
        return exc.reason, "url"
    return RejectReason.BAD_REQUEST, str(exc)


def _physical_lines(stream: BinaryIO | TextIO) -> Iterator[tuple[int, bytes, bool]]:
    """Yield ``(lineno, first bytes of the line, whether that is the whole line)``.

    An over-long line yields only its first ``_READ_LIMIT`` units; the rest is read in
    chunks and dropped, so a multi-gigabyte line costs no more memory than a short one.
    """
    lineno = 0
    readline = stream.readline
    while chunk := readline(_READ_LIMIT):
        lineno += 1
        if type(chunk) is bytes and (chunk[-1] == 10 or len(chunk) < _READ_LIMIT):
            yield lineno, chunk, True  # the common case: a whole line from a binary stream
            continue
        newline = "\n" if isinstance(chunk, str) else b"\n"
        limit = _READ_LIMIT
        if len(chunk) == _READ_LIMIT and not chunk.endswith(newline) and (  # type: ignore[arg-type]
                chunk.lstrip()[:1] in ("{", b"{")):
            chunk += readline(_JSON_READ_LIMIT - _READ_LIMIT)  # type: ignore[operator]
            limit = _JSON_READ_LIMIT
        complete = chunk.endswith(newline) or len(chunk) < limit  # type: ignore[arg-type]
        rest = chunk
        while not complete and rest and not rest.endswith(newline):  # type: ignore[arg-type]
            rest = readline(_DISCARD_CHUNK)
        yield lineno, _to_bytes(chunk), complete


def _to_bytes(chunk: str | bytes) -> bytes:
    """Bytes of a line read from a text stream, undoing surrogateescape decoding."""
    if isinstance(chunk, bytes):
        return chunk
    try:
        return chunk.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that did not come from a byte: invalid UTF-8
        return chunk.encode("utf-8", "surrogatepass")
