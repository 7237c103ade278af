"""The capped Content-Encoding decoder: correct output, exact cap, bounded memory."""

from __future__ import annotations

import gzip
import tracemalloc
import zlib

import pytest

from crawler.body import OUT_STEP, BadEncoding, BodyDecoder, TooLarge, coding_of

TEXT = b"<html>" + b"hello world " * 500 + b"</html>"


def raw_deflate(data: bytes) -> bytes:
    z = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    return z.compress(data) + z.flush()


def decode(encoding: str | None, data: bytes, *, step: int = 4096, cap: int = 1 << 20) -> bytes:
    dec = BodyDecoder(encoding, cap, keep=True)
    for i in range(0, len(data), step):
        dec.feed(data[i : i + step])
    dec.finish()
    assert dec.body is not None
    assert dec.size == len(dec.body)
    return dec.body


@pytest.mark.parametrize(
    ("header", "coding"),
    [
        pytest.param(None, "identity", id="none"),
        pytest.param("", "identity", id="empty"),
        pytest.param("identity", "identity", id="identity"),
        pytest.param("gzip", "gzip", id="gzip"),
        pytest.param("X-GZIP", "gzip", id="x-gzip-upper"),
        pytest.param(" deflate ", "deflate", id="deflate-spaces"),
        pytest.param("gzip, identity", "gzip", id="gzip-identity"),
        pytest.param("br", "raw", id="unknown"),
        pytest.param("deflate, gzip", "raw", id="stacked"),
    ],
)
def test_coding_of(header: str | None, coding: str) -> None:
    assert coding_of(header) == coding


@pytest.mark.parametrize(
    ("encoding", "encoded"),
    [
        pytest.param(None, TEXT, id="identity"),
        pytest.param("gzip", gzip.compress(TEXT), id="gzip"),
        pytest.param("x-gzip", gzip.compress(TEXT), id="x-gzip"),
        pytest.param("deflate", zlib.compress(TEXT), id="deflate-zlib"),
        pytest.param("deflate", raw_deflate(TEXT), id="deflate-raw"),
    ],
)
@pytest.mark.parametrize("step", [1, 7, 4096, 1 << 20])
def test_decodes_in_any_chunking(encoding: str | None, encoded: bytes, step: int) -> None:
    assert decode(encoding, encoded, step=step) == TEXT


def test_unknown_encoding_passes_through_raw() -> None:
    data = gzip.compress(TEXT)
    assert decode("br", data) == data


def test_body_not_kept_unless_asked() -> None:
    dec = BodyDecoder("gzip", 1 << 20)
    assert dec.feed(gzip.compress(TEXT)) + dec.finish() == len(TEXT)
    assert dec.size == len(TEXT)
    assert dec.body is None


@pytest.mark.parametrize("encoding", [None, "gzip"])
def test_cap_is_exact(encoding: str | None) -> None:
    data = b"x" * 1000
    encoded = gzip.compress(data) if encoding else data
    dec = BodyDecoder(encoding, 1000)
    dec.feed(encoded)
    dec.finish()
    assert dec.size == 1000
    with pytest.raises(TooLarge, match="max_bytes=999"):
        over = BodyDecoder(encoding, 999)
        over.feed(encoded)
        over.finish()


def test_gzip_bomb_stops_at_cap_with_bounded_memory() -> None:
    # Given 64 MiB of zeros compressed to ~64 KiB, fed as one chunk
    bomb = gzip.compress(bytes(64 << 20), compresslevel=9)
    cap = 1 << 20
    dec = BodyDecoder("gzip", cap)
    tracemalloc.start()
    try:
        with pytest.raises(TooLarge):
            dec.feed(bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Then it stopped just past the cap, and with keep=False not even the cap was ever held
    assert cap < dec.size <= cap + OUT_STEP
    assert peak < cap


def test_kept_body_is_bounded_by_cap() -> None:
    bomb = gzip.compress(bytes(32 << 20), compresslevel=9)
    dec = BodyDecoder("gzip", 1 << 20, keep=True)
    with pytest.raises(TooLarge):
        dec.feed(bomb)
    assert dec.body is not None and len(dec.body) <= 1 << 20


def test_pending_output_drained_without_more_input() -> None:
    # One tiny input chunk that expands far beyond one OUT_STEP must be fully decoded.
    data = bytes(10 * OUT_STEP + 5)
    assert decode("gzip", gzip.compress(data), step=1 << 20, cap=len(data)) == data


def test_trailing_garbage_after_gzip_is_ignored() -> None:
    assert decode("gzip", gzip.compress(TEXT) + b"garbage") == TEXT


def test_corrupt_gzip_is_bad_encoding() -> None:
    dec = BodyDecoder("gzip", 1 << 20)
    with pytest.raises(BadEncoding, match="invalid gzip body"):
        dec.feed(b"\x1f\x8b\x08\x00" + b"\xff" * 100)


def test_empty_and_one_byte_deflate_bodies() -> None:
    assert decode("gzip", b"") == b""
    dec = BodyDecoder("deflate", 100)
    dec.feed(b"\x03")  # shorter than the two bytes that tell zlib from raw deflate
    dec.finish()
    assert dec.size == 0
