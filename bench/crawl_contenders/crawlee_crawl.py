"""The crawlee-python contender: ParselCrawler (or BeautifulSoupCrawler) with enqueue_links.

    bench/.venvs/crawlee/bin/python bench/crawl_contenders/crawlee_crawl.py SEED OUT.txt \
        --concurrency C [--parser parsel|beautifulsoup]

Runs in its own virtualenv (crawlee is a benchmark-only dependency). The handler writes the
page's URL to OUT (one line a page) and calls `enqueue_links(strategy="same-hostname")`; the
request queue dedupes by unique key, so each page is fetched once; unlimited depth and requests;
robots.txt respected; storage in memory; the default HTTP client (impit); no retries. The
autoscaled pool starts at C and may go down if it sees the CPU overloaded. Prints one JSON line:
pages, ok, failed, elapsed (s, crawlee's own crawler_runtime).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging

from crawlee import ConcurrencySettings
from crawlee.storage_clients import MemoryStorageClient


def make_crawler(parser: str, concurrency: int):  # type: ignore[no-untyped-def]
    if parser == "parsel":
        from crawlee.crawlers import ParselCrawler as Crawler
    else:
        from crawlee.crawlers import BeautifulSoupCrawler as Crawler
    return Crawler(
        concurrency_settings=ConcurrencySettings(
            min_concurrency=1, desired_concurrency=concurrency, max_concurrency=concurrency),
        storage_client=MemoryStorageClient(),
        max_request_retries=0,
        max_requests_per_crawl=None,
        max_crawl_depth=None,
        respect_robots_txt_file=True,
        configure_logging=False,
        statistics_log_format="inline",
    )


async def crawl(seed: str, out: str, parser: str, concurrency: int) -> dict[str, object]:
    crawler = make_crawler(parser, concurrency)
    counts = {"ok": 0}
    with open(out, "w") as sink:

        @crawler.router.default_handler
        async def handler(context) -> None:  # type: ignore[no-untyped-def]
            sink.write(context.request.url + "\n")
            counts["ok"] += context.http_response.status_code == 200
            await context.enqueue_links(strategy="same-hostname")

        stats = await crawler.run([seed])
    return {
        "pages": stats.requests_finished,
        "ok": counts["ok"],
        "failed": stats.requests_failed,
        "elapsed": stats.crawler_runtime.total_seconds(),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("seed")
    p.add_argument("out")
    p.add_argument("--concurrency", type=int, default=100)
    p.add_argument("--parser", choices=("parsel", "beautifulsoup"), default="parsel")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    print(json.dumps(asyncio.run(crawl(args.seed, args.out, args.parser, args.concurrency))))


if __name__ == "__main__":
    main()
