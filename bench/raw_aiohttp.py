"""The raw aiohttp baseline: one session, a connector of C, a semaphore, read every body.

    python -m bench.raw_aiohttp URLFILE --concurrency C

Prints one JSON line: pages, ok, bytes, elapsed (s, from the first request to the last body).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

import aiohttp

TIMEOUT = aiohttp.ClientTimeout(total=30)


async def crawl(urls: list[str], concurrency: int) -> dict[str, float]:
    sem = asyncio.Semaphore(concurrency)
    counts = {"pages": 0, "ok": 0, "bytes": 0}
    tasks: set[asyncio.Task[None]] = set()

    async def fetch(session: aiohttp.ClientSession, url: str) -> None:
        try:
            async with session.get(url) as resp:
                body = await resp.read()
                counts["ok"] += resp.status == 200
                counts["bytes"] += len(body)
        except (aiohttp.ClientError, TimeoutError):
            pass
        finally:
            counts["pages"] += 1
            sem.release()

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=TIMEOUT) as session:
        start = time.perf_counter()
        for url in urls:
            await sem.acquire()  # bounds the live tasks too, not only the sockets
            task = asyncio.create_task(fetch(session, url))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
    return {**counts, "elapsed": elapsed}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("urlfile", type=Path)
    p.add_argument("--concurrency", type=int, default=100)
    args = p.parse_args()
    urls = args.urlfile.read_text().split()
    print(json.dumps(asyncio.run(crawl(urls, args.concurrency))))


if __name__ == "__main__":
    main()
