"""The `feapder-list` and `feapder-redis` peers: feapder's AirSpider and distributed Spider.

    bench/.venvs/feapder/bin/python bench/peers/feapder_peer.py air URLFILE OUT --concurrency C
    ... feapder_peer.py fill URLFILE --redis-url URL --key KEY          (unmeasured, before)
    ... feapder_peer.py worker OUT --redis-url URL --key KEY --concurrency C [--barrier]

Runs in the feapder venv and imports nothing from the project. `air`: an `AirSpider` (one
process, feapder's in-memory priority queue, C threads). `fill`: the distributed `Spider`'s
master step (`start_monitor_task`, run once) puts one task per URL into the Redis sorted set
`KEY:z_requests`, feapder's own serialization. `worker`: the distributed `Spider` with
`auto_start_requests=False`, C threads, which claims tasks from that set (32 per Lua call,
feapder's COLLECTOR_TASK_COUNT) until the set is empty and every thread idle, then exits.
With C < 32 its collector sleeps 0.1 s whenever more than C tasks wait locally, which caps a
worker (C=16: ~315 pages/s each), so the peer's default C is 32.

Settings (feapder's `__custom_setting__`): SPIDER_MAX_RETRY_TIMES=0 (a failed request is
dropped, not retried), SPIDER_SLEEP_TIME=0, no item pipelines (the parse callback appends the
URL to OUT itself), no request/item dedupe, KEEP_ALIVE False, LOG_LEVEL WARNING (set in the
environment before import: feapder reads it then). Downloads go through `requests` with
feapder's defaults (stream=True, random User-Agent, 22 s timeout) plus USE_SESSION=True (one
shared keep-alive `requests.Session`; feapder's default is a new connection per request: see
`--no-session`). The callback reads every body (`response.content`).

With `--barrier` a worker, once built, pushes its pid to `KEY:ready` and waits for a token on
`KEY:go`: the harness starts both workers together. feapder's Spider resets the tasks another
live spider has claimed when it starts (`reset_task`), so a worker starting while the other one
already fetches would make duplicates; the barrier keeps both constructions before any claim.
Prints one JSON line: pages, ok, failed, bytes, first/last (epoch s: first download_midware
call, last callback).
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from typing import Any
from urllib.parse import urlsplit

os.environ["LOG_LEVEL"] = "WARNING"  # feapder.setting reads it at import

import feapder

COMMON = {
    "SPIDER_MAX_RETRY_TIMES": 0,
    "SPIDER_SLEEP_TIME": 0,
    "ITEM_PIPELINES": [],
    "ITEM_FILTER_ENABLE": False,
    "REQUEST_FILTER_ENABLE": False,
    "KEEP_ALIVE": False,
    "LOG_LEVEL": "WARNING",
    "USE_SESSION": True,
    "RETRY_FAILED_REQUESTS": False,
    "SAVE_FAILED_REQUEST": False,
}


class Tally:
    """What the callbacks saw; threads share it under a lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.urls: list[str] = []
        self.first: float | None = None
        self.last: float | None = None
        self.ok = self.bytes = 0

    def started(self) -> None:
        if self.first is None:
            with self.lock:
                if self.first is None:
                    self.first = time.time()

    def done(self, url: str, status: int, body: bytes) -> None:
        with self.lock:
            self.urls.append(url)
            self.ok += status == 200
            self.bytes += len(body)
            self.last = time.time()

    def report(self, out: str) -> dict[str, Any]:
        with open(out, "w") as f:
            f.write("".join(u + "\n" for u in self.urls))
        return {"pages": len(self.urls), "ok": self.ok, "bytes": self.bytes,
                "first": self.first, "last": self.last}


TALLY = Tally()


def read_urls(path: str) -> list[str]:
    with open(path) as f:
        return [u for line in f if (u := line.strip())]


class _ListMixin:
    """The URL list in, every page counted: the same for the in-memory and the Redis spider."""

    urls: list[str] = []

    def start_requests(self):  # type: ignore[no-untyped-def]
        for url in self.urls:
            yield feapder.Request(url)

    def download_midware(self, request: Any) -> Any:
        TALLY.started()
        return request

    def parse(self, request: Any, response: Any) -> None:
        TALLY.done(request.url, response.status_code, response.content)


class ListAirSpider(_ListMixin, feapder.AirSpider):
    urls: list[str] = []  # its own list: the class attribute is set per run


class ListRedisSpider(_ListMixin, feapder.Spider):
    urls: list[str] = []


def redis_settings(url: str) -> dict[str, Any]:
    parts = urlsplit(url)
    return {"REDISDB_IP_PORTS": f"{parts.hostname}:{parts.port or 6379}",
            "REDISDB_DB": int(parts.path.strip("/") or 0)}


def barrier(url: str, key: str, timeout: float = 120.0) -> None:
    import redis

    client = redis.Redis.from_url(url)
    client.rpush(f"{key}:ready", os.getpid())
    if client.blpop([f"{key}:go"], timeout=int(timeout)) is None:
        raise SystemExit(f"no go signal on {key}:go within {timeout} s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=("air", "fill", "worker"))
    p.add_argument("paths", nargs="+", help="air: URLFILE OUT; fill: URLFILE; worker: OUT")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--redis-url")
    p.add_argument("--key", help="the Redis key prefix (feapder's redis_key)")
    p.add_argument("--barrier", action="store_true")
    p.add_argument("--no-session", action="store_true",
                   help="feapder's default downloader: a new connection per request")
    args = p.parse_args()
    custom = {**COMMON, "SPIDER_THREAD_COUNT": args.concurrency,
              "USE_SESSION": not args.no_session}
    if args.mode == "air":
        urlfile, out = args.paths
        ListAirSpider.urls = read_urls(urlfile)
        ListAirSpider.__custom_setting__ = custom
        spider = ListAirSpider(thread_count=args.concurrency)
        spider.start()
        spider.join()
        failed = len(ListAirSpider.urls) - len(TALLY.urls)
        print(json.dumps({**TALLY.report(out), "failed": failed}))
        return
    custom |= redis_settings(args.redis_url)
    ListRedisSpider.__custom_setting__ = custom
    if args.mode == "fill":
        ListRedisSpider.urls = read_urls(args.paths[0])
        t0 = time.perf_counter()
        ListRedisSpider(redis_key=args.key, auto_start_requests=False).start_monitor_task()
        print(json.dumps({"filled": len(ListRedisSpider.urls), "s": time.perf_counter() - t0}))
        return
    (out,) = args.paths
    spider = ListRedisSpider(redis_key=args.key, thread_count=args.concurrency,
                             auto_start_requests=False, keep_alive=False)
    if args.barrier:
        barrier(args.redis_url, args.key)
    spider.start()
    spider.join()
    print(json.dumps({**TALLY.report(out), "failed": None}))


if __name__ == "__main__":
    main()
