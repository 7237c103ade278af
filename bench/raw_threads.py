"""The raw requests baseline: a pool of C threads, one Session per thread, read every body.

    python -m bench.raw_threads URLFILE --concurrency C

Prints one JSON line: pages, ok, bytes, elapsed (s, from the first request to the last body).
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

TIMEOUT = 30.0  # s, as the async baseline
local = threading.local()


def fetch(url: str) -> tuple[bool, int]:
    session = getattr(local, "session", None)
    if session is None:
        session = local.session = requests.Session()
    try:
        resp = session.get(url, timeout=TIMEOUT)
        body = resp.content
    except requests.RequestException:
        return False, 0
    return resp.status_code == 200, len(body)


def crawl(urls: list[str], concurrency: int) -> dict[str, float]:
    counts = {"pages": 0, "ok": 0, "bytes": 0}
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for ok, size in pool.map(fetch, urls):
            counts["pages"] += 1
            counts["ok"] += ok
            counts["bytes"] += size
    return {**counts, "elapsed": time.perf_counter() - start}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("urlfile", type=Path)
    p.add_argument("--concurrency", type=int, default=32)
    args = p.parse_args()
    urls = args.urlfile.read_text().split()
    print(json.dumps(crawl(urls, args.concurrency)))


if __name__ == "__main__":
    main()
