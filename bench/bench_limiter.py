"""Benchmark of the shared rate limiter alone (no HTTP): N processes pacing against one Redis.

Reports the achieved rate against R, limiter script calls per grant, the p50/p99 lateness of the
wake-up (how much later than its slot a process actually woke), and the server-side script time
from INFO commandstats. Starts its own redis-server on a free loopback port unless --redis-url.

    python -m bench.bench_limiter --processes 4 --qps 200 --seconds 30
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis

from crawler.ratelimit import LimiterConfig, RateLimiter

WARMUP_S = 1.0  # processes start at different times: the first second is not counted


def worker(url: str, config: dict[str, Any], hosts: int, start: float, stop: float,
           out: Any) -> None:
    """Acquire, sleep the wait, 'fire'; defers sleep their wait. Reports fire times and lateness."""
    limiter = RateLimiter(redis.Redis.from_url(url), LimiterConfig(**config))
    fires: list[float] = []
    lateness: list[float] = []
    grants = 0
    while time.monotonic() < start:
        time.sleep(0.001)  # the common start instant, agreed through the parent's monotonic clock
    while time.monotonic() < stop:
        grant = limiter.acquire(f"h{random.randrange(hosts)}")
        target = time.monotonic() + grant.wait
        time.sleep(grant.wait)
        if grant.granted:
            woke = time.monotonic()
            grants += 1
            fires.append(woke)
            lateness.append(woke - target)
    out.put({"fires": fires, "lateness": lateness, "grants": grants, "calls": limiter.calls})


@contextmanager
def private_redis() -> Iterator[str]:
    """A throwaway redis-server on a free 127.0.0.1 port (never the machine's shared one)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    workdir = tempfile.mkdtemp(prefix="bench-redis-")
    exe = shutil.which("redis-server") or "redis-server"
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", workdir],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    try:
        for _ in range(500):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.01)  # polling a process we just started: no event to await
        yield url
    finally:
        client.close()
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def run(url: str, args: argparse.Namespace) -> dict[str, Any]:
    config = {"qps": args.qps, "burst": args.burst, "per_host_qps": args.per_host_qps}
    client = redis.Redis.from_url(url)
    client.flushdb()
    client.config_resetstat()
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    start = time.monotonic() + 2.0  # time for the spawned interpreters to import
    stop = start + args.seconds
    procs = [ctx.Process(target=worker, args=(url, config, args.hosts, start, stop, out))
             for _ in range(args.processes)]
    for p in procs:
        p.start()
    results = [out.get(timeout=args.seconds + 60) for _ in procs]
    for p in procs:
        p.join(10)
    counted_from, counted_to = start + WARMUP_S, stop
    fires = [t for r in results for t in r["fires"] if counted_from <= t < counted_to]
    achieved = len(fires) / (counted_to - counted_from)
    lateness = [x for r in results for x in r["lateness"]]
    stats = client.info("commandstats").get("cmdstat_evalsha", {})
    client.close()
    return {
        "processes": args.processes, "qps": args.qps, "seconds": args.seconds,
        "achieved_qps": round(achieved, 2),
        "achieved_vs_R_pct": round(100 * achieved / args.qps, 2) if args.qps else None,
        "calls_per_grant": round(sum(r["calls"] for r in results)
                                 / max(1, sum(r["grants"] for r in results)), 3),
        "lateness_p50_ms": round(1000 * percentile(lateness, 0.50), 3),
        "lateness_p99_ms": round(1000 * percentile(lateness, 0.99), 3),
        "script_usec_per_call": stats.get("usec_per_call"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--qps", type=float, default=200.0)
    parser.add_argument("--burst", type=int, default=0)
    parser.add_argument("--per-host-qps", type=float, default=0.0)
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--redis-url", help="an existing Redis (default: start a private one)")
    args = parser.parse_args()
    if args.redis_url:
        print(json.dumps(run(args.redis_url, args), indent=2))
    else:
        with private_redis() as url:
            print(json.dumps(run(url, args), indent=2))


if __name__ == "__main__":
    main()
