"""Link extraction from HTML (crawler.links): what a crawl would follow."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crawler.links import MAX_LINKS, extract_links, is_html
from crawler.urls import canonicalize

PAGE = "https://site.test/dir/page.html"


def links(html: str | bytes, url: str = PAGE, **kw: int) -> list[str]:
    return extract_links(html.encode() if isinstance(html, str) else html, url, **kw)


def test_relative_links_resolve_against_the_page() -> None:
    assert links('<a href="other.html">x</a><a href="/root">y</a><a href="../up">z</a>') == [
        "https://site.test/dir/other.html", "https://site.test/root", "https://site.test/up"]


def test_base_href_wins_and_is_itself_resolved() -> None:
    html = '<head><base href="/b/"><base href="/ignored/"></head><a href="x">x</a>'
    assert links(html) == ["https://site.test/b/x"]


def test_fragments_dropped_and_each_link_once_in_document_order() -> None:
    html = '<a href="b#1">b</a><a href="a">a</a><a href="b#2">b again</a><a href="#top">t</a>'
    assert links(html) == ["https://site.test/dir/b", "https://site.test/dir/a"]


@pytest.mark.parametrize("href", ["mailto:a@b.c", "javascript:void(0)", "ftp://x/y",
                                  "data:text/html,hi", "tel:+123", "", "   "])
def test_non_http_schemes_and_empty_hrefs_dropped(href: str) -> None:
    assert links(f'<a href="{href}">x</a>') == []


def test_links_are_canonical() -> None:
    html = '<a href="HTTP://Example.COM:80/a/./b/../c?z=1&a=2">x</a><a href="//cdn.test">y</a>'
    assert links(html) == ["http://example.com/a/c?a=2&z=1", "https://cdn.test/"]


def test_broken_html_and_odd_bytes_still_parse() -> None:
    html = b'<a href="ok">x<div><a href="\xff\xfe">y</a><a href=unquoted>z<table><a href="t">'
    out = links(html)
    assert "https://site.test/dir/ok" in out and "https://site.test/dir/unquoted" in out


def test_a_hostile_page_yields_at_most_the_limit() -> None:
    html = "".join(f'<a href="/p{i}">.</a>' for i in range(50))
    assert len(links(html, limit=20)) == 20
    assert MAX_LINKS >= 1000


def test_only_html_is_searched() -> None:
    assert is_html("text/html") and is_html("application/xhtml+xml")
    assert not is_html("application/json") and not is_html(None)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(max_size=40), max_size=8))
def test_any_hrefs_never_raise_and_give_canonical_urls(hrefs: list[str]) -> None:
    html = "".join(f'<a href="{h.replace(chr(34), "")}">x</a>' for h in hrefs)
    for url in links(html):
        assert canonicalize(url) == url
        assert url.startswith(("http://", "https://"))
