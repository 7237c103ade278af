"""Links of an HTML page: what a crawl follows (issue 6 builds scope, dedupe and the frontier
on top). Pure: bytes and a URL in, canonical URLs out.

Parsed with selectolax's Lexbor backend (an HTML5 parser in C, no regex over HTML): `<a href>`
resolved against `<base href>` (the first one, itself resolved against the page URL) or the
page URL; fragments dropped; only http and https kept; each link canonicalized as intake does
(`crawler.urls.canonicalize`), invalid ones skipped; each link once, in document order.
"""

from __future__ import annotations

from urllib.parse import urljoin

from selectolax.lexbor import LexborHTMLParser

from crawler.urls import InvalidURL, canonicalize

HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
MAX_LINKS = 10_000  # per page: a hostile page cannot make one fetch queue millions of URLs


def is_html(content_type: str | None) -> bool:
    """Only HTML responses are searched for links (`content_type` is the bare media type)."""
    return content_type in HTML_TYPES


def extract_links(body: bytes, page_url: str, *, limit: int = MAX_LINKS) -> list[str]:
    """Canonical http(s) links of an HTML page, each once, in document order."""
    tree = LexborHTMLParser(body)
    base = page_url
    base_node = tree.css_first("base[href]")
    if base_node is not None:
        href = (base_node.attributes.get("href") or "").strip()
        if href:
            base = urljoin(page_url, href)
    seen: dict[str, None] = {}
    for node in tree.css("a[href]"):
        href = (node.attributes.get("href") or "").strip()
        if not href or href.startswith("#"):
            continue
        url = urljoin(base, href).partition("#")[0]
        if not url.startswith(("http://", "https://", "HTTP://", "HTTPS://")):
            scheme = url.partition(":")[0].lower()
            if scheme not in ("http", "https"):
                continue
        try:
            seen.setdefault(canonicalize(url), None)
        except InvalidURL:
            continue
        if len(seen) >= limit:
            break
    return list(seen)
