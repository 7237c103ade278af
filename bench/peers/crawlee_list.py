"""The `crawlee-http` / `crawlee-parsel` peers: crawlee-python fetching a URL list.

    bench/.venvs/crawlee-parsel/bin/python bench/peers/crawlee_list.py URLFILE OUT \
        --concurrency C --crawler http|parsel

Runs in a venv with only `crawlee[parsel]` (no BeautifulSoup, no Playwright), importing nothing
from the project. `HttpCrawler` hands the handler the raw response; `ParselCrawler` also parses
every body into a `parsel.Selector` first (the handler does not enqueue links: URL-list mode).
The default HTTP client (impit), `MemoryStorageClient`, `ConcurrencySettings` with min =
desired = max = C (a fixed pool: the autoscaler cannot move it), no retries, no session pool
(so no cookies), robots.txt not fetched; the URLs go in through `run(urls)`. The handler appends
the URL to OUT. Prints one JSON line: pages, ok, failed, bytes (bodies), first/last (epoch s: first
pre-navigation hook, last handler), own_elapsed (crawlee's `crawler_runtime`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import time
from typing import Any

from crawlee import ConcurrencySettings
from crawlee.storage_clients import MemoryStorageClient


def make_crawler(kind: str, concurrency: int) -> Any:
    if kind == "parsel":
        from crawlee.crawlers import ParselCrawler as Crawler
    else:
        from crawlee.crawlers import HttpCrawler as Crawler
    return Crawler(
        concurrency_settings=ConcurrencySettings(
            min_concurrency=concurrency, desired_concurrency=concurrency,
            max_concurrency=concurrency),
        storage_client=MemoryStorageClient(),
        max_request_retries=0,
        use_session_pool=False,
        respect_robots_txt_file=False,
        configure_logging=False,
        statistics_log_format="inline",
    )


async def crawl(urls: list[str], out: str, kind: str, concurrency: int) -> dict[str, Any]:
    crawler = make_crawler(kind, concurrency)
    clock: dict[str, Any] = {"first": None, "last": None, "ok": 0, "bytes": 0}
    with open(out, "w") as sink:

        @crawler.pre_navigation_hook
        async def first_request(context: Any) -> None:
            if clock["first"] is None:
                clock["first"] = time.time()

        @crawler.router.default_handler
        async def handler(context: Any) -> None:
            sink.write(context.request.url + "\n")
            clock["bytes"] += len(await context.http_response.read())  # already read: no I/O
            clock["ok"] += context.http_response.status_code == 200
            clock["last"] = time.time()

        stats = await crawler.run(urls)
    return {
        "pages": stats.requests_finished,
        "ok": clock["ok"],
        "failed": stats.requests_failed,
        "bytes": clock["bytes"],
        "first": clock["first"],
        "last": clock["last"],
        "own_elapsed": stats.crawler_runtime.total_seconds(),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("urlfile")
    p.add_argument("out")
    p.add_argument("--concurrency", type=int, default=50)
    p.add_argument("--crawler", choices=("http", "parsel"), default="parsel")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with open(args.urlfile) as f:
        urls = [u for line in f if (u := line.strip())]
    print(json.dumps(asyncio.run(crawl(urls, args.out, args.crawler, args.concurrency))))


if __name__ == "__main__":
    main()
