"""The `scrapy-list` peer: Scrapy fetching a URL list, one spider, every URL once.

    bench/.venvs/scrapy/bin/python bench/peers/scrapy_list.py URLFILE OUT --concurrency C

Runs in the Scrapy venv and imports nothing from the project. The spider's `start()` (the
Scrapy 2.13+ async generator) yields one `Request` per line of URLFILE; `parse` yields
`{"url": ...}`, which a one-line item pipeline appends to OUT (cheaper than a feed export's
JSON serialization, so the row measures Scrapy's engine rather than its exporter). Settings:
CONCURRENT_REQUESTS = CONCURRENT_REQUESTS_PER_DOMAIN = C, CONCURRENT_ITEMS=1, no robots.txt,
retries, cookies, AutoThrottle or delay, telnet off, asyncio reactor, LOG_LEVEL WARNING.
Prints one JSON line: pages, ok, failed, bytes (bodies), first/last (epoch s: first request
reached the downloader, last item stored), own_elapsed (Scrapy's start_time to finish_time).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import scrapy
from scrapy import signals
from scrapy.crawler import CrawlerProcess

ASYNCIO_REACTOR = "twisted.internet.asyncioreactor.AsyncioSelectorReactor"


class Clock:
    """First request and last page, as epoch seconds (the harness compares processes)."""

    first: float | None = None
    last: float | None = None
    ok = 0
    bytes = 0

    def request_reached(self, request: scrapy.Request, spider: scrapy.Spider) -> None:
        if self.first is None:
            self.first = time.time()


CLOCK = Clock()


class UrlLinePipeline:
    """Appends each item's URL to `path`: one line a page (Scrapy 2.13+ signatures, no spider)."""

    path = ""

    def open_spider(self) -> None:
        self.sink = open(self.path, "w")  # noqa: SIM115

    def close_spider(self) -> None:
        self.sink.close()

    def process_item(self, item: dict[str, Any]) -> dict[str, Any]:
        self.sink.write(item["url"] + "\n")
        CLOCK.last = time.time()
        return item


class ListSpider(scrapy.Spider):
    name = "peer_list"

    def __init__(self, urlfile: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.urlfile = urlfile

    @classmethod
    def from_crawler(cls, crawler: Any, *args: Any, **kwargs: Any) -> ListSpider:
        spider = super().from_crawler(crawler, *args, **kwargs)
        crawler.signals.connect(CLOCK.request_reached, signal=signals.request_reached_downloader)
        return spider

    async def start(self):  # type: ignore[no-untyped-def]
        with open(self.urlfile) as f:
            for line in f:
                if url := line.strip():
                    yield scrapy.Request(url, callback=self.parse)

    def parse(self, response: scrapy.http.Response):  # type: ignore[override]
        yield page_item(response)


def page_item(response: scrapy.http.Response) -> dict[str, str]:
    """The one item a page makes; counts its status and body size on the way."""
    CLOCK.ok += response.status == 200
    CLOCK.bytes += len(response.body)
    return {"url": response.url}


def settings(concurrency: int) -> dict[str, object]:
    return {
        "CONCURRENT_REQUESTS": concurrency,
        "CONCURRENT_REQUESTS_PER_DOMAIN": concurrency,  # the default 8 would cap the one host
        "CONCURRENT_ITEMS": 1,
        "DOWNLOAD_DELAY": 0,
        "AUTOTHROTTLE_ENABLED": False,
        "ROBOTSTXT_OBEY": False,
        "RETRY_ENABLED": False,
        "COOKIES_ENABLED": False,
        "TELNETCONSOLE_ENABLED": False,
        "LOG_LEVEL": "WARNING",
        "TWISTED_REACTOR": ASYNCIO_REACTOR,
        "ITEM_PIPELINES": {UrlLinePipeline: 100},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("urlfile")
    p.add_argument("out")
    p.add_argument("--concurrency", type=int, default=8)
    args = p.parse_args()
    UrlLinePipeline.path = args.out
    process = CrawlerProcess(settings(args.concurrency))
    crawler = process.create_crawler(ListSpider)
    process.crawl(crawler, urlfile=args.urlfile)
    process.start()
    print_report(crawler)


def print_report(crawler: Any) -> None:
    """The one JSON line the harness reads, from a finished crawler's stats and CLOCK."""
    stats = crawler.stats.get_stats()
    print(json.dumps({
        "pages": stats.get("item_scraped_count", 0),
        "ok": CLOCK.ok,
        "failed": stats.get("downloader/exception_count", 0),
        "bytes": CLOCK.bytes,
        "first": CLOCK.first,
        "last": CLOCK.last,
        "own_elapsed": (stats["finish_time"] - stats["start_time"]).total_seconds(),
        "reason": stats.get("finish_reason"),
    }))


if __name__ == "__main__":
    main()
