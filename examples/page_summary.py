"""An extraction function for `--extract page_summary:summary`: title, meta description and
headings of an HTML page, with the standard library only.

    PYTHONPATH=examples crawler crawl urls.txt --extract page_summary:summary -o out.jsonl
    PYTHONPATH=examples crawler worker      # workers import it by name, from their own path
    crawler submit urls.txt --extract page_summary:summary

Each record gets `data`: {"title": ..., "description": ..., "headings": [["h1", ...], ...]}.
Pages that are not HTML get no data (None). A link with rel="next" is followed (pagination):
`page.follow()` requests join the job like found links (scope, dedupe, --depth, --max-pages).
"""

from __future__ import annotations

from html.parser import HTMLParser
from typing import Any

MAX_HEADINGS = 50


class _Summary(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.title: str | None = None
        self.description: str | None = None
        self.headings: list[list[str]] = []
        self.next: str | None = None
        self._open: str | None = None  # "title" or "h1".."h6" while inside one
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "meta" and a.get("name", "").lower() == "description":
            self.description = self.description or " ".join(a.get("content", "").split())
        elif tag in ("a", "link") and "next" in a.get("rel", "").lower().split():
            self.next = self.next or a.get("href") or None
        elif tag == "title" or (len(tag) == 2 and tag[0] == "h" and tag[1] in "123456"):
            self._open, self._text = tag, []

    def handle_data(self, data: str) -> None:
        if self._open:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag != self._open:
            return
        text = " ".join("".join(self._text).split())
        if tag == "title":
            self.title = self.title or text
        elif len(self.headings) < MAX_HEADINGS:
            self.headings.append([tag, text])
        self._open = None


def summary(page: Any) -> dict[str, Any] | None:
    """`page` is a crawler.extract.Page: url, final_url, status, headers, body, text, meta."""
    if "html" not in page.headers.get("content-type", ""):
        return None
    parser = _Summary()
    parser.feed(page.text)
    parser.close()
    if parser.next:
        page.follow(parser.next)
    return {"title": parser.title, "description": parser.description,
            "headings": parser.headings}
