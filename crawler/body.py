"""A capped, incremental Content-Encoding decoder: a gzip bomb stops at the cap.

Engines read the body *undecoded* and feed the raw chunks here. Decompression asks zlib for
at most `OUT_STEP` bytes at a time (`decompress(data, max_length)`), so memory never holds
more than the kept body (if any) plus one step, however well the input compresses.
"""

from __future__ import annotations

import zlib

# Decompressed bytes produced per zlib call: small enough to bound memory, large enough to be fast.
OUT_STEP = 64 * 1024

_GZIP = 16 + zlib.MAX_WBITS  # gzip header and trailer
_ZLIB = zlib.MAX_WBITS  # RFC 1950 "deflate" as the spec says
_RAW = -zlib.MAX_WBITS  # bare RFC 1951 deflate, which many servers send as "deflate"


class BadEncoding(Exception):
    """The body is not valid for its Content-Encoding (corrupt or truncated gzip/deflate)."""


class TooLarge(Exception):
    """The decoded body grew past max_bytes."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(f"decoded body exceeds max_bytes={max_bytes}")
        self.max_bytes = max_bytes


def coding_of(content_encoding: str | None) -> str:
    """'gzip' | 'deflate' | 'identity', or 'raw' for codings we pass through undecoded."""
    codings = [c.strip().lower() for c in (content_encoding or "").split(",") if c.strip()]
    codings = [c for c in codings if c != "identity"]
    if not codings:
        return "identity"
    if len(codings) == 1 and codings[0] in ("gzip", "x-gzip"):
        return "gzip"
    if codings == ["deflate"]:
        return "deflate"
    return "raw"  # unknown or stacked codings: counted and kept as received


def _is_zlib_header(head: bytes) -> bool:
    cmf, flg = head[0], head[1]
    return cmf & 0x0F == 8 and (cmf << 8 | flg) % 31 == 0


class BodyDecoder:
    """Feeds raw chunks, counts decoded bytes, raises TooLarge past `max_bytes`.

    `keep=True` also collects the decoded body (then memory is at most max_bytes + one step).
    """

    def __init__(self, content_encoding: str | None, max_bytes: int, *, keep: bool = False) -> None:
        self.coding = coding_of(content_encoding)
        self.max_bytes = max_bytes
        self.keep = keep
        self.size = 0
        self._parts: list[bytes] = []
        self._pending = b""  # deflate: bytes held until the header tells zlib from raw
        self._z: zlib._Decompress | None = None
        if self.coding == "gzip":
            self._z = zlib.decompressobj(_GZIP)

    @property
    def body(self) -> bytes | None:
        return b"".join(self._parts) if self.keep else None

    def feed(self, chunk: bytes) -> int:
        """Decode one raw chunk; returns the decoded bytes it produced."""
        if self.coding in ("identity", "raw"):
            self._emit(chunk)
            return len(chunk)
        if self._z is None:  # deflate, flavour not known yet
            self._pending += chunk
            if len(self._pending) < 2:
                return 0
            self._z = zlib.decompressobj(_ZLIB if _is_zlib_header(self._pending) else _RAW)
            chunk, self._pending = self._pending, b""
        return self._inflate(chunk)

    def finish(self) -> int:
        """Flush what zlib still holds; returns the decoded bytes it produced."""
        if self._pending:  # a deflate body shorter than two bytes
            self._z = zlib.decompressobj(_RAW)
            produced = self._inflate(self._pending)
            self._pending = b""
            return produced
        if self._z is None or self._z.eof:
            return 0
        produced = self._inflate(b"")
        try:
            tail = self._z.flush(OUT_STEP)
        except zlib.error as exc:
            raise BadEncoding(f"invalid {self.coding} body: {exc}") from exc
        self._emit(tail)
        return produced + len(tail)

    def _inflate(self, data: bytes) -> int:
        assert self._z is not None
        produced = 0
        while True:
            if self._z.eof:  # trailing garbage after the stream: ignored
                return produced
            try:
                out = self._z.decompress(data, OUT_STEP)
            except zlib.error as exc:
                raise BadEncoding(f"invalid {self.coding} body: {exc}") from exc
            self._emit(out)
            produced += len(out)
            data = self._z.unconsumed_tail
            # A full step may leave output pending inside zlib even with no input left.
            if not data and len(out) < OUT_STEP:
                return produced

    def _emit(self, out: bytes) -> None:
        if not out:
            return
        self.size += len(out)
        if self.size > self.max_bytes:
            raise TooLarge(self.max_bytes)
        if self.keep:
            self._parts.append(out)
