"""Per-operation costs for the scale model (docs/scaling.md), measured on private servers.

    python -m bench.scale_costs                  # ~3 min: 100,000 items, cluster for the hot slot
    python -m bench.scale_costs --quick          # ~1 min: 20,000 items, shorter windows
    python -m bench.scale_costs --no-cluster --no-rabbitmq

* **scripts**: Redis time per call of each Lua script the crawler runs per fetch or per batch
  (INFO commandstats `evalsha` usec over N calls of one script alone, after CONFIG RESETSTAT).
* **memory**: used_memory growth per queued URL (dedupe set member + batch list entry), per
  dedupe entry (exact set; Bloom bitmap at 1 % and 0.1 %), per record (`seen` member +
  results stream + counters), per limiter host bucket, over `--items` of each.
* **broker**: one Celery message per batch, sent with `crawler.broker.send_batches` as submit
  does, to a Redis broker on a private port and to a vhost of the machine's RabbitMQ when
  one answers on 127.0.0.1:5672 (made and deleted with rabbitmqctl): messages counted on the
  queue, bytes per message, and the broker's CPU per message published and consumed.
* **hot slot**: every limiter key carries `{rl}`, one cluster slot. The most acquire.lua
  calls/s one server gives (a back-to-back hammer), then the calls/s paced leases make at the
  simulated global rate (`--qps`) on the `{rl}` shard of a 3-master cluster, against one
  slot per call without leases; and the real runner's calls per fetch with and without
  leases when the global limit binds.

Results: bench/results/scale_costs.md and scale_costs.json. No traffic leaves 127.0.0.0/8.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from bench import scale_broker, scale_sim, scale_worker
from bench.procs import redis_server
from bench.scale_redis import Servers, drop_keys
from crawler.bloom import BloomParams
from crawler.jobs import JobControl
from crawler.leases import Leases, LeaseTiming
from crawler.ratelimit import AsyncRateLimiter, LimiterConfig
from crawler.records import FetchResult, Record
from crawler.store import CLAIM_MAX, WRITE_MAX, PendingRecord, ResultStore

BATCH = 1000  # URLs per batch: crawler.api.DEFAULT_BATCH_SIZE
LEASE_PERIOD = 0.02  # s: crawler.pacing.LEASE_PERIOD, the default lease period
CALLERS = 256  # limiter callers in the hot-slot runs: 64 workers x 4 batches in flight


def url_of(i: int) -> str:
    """A URL of typical length (~60 bytes) over 5,000 hosts."""
    return f"https://www.host-{i % 5000}.example.com/section/{i // 5000}/page-{i}.html"


def record_of(url: str, job: str) -> PendingRecord:
    res = FetchResult(url=url, final_url=url, status=200, bytes=scale_worker.PAGE_BYTES,
                      content_type="text/html", elapsed_ms=100.0)
    return PendingRecord(Record.from_result(res, attempts=1, worker="w0", job=job))


async def script_usec(client: Any, calls: Callable[[], Awaitable[Any]], n: int) -> float:
    """Redis time per evalsha over `n` calls of one script alone (commandstats)."""
    await calls()  # loads the script, sizes the connection's buffers
    await client.config_resetstat()
    for _ in range(n):
        await calls()
    stats = (await client.info("commandstats")).get("cmdstat_evalsha", {"usec": 0, "calls": 1})
    return round(float(stats["usec"]) / int(stats["calls"]), 2)


async def scripts(url: str, n: int) -> dict[str, Any]:
    """usec per call of each script on the fetch and batch paths, alone."""
    client = aioredis.Redis.from_url(url)
    out: dict[str, Any] = {}
    limiter = AsyncRateLimiter(client, LimiterConfig(qps=1e9, prefix="cost", scope="s"))
    hosts = iter(range(10**9))

    def acquire(k: int) -> Callable[[], Awaitable[Any]]:
        return lambda: limiter.acquire_many([f"h{next(hosts) % 1000}.sim" for _ in range(k)])

    for k in (1, 10, 50):
        out[f"acquire_{k}_hosts"] = await script_usec(client, acquire(k), n)
    store = ResultStore(client, "costs", prefix="cost")
    urls = iter(range(10**9))
    out["claim_2000_urls"] = await script_usec(client, lambda: store.claim(
        [url_of(next(urls)) for _ in range(CLAIM_MAX)]), max(n // 100, 5))
    out["store_500_records"] = await script_usec(client, lambda: store.write(
        [record_of(url_of(next(urls)), "costs") for _ in range(WRITE_MAX)]), max(n // 50, 5))
    jobs = JobControl(client, "cost")
    await jobs.create("costs", {})
    batches = max(n // 20, 10)
    pipe = client.pipeline(transaction=False)
    for b in range(batches + 1):
        jobs.add_batch(pipe, "costs", b, [url_of(b * BATCH + i) for i in range(BATCH)])
    await pipe.execute()
    seq, ends = iter(range(batches + 1)), iter(range(batches + 1))
    out["batch_start"] = await script_usec(client, lambda: jobs.batch_start(
        "costs", next(seq), "w0", token="t", lease_ms=20_000), batches)
    out["batch_end_1000_urls"] = await script_usec(client, lambda: jobs.batch_end(
        "costs", next(ends), [], token="t", lease_ms=20_000), batches)
    leases = Leases(client, "cost", LeaseTiming())
    owned = {b: "t" for b in range(4)}
    out["lease_renew_4_batches"] = await script_usec(
        client, lambda: leases.renew("costs", "w0", owned), max(n // 10, 10))
    await client.flushall()
    await client.aclose()
    return out


async def grown(client: Any, fill: Callable[[], Awaitable[None]], drop: str | None = None
                ) -> int:
    """used_memory after `fill` minus before (keys matching `drop` deleted first)."""
    before = int((await client.info("memory"))["used_memory"])
    await fill()
    if drop:
        keys = [k async for k in client.scan_iter(match=drop, count=1000)]
        for i in range(0, len(keys), 500):
            await client.delete(*keys[i:i + 500])
    return int((await client.info("memory"))["used_memory"]) - before


async def memory(url: str, n: int) -> dict[str, Any]:
    """Bytes per item of what the crawler keeps in Redis, over `n` items each."""
    client = aioredis.Redis.from_url(url)
    answers = "cost:job:*:claim:*"  # claim replies kept 1 h for retries: not per-URL state
    out: dict[str, Any] = {"items": n}
    store = ResultStore(client, "mem-set", prefix="cost")
    await store.claim([url_of(-i - 1) for i in range(100)])  # warm-up: buffers, script
    await client.flushall()

    async def claim_all(s: ResultStore) -> None:
        for i in range(0, n, CLAIM_MAX * 5):
            await s.claim([url_of(j) for j in range(i, min(i + CLAIM_MAX * 5, n))])

    out["dedupe_set"] = await grown(client, lambda: claim_all(store), answers) / n
    for rate in (0.01, 0.001):
        bloom = ResultStore(client, f"mem-bloom-{rate}", prefix="cost",
                            bloom=BloomParams.for_capacity(n, rate))
        out[f"dedupe_bloom_{rate:g}"] = await grown(client, partial(claim_all, bloom),
                                                    answers) / n
    jobs = JobControl(client, "cost")

    async def batches() -> None:
        pipe = client.pipeline(transaction=False)
        for b in range(-(-n // BATCH)):
            jobs.add_batch(pipe, "mem", b, [url_of(i) for i in range(b * BATCH,
                                                                     min((b + 1) * BATCH, n))])
        await pipe.execute()

    out["batch_list_entry"] = await grown(client, batches) / n
    out["queued_url"] = out["dedupe_set"] + out["batch_list_entry"]
    records = ResultStore(client, "mem-rec", prefix="cost")

    async def write_all() -> None:
        for i in range(0, n, WRITE_MAX):
            await records.write([record_of(url_of(j), "mem-rec")
                                 for j in range(i, min(i + WRITE_MAX, n))])

    out["record"] = await grown(client, write_all) / n
    out["record_parts"] = {name: int(await client.memory_usage(records.keys[name], samples=0)
                                     or 0) / n for name in ("seen", "results")}
    hosts = min(n, 10_000)
    limiter = AsyncRateLimiter(client, LimiterConfig(qps=1e9, per_host_qps=1, prefix="cost"))

    async def acquire_hosts() -> None:
        for i in range(0, hosts, 50):
            await limiter.acquire_many([f"h{j}.sim" for j in range(i, i + 50)])

    out["limiter_host_key"] = await grown(client, acquire_hosts) / hosts
    out["record_json_bytes"] = len(record_of(url_of(12345), "mem-rec").record.to_json())
    await client.flushall()
    await client.aclose()
    return {k: round(v, 2) if isinstance(v, float) else v for k, v in out.items()}


def hot_slot_args(args: argparse.Namespace, **over: Any) -> argparse.Namespace:
    base = scale_sim.parse_args(["--seconds", str(args.seconds), "--warmup", "2"])
    for k, v in over.items():
        setattr(base, k, v)
    return base


async def hammer(url: str, args: argparse.Namespace, *, lease: int, period: float,
                 qps: float, processes: int = 2) -> dict[str, Any]:
    """Limiter-only run (scale_worker._hammer) over `processes` processes: calls/s, grants/s,
    the server's CPU (total and the `{rl}` node's) and usec per call."""
    cfg = scale_worker.SimConfig(url=url, prefix=scale_sim.PREFIX, job_id="hammer", qps=qps,
                                 lease_period=period, concurrency=0, latency=0,
                                 batch_size=0, hosts=100_000, t0=0, t1=0, start=0)
    servers = await Servers.connect(url)
    per = CALLERS // processes
    try:
        results, server = await scale_sim.run_children(
            scale_worker.hammer_child, [(cfg, lease, per, period)] * processes,
            warmup=2.0, seconds=args.seconds, servers=servers, nice=args.nice)
    finally:
        await drop_keys(servers, f"{scale_sim.PREFIX}:*")
        await servers.aclose()
    secs = args.seconds
    calls = sum(r["calls"].get("acquire", 0) for r in results)
    lat = [x for r in results for x in r["latencies"]]
    node = server.get("rl_node")
    ev = (server["rl_node_commands"] if node else server["commands"]).get("evalsha", {})
    cpu = server["per_node_pct"][node] if node else server["cpu_pct"]
    return {"lease": lease, "period": period, "qps": qps, "callers": per * processes,
            "calls_per_s": round(calls / secs), "granted_per_s": round(sum(
                r["calls"].get("granted", 0) for r in results) / secs),
            "shard_cpu_pct": cpu, "shard": node or "single",
            "usec_per_call": round(ev.get("usec_per_call", 0.0), 2),
            "client_cpu_pct": round(100 * sum(r["cpu_s"] for r in results) / secs, 1),
            "p50_ms": round(1000 * scale_sim.percentile(lat, 0.5), 3),
            "p99_ms": round(1000 * scale_sim.percentile(lat, 0.99), 3)}


async def hot_slot(args: argparse.Namespace, single: str, shard_url: str) -> dict[str, Any]:
    """The `{rl}` shard: its ceiling, and the calls paced leases make at the simulated QPS."""
    lease = max(1, round(args.qps * LEASE_PERIOD / CALLERS))
    out: dict[str, Any] = {"qps": args.qps, "callers": CALLERS, "lease": lease}
    out["ceiling_1"] = await hammer(single, args, lease=1, period=0, qps=1e9)
    out["ceiling_lease"] = await hammer(single, args, lease=lease, period=0, qps=1e9)
    out["paced"] = await hammer(shard_url, args, lease=lease, period=LEASE_PERIOD,
                                qps=args.qps)
    out["unpaced"] = await hammer(shard_url, args, lease=1, period=CALLERS / args.qps,
                                  qps=args.qps)
    for k in ("ceiling_1", "ceiling_lease"):  # what one core of server time allows
        usec = out[k]["usec_per_call"]
        out[k]["max_calls_per_s"] = round(1e6 / usec) if usec else None
    # The real runner when the global limit binds: calls per fetch with and without leases.
    binding = hot_slot_args(args, qps=args.binding_qps)
    out["runner"] = {}
    for period in (LEASE_PERIOD, 0.0):
        row = await scale_sim.run_step(binding, single, args.binding_workers,
                                       lease_period=period)
        out["runner"][str(period)] = {k: row[k] for k in (
            "workers", "qps", "fetches_per_s", "calls_per_fetch", "hosts_per_acquire",
            "limiter_p99_ms", "redis_cpu_pct", "late_slots")}
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.scale_costs",
                                description=__doc__.split("\n")[0])
    p.add_argument("--items", type=int, default=100_000, help="items per memory measurement")
    p.add_argument("--calls", type=int, default=5_000, help="calls per script measurement")
    p.add_argument("--batches", type=int, default=2_000, help="broker messages sent")
    p.add_argument("--qps", type=float, default=scale_sim.DEFAULT_QPS)
    p.add_argument("--binding-qps", type=float, default=5_000.0,
                   help="global limit for the runner's calls-per-fetch check (binds)")
    p.add_argument("--binding-workers", type=int, default=16)
    p.add_argument("--seconds", type=float, default=8.0, help="window of each timed run")
    p.add_argument("--nice", type=int, default=5)
    p.add_argument("--no-cluster", action="store_true",
                   help="hot slot on the single server instead of a 3-master cluster")
    p.add_argument("--no-rabbitmq", action="store_true")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", type=Path, default=scale_sim.RESULTS)
    args = p.parse_args(argv)
    if args.quick:
        args.items, args.calls, args.batches, args.seconds = 20_000, 1_000, 500, 4.0
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-costs-") as tmp, \
            redis_server(Path(tmp)) as server:
        if server is None:
            raise SystemExit("redis-server is not installed")
        info = scale_sim.machine_info(scale_sim.parse_args([]), server.version)
        result["info"] = {k: info[k] for k in ("date", "machine", "python", "redis", "git")}
        result["info"]["command"] = "python -m bench.scale_costs " + " ".join(sys.argv[1:])
        result["scripts"] = asyncio.run(scripts(server.url, args.calls))
        print(json.dumps(result["scripts"]), flush=True)
        result["memory"] = asyncio.run(memory(server.url, args.items))
        print(json.dumps(result["memory"]), flush=True)
        result["broker"] = scale_broker.measure(Path(tmp), args.batches, BATCH,
                                                rabbitmq=not args.no_rabbitmq)
        print(json.dumps(result["broker"]), flush=True)
        if args.no_cluster:
            result["hot_slot"] = asyncio.run(hot_slot(args, server.url, server.url))
        else:
            with scale_sim.started_cluster() as cluster:
                result["hot_slot"] = asyncio.run(hot_slot(args, server.url, cluster))
        print(json.dumps(result["hot_slot"]), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    text = markdown(result)
    (args.out / "scale_costs.md").write_text(text)
    (args.out / "scale_costs.json").write_text(json.dumps(result, indent=1) + "\n")
    print(text)


def markdown(r: dict[str, Any]) -> str:
    info, s, m, hs = r["info"], r["scripts"], r["memory"], r["hot_slot"]
    lines = [
        "# Per-operation costs (scale model)", "",
        f"{info['date']}, `{info['command']}`", "",
        f"Machine: {info['machine']}; {info['python']}; redis-server {info['redis']}; "
        f"git {info['git']}.", "",
        "## Lua script time (Redis usec per call, INFO commandstats, one script alone)", "",
        "| script | usec/call |", "|---|--:|",
        *(f"| {k} | {v} |" for k, v in s.items()), "",
        f"## Redis memory (used_memory growth over {m['items']:,} items)", "",
        "| item | bytes |", "|---|--:|",
        *(f"| {k} | {v} |" for k, v in m.items() if k not in ("items", "record_parts")),
        *(f"| record part: {k} (MEMORY USAGE) | {v:.1f} |"
          for k, v in m["record_parts"].items()), "",
        "## Broker (one message per batch)", "",
        scale_broker.markdown(r["broker"]), "",
        f"## Hot slot: acquire.lua on the `{{rl}}` shard at {hs['qps']:,.0f} QPS", "",
        "| run | hosts/call | calls/s | granted/s | shard CPU % | usec/call | 1 core allows "
        "calls/s | p50 ms | p99 ms |", "|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for k in ("ceiling_1", "ceiling_lease", "paced", "unpaced"):
        h = hs[k]
        lines.append(f"| {k} ({h['shard']}) | {h['lease']} | {h['calls_per_s']:,} "
                     f"| {h['granted_per_s']:,} | {h['shard_cpu_pct']} | {h['usec_per_call']} "
                     f"| {h.get('max_calls_per_s') or '-'} | {h['p50_ms']} | {h['p99_ms']} |")
    lines += ["", "Runner, global limit binding (calls per fetch by kind):", ""]
    for period, row in hs["runner"].items():
        lines.append(f"- lease period {period} s: {row['workers']} workers at "
                     f"{row['qps']:,.0f} QPS, {row['fetches_per_s']:,.0f} fetches/s, acquire "
                     f"{row['calls_per_fetch'].get('acquire', 0)} calls/fetch, "
                     f"{row['hosts_per_acquire']} hosts/call, p99 {row['limiter_p99_ms']} ms, "
                     f"late slots {row['late_slots']}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
