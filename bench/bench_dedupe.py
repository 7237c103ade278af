"""Benchmark of the per-job intake dedupe: the exact `queued` set against the Bloom filter.

Claims N synthetic canonical URLs through `ResultStore.claim` (as `submit` and the frontier do,
2,000 URLs per Lua call) into one job per mode, on its own redis-server on a free loopback
port, and reports per mode:

- memory: MEMORY USAGE of the dedupe key (SAMPLES 0: every member), and the growth of
  INFO used_memory over the run (the claim answers, kept 1 h for retries, deleted first);
- throughput: URLs/s seen by the client, and the script's own time per URL (commandstats);
- false positives: URLs dropped while filling (each new, so each one a false positive), and
  the rate over N other URLs once the filter is full, asked at the cap so none is added.

    python -m bench.bench_dedupe                   # 1,000,000 URLs, set + bloom 1 % + 0.1 %
    python -m bench.bench_dedupe --urls 100000     # quick
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from bench.procs import cpu_model, git_revision, redis_server
from crawler.bloom import BloomParams, expected_fp_rate
from crawler.store import ResultStore

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
CHUNK = 10_000  # URLs per claim() call: ResultStore splits it into Lua calls of 2,000


@dataclass
class Result:
    mode: str
    m_bits: int | None
    k: int | None
    urls: int
    key_bytes: int  # MEMORY USAGE of the dedupe key
    used_memory_delta: int  # INFO used_memory after - before, answers deleted
    claim_s: float
    urls_per_s: float
    script_us_per_url: float
    dropped_while_filling: int  # new URLs taken for seen during the fill
    fp_probe: int  # of `urls` other URLs, taken for seen once full
    fp_rate: float
    expected_fp_rate: float | None  # at n = urls, from the formula

    @property
    def bytes_per_million(self) -> float:
        return self.key_bytes * 1_000_000 / self.urls


def synthetic_urls(tag: str, n: int) -> Iterator[list[str]]:
    """Canonical-looking URLs over 5,000 hosts, deterministic, in chunks of CHUNK."""
    for start in range(0, n, CHUNK):
        yield [f"https://{tag}{i % 5000}.example.com/section/{i // 5000}/page-{i}.html?id={i}"
               for i in range(start, min(start + CHUNK, n))]


async def used_memory(client: Any) -> int:
    return int((await client.info("memory"))["used_memory"])


async def drop_answers(client: Any, store: ResultStore) -> None:
    """Delete the claim calls' answers (1 h retry keys): they are not the dedupe's memory."""
    pattern = store.keys["counters"].rsplit(":", 1)[0] + ":claim:*"
    batch: list[bytes] = []
    async for key in client.scan_iter(match=pattern, count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            await client.delete(*batch)
            batch = []
    if batch:
        await client.delete(*batch)


async def run_mode(url: str, mode: str, params: BloomParams | None, n: int) -> Result:
    client = aioredis.Redis.from_url(url)
    await client.flushall()
    # Warm-up on a throwaway job: loads the script, grows the connection's buffers to a
    # claim call's size, so used_memory's growth below is the job's dedupe structure.
    await ResultStore(client, "warm-up", bloom=params and BloomParams(8, params.k)).claim(
        next(synthetic_urls("warm", CHUNK)))
    await client.delete(*await client.keys("*warm-up*"))
    store = ResultStore(client, f"bench-{mode}", bloom=params)
    await client.config_resetstat()
    before = await used_memory(client)
    start = time.perf_counter()
    for chunk in synthetic_urls("h", n):
        await store.claim(chunk)
    claim_s = time.perf_counter() - start
    script_us = (await client.info("commandstats"))["cmdstat_evalsha"]["usec"]
    counters = await store.counters()
    await drop_answers(client, store)
    delta = await used_memory(client) - before
    key = store.keys["queued" if params is None else "bloom"]
    key_bytes = int(await client.memory_usage(key, samples=0))
    # Probe: N other URLs at the cap: known ones come back '0', new ones '2'; nothing added.
    over = store.over_limit
    for chunk in synthetic_urls("other", n):
        await store.claim(chunk, cap=counters["total"])
    fp_probe = n - (store.over_limit - over)
    await client.aclose()
    return Result(
        mode=mode, m_bits=params.m_bits if params else None, k=params.k if params else None,
        urls=n, key_bytes=key_bytes, used_memory_delta=delta, claim_s=round(claim_s, 3),
        urls_per_s=round(n / claim_s), script_us_per_url=round(script_us / n, 2),
        dropped_while_filling=counters.get("duplicates", 0), fp_probe=fp_probe,
        fp_rate=fp_probe / n,
        expected_fp_rate=expected_fp_rate(params.m_bits, params.k, n) if params else None,
    )


def markdown(info: dict[str, str], results: list[Result]) -> str:
    lines = [
        "# Intake dedupe: exact set against Bloom filter",
        "",
        f"{info['date']}, `{info['command']}`",
        "",
        f"Machine: {info['machine']}; {info['python']}; redis-server {info['redis']}; "
        f"git {info['git']}.",
        "",
        "| mode | m bits, k | key MEMORY USAGE | per 1M URLs | used_memory delta | claim URLs/s "
        "| script us/URL | dropped while filling | FP rate once full (expected) |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in results:
        mk = f"{r.m_bits:,}, {r.k}" if r.m_bits else "-"
        exp = f" ({r.expected_fp_rate:.4%})" if r.expected_fp_rate is not None else ""
        lines.append(
            f"| {r.mode} | {mk} | {r.key_bytes / 2**20:.2f} MiB "
            f"| {r.bytes_per_million / 2**20:.2f} MiB | {r.used_memory_delta / 2**20:.2f} MiB "
            f"| {r.urls_per_s:,} | {r.script_us_per_url} "
            f"| {r.dropped_while_filling:,} ({r.dropped_while_filling / r.urls:.4%}) "
            f"| {r.fp_probe:,} / {r.urls:,} = {r.fp_rate:.4%}{exp} |")
    lines += [
        "",
        "- **key MEMORY USAGE**: the dedupe key alone (`queued` set or `bloom` bitmap), "
        "`MEMORY USAGE key SAMPLES 0`. The bitmap is allocated whole on the first claim: its "
        "size does not depend on how many URLs the job has.",
        "- **used_memory delta**: INFO used_memory after the fill minus before (after a warm-up "
        "claim on another job), with the claim answers (1 h retry keys, about 2 kB per "
        "2,000-URL call) deleted first; it also counts allocator and buffer overhead that is not "
        "the key's (for the small bitmaps, about 0.3 MiB of it).",
        "- **claim URLs/s**: one client, one connection, `ResultStore.claim` of "
        f"{CHUNK:,}-URL chunks (2,000 per Lua call), digests computed in Python included.",
        "- **script us/URL**: the server's time in the claim script (INFO commandstats) / URLs.",
        "- **dropped while filling**: every URL of the fill is new, so each one dropped is a "
        "false positive a crawl would never fetch; the rate grows from 0 to the target as "
        "the filter fills, so this is below the full-filter rate.",
        "- **FP rate once full**: as many other URLs, asked at the cap (nothing is added), "
        "against the expected (1 - e^(-kn/m))^k.",
        "- The `seen` set (exactly-once records) is not part of this: it is exact in both modes.",
    ]
    return "\n".join(lines) + "\n"


def machine_info(args: argparse.Namespace, redis_version: str) -> dict[str, str]:
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": f"python -m bench.bench_dedupe --urls {args.urls}",
        "machine": f"{os.cpu_count()} CPUs ({cpu_model()}), {platform.platform()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "redis": redis_version,
        "git": f"{git_revision(REPO)} (working tree as it was)",
    }


async def run_all(url: str, n: int, capacity: int) -> list[Result]:
    modes: list[tuple[str, BloomParams | None]] = [
        ("set", None),
        ("bloom 1%", BloomParams.for_capacity(capacity, 0.01)),
        ("bloom 0.1%", BloomParams.for_capacity(capacity, 0.001)),
    ]
    out = []
    for mode, params in modes:
        r = await run_mode(url, mode, params, n)
        print(json.dumps(asdict(r)), flush=True)
        out.append(r)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--urls", type=int, default=1_000_000)
    parser.add_argument("--capacity", type=int, default=None,
                        help="Bloom capacity (default: --urls)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    with (tempfile.TemporaryDirectory(prefix="bench-dedupe-") as tmp,
          redis_server(Path(tmp)) as server):
        if server is None:
            raise SystemExit("redis-server is not installed")
        results = asyncio.run(run_all(server.url, args.urls, args.capacity or args.urls))
        info = machine_info(args, server.version)
    args.out.mkdir(parents=True, exist_ok=True)
    text = markdown(info, results)
    (args.out / "dedupe.md").write_text(text)
    (args.out / "dedupe.json").write_text(json.dumps(
        {"info": info, "results": [asdict(r) for r in results]}, indent=2) + "\n")
    print(text)


if __name__ == "__main__":
    main()
