"""The `scrapy-redis` peer: one of N Scrapy processes sharing a URL list in Redis.

    bench/.venvs/scrapy-redis/bin/python bench/peers/scrapy_redis_peer.py OUT \
        --redis-url URL --key KEY --concurrency C [--batch-size B] [--barrier]

Runs in the scrapy-redis venv and imports nothing from the project (only `scrapy_list.py`
beside it, for the settings, item pipeline and clock, so the two Scrapy peers cannot drift
apart). A `scrapy_redis.spiders.RedisSpider` reads its start URLs from the Redis list
`KEY:start_urls` (JSON `{"url": ...}`, scrapy-redis' current data format; plain strings log a
deprecation warning per URL), B at a time (scrapy-redis' default B is CONCURRENT_REQUESTS) with
LRANGE + LTRIM in one MULTI, so two processes never get the same URL. Scrapy's own in-memory
scheduler and dupefilter (not scrapy-redis' Redis scheduler: the URLs are unique and the list
already is the shared queue). scrapy-redis fetches the next batch when the spider goes idle,
i.e. once the previous batch is all done.

Stopping: MAX_IDLE_TIME_BEFORE_CLOSE=1 (scrapy-redis' idle close; its default 0 idles
forever): once the list is empty and the process has nothing in flight, the spider closes at
the next idle check, which Scrapy runs every 5 s (the engine heartbeat) after a
DontCloseSpider, so a process exits 0-5 s after its last page. Same settings as scrapy-list
otherwise. With `--barrier`, the process pushes its pid to `KEY:ready` once its crawler is
built and waits for a token on `KEY:go` before starting the reactor.
Prints one JSON line: pages, ok, failed, bytes, first/last (epoch s), own_elapsed.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from scrapy import signals
from scrapy.crawler import CrawlerProcess
from scrapy.http import Response
from scrapy_list import CLOCK, UrlLinePipeline, page_item, print_report, settings
from scrapy_redis.spiders import RedisSpider


class ListRedisSpider(RedisSpider):
    name = "peer_redis"

    @classmethod
    def from_crawler(cls, crawler: Any, *args: Any, **kwargs: Any) -> ListRedisSpider:
        spider = super().from_crawler(crawler, *args, **kwargs)
        crawler.signals.connect(CLOCK.request_reached, signal=signals.request_reached_downloader)
        return spider

    def parse(self, response: Response):  # type: ignore[override]
        yield page_item(response)


def barrier(url: str, key: str, timeout: int = 120) -> None:
    import redis

    client = redis.Redis.from_url(url)
    client.rpush(f"{key}:ready", os.getpid())
    if client.blpop([f"{key}:go"], timeout=timeout) is None:
        raise SystemExit(f"no go signal on {key}:go within {timeout} s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out")
    p.add_argument("--redis-url", required=True)
    p.add_argument("--key", required=True, help="Redis key prefix; the list is KEY:start_urls")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--batch-size", type=int, help="URLs per LRANGE (default: C)")
    p.add_argument("--barrier", action="store_true")
    args = p.parse_args()
    UrlLinePipeline.path = args.out
    if args.batch_size:
        ListRedisSpider.redis_batch_size = args.batch_size
    process = CrawlerProcess({
        **settings(args.concurrency),
        "REDIS_URL": args.redis_url,
        "REDIS_START_URLS_KEY": f"{args.key}:start_urls",
        "MAX_IDLE_TIME_BEFORE_CLOSE": 1,
    })
    crawler = process.create_crawler(ListRedisSpider)
    process.crawl(crawler)
    if args.barrier:
        barrier(args.redis_url, args.key)
    process.start()
    print_report(crawler)


if __name__ == "__main__":
    main()
