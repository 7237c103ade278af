"""The Scrapy contender: one spider that yields each page's URL and follows every link.

    bench/.venvs/scrapy/bin/python bench/crawl_contenders/scrapy_crawl.py SEED OUT.jsonl \
        --concurrency C [--reactor asyncio|default]

Runs in its own virtualenv (Scrapy is a benchmark-only dependency), so it imports nothing from
the project. Settings are the tuned ones of the issue: CONCURRENT_ITEMS=1, no AutoThrottle, no
delay, telnet off, robots.txt obeyed, the default dupefilter and scheduler, unlimited depth.
Items go to OUT as JSON lines through Scrapy's own feed export. Prints one JSON line at the end:
pages (items), ok (200 responses), failed, elapsed (s, Scrapy's start_time to finish_time).
"""

from __future__ import annotations

import argparse
import json
import logging
from urllib.parse import urlsplit

import scrapy
from scrapy.crawler import CrawlerProcess

REACTORS = {
    "asyncio": "twisted.internet.asyncioreactor.AsyncioSelectorReactor",
    "default": "twisted.internet.epollreactor.EPollReactor",
}


class SiteSpider(scrapy.Spider):
    """Every page once: the default dupefilter drops links already requested."""

    name = "bench"

    def __init__(self, seed: str, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.start_urls = [seed]
        self.allowed_domains = [urlsplit(seed).hostname or ""]  # OffsiteMiddleware: same host

    async def start(self):  # type: ignore[no-untyped-def]
        # Not start_urls: their requests skip the dupefilter, so the seed would be fetched
        # twice (once more when a page links back to it).
        for url in self.start_urls:
            yield scrapy.Request(url, callback=self.parse)

    def parse(self, response: scrapy.http.Response):  # type: ignore[override]
        yield {"url": response.url}
        yield from response.follow_all(css="a", callback=self.parse)


def settings(out: str, concurrency: int, reactor: str) -> dict[str, object]:
    return {
        "CONCURRENT_REQUESTS": concurrency,
        "CONCURRENT_REQUESTS_PER_DOMAIN": concurrency,  # default 8 would cap the one host
        "CONCURRENT_ITEMS": 1,
        "DOWNLOAD_DELAY": 0,
        "AUTOTHROTTLE_ENABLED": False,
        "ROBOTSTXT_OBEY": True,
        "TELNETCONSOLE_ENABLED": False,
        "RETRY_ENABLED": False,  # as ours runs with --retries 0
        "DEPTH_LIMIT": 0,
        "LOG_LEVEL": "WARNING",
        "TWISTED_REACTOR": REACTORS[reactor],
        "FEEDS": {out: {"format": "jsonlines", "overwrite": True}},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("seed")
    p.add_argument("out")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--reactor", choices=sorted(REACTORS), default="asyncio")
    args = p.parse_args()
    process = CrawlerProcess(settings(args.out, args.concurrency, args.reactor))
    crawler = process.create_crawler(SiteSpider)
    process.crawl(crawler, seed=args.seed)
    process.start()
    stats = crawler.stats.get_stats()
    logging.getLogger(__name__).debug("stats %s", stats)
    elapsed = (stats["finish_time"] - stats["start_time"]).total_seconds()
    print(json.dumps({
        "pages": stats.get("item_scraped_count", 0),
        "ok": stats.get("downloader/response_status_count/200", 0),
        "failed": stats.get("downloader/exception_count", 0),
        "elapsed": elapsed,
        "reason": stats.get("finish_reason"),
        "robots": stats.get("robotstxt/response_count", 0),
    }))


if __name__ == "__main__":
    main()
