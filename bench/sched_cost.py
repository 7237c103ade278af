"""What the shared line of batches (crawler/schedule.py) costs Redis per batch.

    python -m bench.sched_cost [--redis-url redis://127.0.0.1:6379/9] [--batches 5000]

Puts N batches of one job in line (priorities 0..6), then takes and releases each as a worker
does (pop + done), and reads Redis's own command statistics: server CPU per call and per
batch, and the client's round-trip time. Uses (and empties) the given database.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import redis.asyncio as aioredis

from crawler.schedule import Schedule

COMMANDS = ("evalsha", "zrem", "hdel", "multi", "exec")


async def usec(c: Any) -> dict[str, tuple[int, int]]:
    stats = await c.info("commandstats")
    return {k: (stats.get(f"cmdstat_{k}", {}).get("calls", 0),
                stats.get(f"cmdstat_{k}", {}).get("usec", 0)) for k in COMMANDS}


async def main(url: str, n: int) -> None:
    c = aioredis.Redis.from_url(url)
    await c.flushdb()
    s = Schedule(c, "bench", aging=60)
    before = await usec(c)
    t0 = time.perf_counter()
    for i in range(n):
        await s.add("job", [(i, i % 7)])
    t1 = time.perf_counter()
    for _ in range(n):
        picked = await s.pop()
        assert picked is not None
        await s.done(*picked)
    t2 = time.perf_counter()
    after = await usec(c)
    assert await s.length() == 0
    # A script's and a transaction's own time includes the commands they run (which Redis also
    # counts under their own names): the total is evalsha + multi + exec.
    server = sum(after[k][1] - before[k][1] for k in ("evalsha", "multi", "exec"))
    print(f"batches {n}: Redis CPU {server / n:.1f} us per batch (add + pop + done), "
          f"{server / n / 1000:.3f} us per URL at 1,000 URLs a batch")
    for k in COMMANDS:
        calls = after[k][0] - before[k][0]
        if calls:
            print(f"  {k:8} {calls:6} calls {(after[k][1] - before[k][1]) / calls:6.1f} us/call")
    print(f"client round trips: add {1e6 * (t1 - t0) / n:.0f} us, pop + done "
          f"{1e6 * (t2 - t1) / n:.0f} us per batch")
    await c.flushdb()
    await c.aclose()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/9")
    p.add_argument("--batches", type=int, default=5000)
    a = p.parse_args()
    asyncio.run(main(a.redis_url, a.batches))
