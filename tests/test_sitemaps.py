"""Sitemaps (crawler.sitemaps): robots.txt lines, parsing hostile files, index expansion."""

from __future__ import annotations

import gzip
import socket
import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crawler.sitemaps import (
    MAX_SITEMAP_BYTES,
    Sitemap,
    expand_sitemaps,
    parse_sitemap,
    sitemaps_in_robots,
)

NS = 'xmlns="http://www.sitemaps.org/schemas/sitemap/0.9"'


def urlset(*locs: str, ns: str = NS) -> bytes:
    urls = "".join(f"<url><loc>{loc}</loc><lastmod>2024-01-01</lastmod></url>" for loc in locs)
    return f'<?xml version="1.0" encoding="UTF-8"?>\n<urlset {ns}>{urls}</urlset>'.encode()


def index(*locs: str, ns: str = NS) -> bytes:
    maps = "".join(f"<sitemap><loc>{loc}</loc></sitemap>" for loc in locs)
    return f'<?xml version="1.0"?><sitemapindex {ns}>{maps}</sitemapindex>'.encode()


def gzip_bomb(head: bytes, pad: bytes, count: int) -> bytes:
    """One gzip member decoding to ``head + pad * count`` without compressing it all: after a
    full flush the compressor starts afresh, so each pad compresses to the same block, which
    is repeated. The trailer is left out, as a cap must stop reading long before it."""
    deflate = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    first = deflate.compress(head) + deflate.flush(zlib.Z_FULL_FLUSH)
    block = deflate.compress(pad) + deflate.flush(zlib.Z_FULL_FLUSH)
    assert block == deflate.compress(pad) + deflate.flush(zlib.Z_FULL_FLUSH)
    return b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + first + block * count


# --- robots.txt -------------------------------------------------------------------------


def test_sitemap_lines_anywhere_any_case_each_once_in_order() -> None:
    robots = (
        "\ufeffSitemap: https://a.test/first.xml\n"
        "User-agent: *\nDisallow: /private\n"
        "SITEMAP:https://a.test/second.xml.gz  # comment\n"
        "User-agent: bot\n  sitemap :  http://cdn.test/third.xml  \r\n"
        "Sitemap: https://a.test/first.xml\n"
    )
    assert sitemaps_in_robots(robots) == [
        "https://a.test/first.xml",
        "https://a.test/second.xml.gz",
        "http://cdn.test/third.xml",
    ]


@pytest.mark.parametrize(
    "line",
    [
        pytest.param("Sitemap: /relative.xml", id="relative"),
        pytest.param("Sitemap: ftp://a.test/s.xml", id="ftp"),
        pytest.param("Sitemap: https:///no-host.xml", id="no-host"),
        pytest.param("Sitemap:", id="empty"),
        pytest.param("Sitemap: http://[::1/x", id="unparseable"),
        pytest.param("Sitemaps-index: https://a.test/s.xml", id="other-field"),
        pytest.param("# Sitemap: https://a.test/s.xml", id="commented-out"),
        pytest.param("Sitemap https://a.test/s.xml", id="no-colon"),
    ],
)
def test_sitemap_lines_that_are_not_absolute_http_urls_are_skipped(line: str) -> None:
    assert sitemaps_in_robots(f"User-agent: *\n{line}\n") == []


# --- parsing ----------------------------------------------------------------------------


def test_urlset() -> None:
    body = urlset("https://a.test/1", "  \n https://a.test/2?x=1&amp;y=2\n  ")
    assert parse_sitemap(body) == Sitemap(
        "urlset", ["https://a.test/1", "https://a.test/2?x=1&y=2"]
    )


def test_byte_order_mark_and_leading_whitespace() -> None:
    body = b"\xef\xbb\xbf\n  " + urlset("https://a.test/1")
    assert parse_sitemap(body).locs == ["https://a.test/1"]
    assert parse_sitemap(gzip.compress(body)).locs == ["https://a.test/1"]


def test_index() -> None:
    body = index("https://a.test/s1.xml", "https://a.test/s2.xml.gz")
    assert parse_sitemap(body) == Sitemap(
        "index", ["https://a.test/s1.xml", "https://a.test/s2.xml.gz"]
    )


@pytest.mark.parametrize(
    "ns",
    [
        pytest.param("", id="no-namespace"),
        pytest.param('xmlns="http://www.google.com/schemas/sitemap/0.84"', id="old-namespace"),
    ],
)
def test_any_namespace_or_none(ns: str) -> None:
    assert parse_sitemap(urlset("https://a.test/1", ns=ns)).locs == ["https://a.test/1"]
    assert parse_sitemap(index("https://a.test/s.xml", ns=ns)).kind == "index"


def test_prefixed_namespace_and_extension_locs() -> None:
    body = (
        b'<sm:urlset xmlns:sm="http://www.sitemaps.org/schemas/sitemap/0.9"'
        b' xmlns:image="http://www.google.com/schemas/sitemap-image/1.1">'
        b"<sm:url><sm:loc>https://a.test/page</sm:loc>"
        b"<image:image><image:loc>https://a.test/photo.jpg</image:loc></image:image></sm:url>"
        b"<sm:loc>https://a.test/stray</sm:loc></sm:urlset>"
    )
    assert parse_sitemap(body) == Sitemap("urlset", ["https://a.test/page"])


def test_plain_text_sitemap() -> None:
    body = b"\xef\xbb\xbf\r\nhttps://a.test/1\r\n\r\n  http://a.test/2  \nnot a url\n\xff\xfe\nHTTPS://A.test/3"
    assert parse_sitemap(body) == Sitemap(
        "urlset", ["https://a.test/1", "http://a.test/2", "HTTPS://A.test/3"]
    )


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b" \n\t ", id="whitespace"),
        pytest.param(b'{"urls": ["https://a.test/"]}', id="json"),
        pytest.param(b"<!doctype html><html><body><a href='/x'>x</a></body></html>", id="html"),
        pytest.param(
            b'<rss version="2.0"><channel><link>https://a.test/</link></channel></rss>', id="rss"
        ),
    ],
)
def test_not_a_sitemap_is_unknown(body: bytes) -> None:
    sitemap = parse_sitemap(body)
    assert sitemap.kind == "unknown" and sitemap.locs == []


def test_broken_xml_keeps_what_came_before() -> None:
    body = urlset("https://a.test/1", "https://a.test/2")[:-12] + b"<url><loc>https://a.test/3</lo"
    sitemap = parse_sitemap(body)
    assert sitemap.kind == "urlset"
    assert sitemap.locs == ["https://a.test/1", "https://a.test/2"]
    assert sitemap.error is not None and sitemap.error.startswith("broken XML: ")
    assert "\n" not in sitemap.error


def test_loc_cap() -> None:
    sitemap = parse_sitemap(urlset(*(f"https://a.test/{i}" for i in range(10))), max_locs=4)
    assert sitemap.locs == [f"https://a.test/{i}" for i in range(4)]
    assert sitemap.error == "more than 4 locs: kept the first ones"
    text = parse_sitemap(b"\n".join(b"https://a.test/%d" % i for i in range(10)), max_locs=4)
    assert len(text.locs) == 4 and text.error is not None


@settings(max_examples=300, deadline=None)
@given(
    st.binary(max_size=300)
    | st.builds(
        lambda b, n: urlset("https://a.test/")[:n] + b, st.binary(max_size=20), st.integers(0, 200)
    )
)
def test_any_bytes_never_raise(body: bytes) -> None:
    sitemap = parse_sitemap(body)
    assert sitemap.kind in ("urlset", "index", "unknown")


# --- gzip -------------------------------------------------------------------------------


def test_gzip_is_detected_by_its_magic_bytes() -> None:
    assert parse_sitemap(gzip.compress(urlset("https://a.test/1"))).locs == ["https://a.test/1"]
    assert parse_sitemap(gzip.compress(b"https://a.test/t\n")).locs == ["https://a.test/t"]


def test_gzip_of_several_members() -> None:
    whole = urlset("https://a.test/1", "https://a.test/2")
    body = gzip.compress(whole[:50]) + gzip.compress(whole[50:])
    assert parse_sitemap(body) == Sitemap("urlset", ["https://a.test/1", "https://a.test/2"])


def test_truncated_gzip_keeps_what_was_decoded() -> None:
    body = gzip.compress(urlset(*(f"https://a.test/{i}" for i in range(2000))), 1)
    sitemap = parse_sitemap(body[: len(body) // 2])
    assert 0 < len(sitemap.locs) < 2000
    assert sitemap.error == "broken gzip: the stream ends early"


def test_corrupt_gzip_is_reported_not_raised() -> None:
    sitemap = parse_sitemap(b"\x1f\x8b\x08\x00garbage-not-deflate" * 10)
    assert sitemap.kind == "unknown" and sitemap.error is not None
    assert sitemap.error.startswith("broken gzip:")


def test_xml_gzip_bomb_stops_at_the_protocol_cap() -> None:
    # Given 1 GiB of XML (a URL, then whitespace broken by comments) in ~1.5 MB of gzip
    head = urlset("https://a.test/1")[: -len(b"</urlset>")]
    pad = b" " * 65536 + b"<!---->"
    body = gzip_bomb(head, pad, 2**30 // len(pad))
    assert len(body) < 2 * 2**20
    # When it is parsed, Then reading stops at 50 MiB with what came before
    sitemap = parse_sitemap(body)
    assert sitemap.locs == ["https://a.test/1"]
    assert sitemap.error == f"more than {MAX_SITEMAP_BYTES} bytes decoded: parsed the first ones"


def test_zeros_gzip_bomb_stops_at_a_smaller_cap() -> None:
    body = gzip_bomb(b"", bytes(2**20), 1024)  # 1 GiB of zeros
    sitemap = parse_sitemap(body, max_bytes=2**20)
    assert sitemap == Sitemap(
        "unknown", [], "more than 1048576 bytes decoded: parsed the first ones"
    )


def test_uncompressed_body_has_the_same_cap() -> None:
    body = urlset("https://a.test/1") + b" " * 5000
    assert parse_sitemap(body, max_bytes=len(body)).error is None
    assert parse_sitemap(body, max_bytes=len(body) - 1).error is not None


# --- hostile XML ------------------------------------------------------------------------


def laughs(levels: int) -> bytes:
    """Entities of ten of the previous each: 10**levels "lol"s if anything expanded them."""
    entities = '<!ENTITY lol0 "lol">' + "".join(
        f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10}">' for i in range(1, levels + 1)
    )
    return (
        f'<?xml version="1.0"?><!DOCTYPE urlset [{entities}]>'
        f"<urlset><url><loc>https://a.test/&lol{levels};</loc></url>"
        "<url><loc>https://a.test/ok</loc></url></urlset>"
    ).encode()


def test_billion_laughs_expands_nothing() -> None:
    # libxml2 refuses the document outright (amplification limit): nothing to keep
    sitemap = parse_sitemap(laughs(9))
    assert sitemap.locs == [] and sitemap.error is not None
    assert sitemap.error.startswith("broken XML: ")


def test_a_few_laughs_expand_nothing_either() -> None:
    sitemap = parse_sitemap(laughs(3))
    assert sitemap.locs == ["https://a.test/ok"]  # the loc with an entity is dropped, not cut
    assert sitemap.error is None


def test_external_entity_reads_no_file(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET")
    body = (
        f'<?xml version="1.0"?><!DOCTYPE urlset [<!ENTITY xxe SYSTEM "{secret.as_uri()}">]>'
        "<urlset><url><loc>https://a.test/?q=&xxe;</loc></url>"
        "<url><loc>&xxe;</loc></url><url><loc>https://a.test/ok</loc></url></urlset>"
    ).encode()
    sitemap = parse_sitemap(body)
    assert sitemap.locs == ["https://a.test/ok"]
    assert "TOP-SECRET" not in repr(sitemap)


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A loopback port that would record any connection in its backlog."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield sock


def test_external_dtd_and_parameter_entities_send_nothing(listener: socket.socket) -> None:
    base = f"http://127.0.0.1:{listener.getsockname()[1]}"
    body = (
        f'<?xml version="1.0"?><!DOCTYPE urlset SYSTEM "{base}/evil.dtd" ['
        f'<!ENTITY % remote SYSTEM "{base}/param.dtd"> %remote;'
        f'<!ENTITY web SYSTEM "{base}/entity">]>'
        "<urlset><url><loc>&web;</loc></url><url><loc>https://a.test/ok</loc></url></urlset>"
    ).encode()
    sitemap = parse_sitemap(body)
    assert "https://a.test/ok" in sitemap.locs and len(sitemap.locs) == 1
    listener.setblocking(False)
    with pytest.raises(BlockingIOError):
        listener.accept()  # nobody connected


# --- expansion --------------------------------------------------------------------------


class FakeSite:
    """A fetch callable over a dict of URL -> (status, body), counting calls per URL."""

    def __init__(self, files: dict[str, tuple[int | None, bytes | None]]) -> None:
        self.files = files
        self.calls: Counter[str] = Counter()

    async def __call__(self, url: str) -> tuple[int | None, bytes | None]:
        self.calls[url] += 1
        return self.files.get(url, (404, b"not found"))


async def expand(roots: list[str], site: FakeSite, **kw: int | None) -> list[str]:
    return [url async for url in expand_sitemaps(roots, site, **kw)]  # type: ignore[arg-type]


async def test_expand_a_urlset_root() -> None:
    site = FakeSite({"https://a.test/s.xml": (200, urlset("https://a.test/1", "https://a.test/2"))})
    assert await expand(["https://a.test/s.xml"], site) == ["https://a.test/1", "https://a.test/2"]


async def test_expand_an_index_breadth_first_each_file_once() -> None:
    # Given an index listing two sitemaps, one of them twice, and the index itself
    site = FakeSite(
        {
            "https://a.test/index.xml": (
                200,
                index(
                    "https://a.test/s1.xml",
                    "https://a.test/s2.xml.gz",
                    "https://A.TEST:443/s1.xml",
                    "https://a.test/index.xml",
                ),
            ),
            "https://a.test/s1.xml": (200, urlset("https://a.test/1", "https://a.test/2")),
            "https://a.test/s2.xml.gz": (
                200,
                gzip.compress(urlset("https://a.test/2", "https://a.test/3")),
            ),
        }
    )
    # When it is expanded from two spellings of the same root
    urls = await expand(["https://a.test/index.xml", "https://a.test:443/index.xml"], site)
    # Then every file was fetched once, and every page URL comes once, in order
    assert urls == ["https://a.test/1", "https://a.test/2", "https://a.test/3"]
    assert site.calls == Counter(
        {"https://a.test/index.xml": 1, "https://a.test/s1.xml": 1, "https://a.test/s2.xml.gz": 1}
    )


def chain(depth: int) -> FakeSite:
    """Index level 0 lists index level 1 ... each also listing a urlset of its own."""
    files: dict[str, tuple[int | None, bytes | None]] = {}
    for level in range(depth):
        files[f"https://a.test/i{level}.xml"] = (
            200,
            index(f"https://a.test/i{level + 1}.xml", f"https://a.test/u{level + 1}.xml"),
        )
        files[f"https://a.test/u{level + 1}.xml"] = (200, urlset(f"https://a.test/page{level + 1}"))
    files[f"https://a.test/i{depth}.xml"] = (200, urlset("https://a.test/deepest"))
    return FakeSite(files)


@pytest.mark.parametrize(
    ("max_depth", "pages"),
    [
        pytest.param(0, [], id="roots-only"),
        pytest.param(1, ["page1"], id="one-level"),
        pytest.param(3, ["page1", "page2", "page3"], id="default"),
        pytest.param(6, ["page1", "page2", "page3", "deepest", "page4"], id="all"),
    ],
)
async def test_nested_indexes_stop_at_max_depth(max_depth: int, pages: list[str]) -> None:
    site = chain(4)
    urls = await expand(["https://a.test/i0.xml"], site, max_depth=max_depth)
    assert urls == [f"https://a.test/{p}" for p in pages]
    assert max(site.calls.values()) == 1
    assert f"https://a.test/i{max_depth + 1}.xml" not in site.calls


async def test_failures_skip_the_file() -> None:
    site = FakeSite(
        {
            "https://a.test/index.xml": (
                200,
                index(
                    "https://a.test/gone.xml",
                    "https://a.test/error.xml",
                    "https://a.test/none.xml",
                    "https://a.test/empty.xml",
                    "mailto:x@a.test",
                    "https://a.test/ok.xml",
                ),
            ),
            "https://a.test/error.xml": (None, None),
            "https://a.test/none.xml": (200, None),
            "https://a.test/empty.xml": (204, b""),
            "https://a.test/ok.xml": (200, urlset("https://a.test/1")),
        }
    )
    assert await expand(["https://a.test/index.xml", "not a url"], site) == ["https://a.test/1"]
    assert site.calls["https://a.test/gone.xml"] == 1 and len(site.calls) == 6


async def test_max_files_and_max_urls() -> None:
    site = FakeSite(
        {
            "https://a.test/index.xml": (
                200,
                index(*(f"https://a.test/s{i}.xml" for i in range(5))),
            ),
            **{
                f"https://a.test/s{i}.xml": (
                    200,
                    urlset(f"https://a.test/{i}a", f"https://a.test/{i}b"),
                )
                for i in range(5)
            },
        }
    )
    assert await expand(["https://a.test/index.xml"], site, max_files=3) == [
        "https://a.test/0a",
        "https://a.test/0b",
        "https://a.test/1a",
        "https://a.test/1b",
    ]
    site.calls.clear()
    assert await expand(["https://a.test/index.xml"], site, max_urls=3) == [
        "https://a.test/0a",
        "https://a.test/0b",
        "https://a.test/1a",
    ]
    assert len(site.calls) == 3
    assert await expand(["https://a.test/index.xml"], site, max_urls=0) == []
