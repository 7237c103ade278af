"""Load simulation: many simulated workers drive the real limiter, job queue and store.

    python -m bench.scale_sim                    # single Redis + a 3-master cluster, ~7 min
    python -m bench.scale_sim --quick            # 3 steps, single Redis + cluster, < 2 min
    python -m bench.scale_sim --cluster URL      # a cluster someone else runs (redis+cluster://)
    python -m bench.scale_sim --no-single --cluster --workers 64,128

A simulated worker is one `crawler worker` with its fetches replaced by a sleep of
`--latency` (x 0.5..1.5): the library's own JobControl, ResultStore, AsyncRateLimiter with
paced leases and BatchRunner (bench/scale_worker.py). `--processes` OS processes (2 cores:
2 by default, niced so Redis keeps its priority) split the step's workers between them. The
global limit is `--qps`, by default ten times the distributed crawl rate measured on this
machine (docs/benchmarks.md: ours W=2, 12,446 pages/s), so the limiter is never what holds a
step back: a step does what its workers, their CPU and Redis allow.

Per step (a worker count): achieved fetches/s against the ideal min(qps, W x C / latency),
Redis CPU (INFO used_cpu_user + used_cpu_sys deltas; on a cluster the sum and the busiest
primary), Redis CPU per fetch, p50/p99 of the limiter's round trip as the dispatcher waits for
it, and calls/s by kind as the children counted them. Results: bench/results/scale_sim.md and
scale_sim.json. No traffic leaves 127.0.0.0/8.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench import scale_worker
from bench.procs import cpu_model, git_revision, redis_server
from bench.scale_redis import Servers, command_delta, cpu_share, drop_keys, make_client
from crawler.jobs import JobControl

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
MEASURED_RATE = 12_446  # pages/s, ours W=2 distributed, docs/benchmarks.md (this machine)
DEFAULT_QPS = 10 * MEASURED_RATE  # the "ten times this machine's crawl rate"
PREFIX = "scalesim"  # every key the simulation writes starts with it (dropped after a step)
START_SLACK = 0.5  # s between "go" and the workers' start: every child hears it in time
SCRIPTS = ("acquire", "store", "claim", "batch_start", "batch_end", "lease_renew")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.scale_sim",
                                description=__doc__.split("\n")[0])
    p.add_argument("--qps", type=float, default=DEFAULT_QPS,
                   help="global limit (default %(default)s)")
    p.add_argument("--latency", type=float, default=0.1, help="mean fake fetch, s")
    p.add_argument("--workers", default="1,4,16,64,128", help="simulated worker counts")
    p.add_argument("--concurrency", type=int, default=100, help="per simulated worker")
    p.add_argument("--processes", type=int, default=2, help="OS processes per step")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--hosts", type=int, default=1000, help="distinct hosts in the URLs")
    p.add_argument("--lease-period", type=float, default=0.02, help="0 = no paced leases")
    p.add_argument("--seconds", type=float, default=10.0, help="measured window per step")
    p.add_argument("--warmup", type=float, default=3.0, help="s before the window")
    p.add_argument("--nice", type=int, default=5, help="niceness of the simulating processes")
    p.add_argument("--cluster", nargs="?", const="start", default=None,
                   help="also run on a Redis Cluster: a redis+cluster:// URL, or none to "
                        "start a 3-master one on loopback")
    p.add_argument("--no-single", action="store_true", help="skip the single redis-server")
    p.add_argument("--quick", action="store_true", help="workers 1,16,64; 4 s windows")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if args.quick:
        args.workers, args.seconds, args.warmup = "1,16,64", 4.0, 2.0
        args.cluster = args.cluster or "start"
    args.worker_counts = [int(w) for w in args.workers.split(",")]
    return args


@contextmanager
def started_cluster() -> Iterator[str]:
    """A 3-master cluster on loopback, made by the tests' own helper (tests/redistopo.py)."""
    sys.path.insert(0, str(REPO / "tests"))
    from redistopo import RedisClusterServers  # tests/ is not a package

    servers = RedisClusterServers()
    try:
        yield servers.url
    finally:
        servers.stop()


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) by nearest rank; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def split(names: list[str], parts: int) -> list[list[str]]:
    """Names dealt round-robin into at most `parts` non-empty lists."""
    return [names[i::parts] for i in range(min(parts, len(names)))]


async def run_children(target: Callable[..., None], per_child: list[tuple[Any, ...]], *,
                       warmup: float, seconds: float, servers: Servers, nice: int
                       ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Spawn one process per argument tuple, start them together, sample Redis over the
    window [t0, t1) and return what each child measured plus the server's deltas."""
    ctx = mp.get_context("spawn")
    out, go = ctx.Queue(), ctx.Queue()
    procs = [ctx.Process(target=target, args=(*a, nice, out, go)) for a in per_child]
    for pr in procs:
        pr.start()
    try:
        for _ in procs:
            if await asyncio.to_thread(out.get, timeout=120) != "ready":
                raise RuntimeError("a child failed to start")
        start = time.monotonic() + START_SLACK
        t0 = start + warmup
        t1 = t0 + seconds
        for _ in procs:
            go.put((start, t0, t1))
        await asyncio.sleep(max(t0 - time.monotonic(), 0))
        before = await servers.sample()
        await asyncio.sleep(max(t1 - time.monotonic(), 0))
        after = await servers.sample()
        results = [await asyncio.to_thread(out.get, timeout=120) for _ in procs]
    finally:
        for pr in procs:
            await asyncio.to_thread(pr.join, 30)
            if pr.is_alive():
                pr.terminate()
    if errors := [r["error"] for r in results if "error" in r]:
        raise RuntimeError(f"a child failed: {errors[0]}")
    server = {"commands": command_delta(before, after), **cpu_share(before, after),
              "used_memory": after.used_memory, "wall_s": after.at - before.at}
    if servers.cluster:
        rl_before, rl_after = before.nodes[servers.rl_node], after.nodes[servers.rl_node]
        server["rl_node"] = servers.rl_node
        server["rl_node_commands"] = command_delta(rl_before, rl_after)
    return results, server


async def _new_job(url: str, job_id: str) -> None:
    client = make_client(url, name="scale-sim-setup")
    await JobControl(client, PREFIX).create(job_id, {"sim": True})
    await client.aclose()


def _config(args: argparse.Namespace, url: str, job_id: str, lease_period: float
            ) -> scale_worker.SimConfig:
    return scale_worker.SimConfig(
        url=url, prefix=PREFIX, job_id=job_id, qps=args.qps, lease_period=lease_period,
        concurrency=args.concurrency, latency=args.latency, batch_size=args.batch_size,
        hosts=args.hosts, t0=0.0, t1=0.0, start=0.0)


async def run_step(args: argparse.Namespace, url: str, workers: int, *,
                   lease_period: float | None = None) -> dict[str, Any]:
    """One step: `workers` simulated workers over `args.processes` processes, measured."""
    lease = args.lease_period if lease_period is None else lease_period
    job_id = f"sim-{uuid.uuid4().hex[:8]}"
    await _new_job(url, job_id)
    cfg = _config(args, url, job_id, lease)
    names = [f"w{i}" for i in range(workers)]
    servers = await Servers.connect(url)
    try:
        results, server = await run_children(
            scale_worker.child, [(cfg, part) for part in split(names, args.processes)],
            warmup=args.warmup, seconds=args.seconds, servers=servers, nice=args.nice)
    finally:
        await drop_keys(servers, f"{PREFIX}:*")
        await servers.aclose()
    return summarize(args, workers, lease, results, server)


def summarize(args: argparse.Namespace, workers: int, lease: float,
              results: list[dict[str, Any]], server: dict[str, Any]) -> dict[str, Any]:
    """One table row (and its JSON) from the children's counts and the server's deltas."""
    secs = args.seconds
    fetches = sum(r["fetches"] for r in results)
    calls: dict[str, int] = {}
    for r in results:
        for k, v in r["calls"].items():
            calls[k] = calls.get(k, 0) + v
    # Percentiles over the children's reservoir samples (equal shares: workers dealt evenly).
    lat = [x for r in results for x in r["latencies"]]
    evalsha = server["commands"].get("evalsha", {})
    redis_cpu_s = server["cpu_pct"] / 100 * server["wall_s"]
    return {
        "workers": workers, "processes": min(args.processes, workers),
        "lease_period": lease, "qps": args.qps,
        "ideal": round(min(args.qps, workers * args.concurrency / args.latency)),
        "fetches_per_s": round(fetches / secs, 1),
        "redis_cpu_pct": server["cpu_pct"], "busiest": server.get("busiest"),
        "busiest_pct": server.get("busiest_pct"), "per_node_pct": server.get("per_node_pct"),
        "redis_us_per_fetch": round(1e6 * redis_cpu_s / fetches, 2) if fetches else None,
        "client_cpu_pct": round(100 * sum(r["cpu_s"] for r in results) / secs, 1),
        "limiter_p50_ms": round(1000 * percentile(lat, 0.5), 3),
        "limiter_p99_ms": round(1000 * percentile(lat, 0.99), 3),
        "calls_per_s": {k: round(v / secs, 1) for k, v in sorted(calls.items())},
        "calls_per_fetch": {k: round(v / fetches, 5) for k, v in sorted(calls.items())}
        if fetches else {},
        "hosts_per_acquire": round(calls.get("acquire_hosts", 0) / calls["acquire"], 2)
        if calls.get("acquire") else None,
        "evalsha_per_s": round(evalsha.get("calls", 0) / server["wall_s"], 1),
        "evalsha_us_per_call": round(evalsha.get("usec_per_call", 0.0), 2),
        "late_slots": sum(r["late_slots"] for r in results),
        "rl_node": server.get("rl_node"),
        "rl_node_evalsha_per_s": round(server.get("rl_node_commands", {}).get(
            "evalsha", {}).get("calls", 0) / server["wall_s"], 1)
        if server.get("rl_node") else None,
        "server_commands": server["commands"],
    }


def markdown(info: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    lines = [
        "# Load simulation: simulated workers against a real Redis",
        "",
        f"{info['date']}, `{info['command']}`",
        "",
        f"Machine: {info['machine']}; {info['python']}; redis-server {info['redis']}; "
        f"git {info['git']}. Global limit {info['qps']:,.0f} QPS (10 x {MEASURED_RATE:,} "
        f"pages/s), fake fetch {info['latency'] * 1000:.0f} ms (x 0.5..1.5), C = "
        f"{info['concurrency']} per worker, batches of {info['batch_size']} URLs over "
        f"{info['hosts']:,} hosts, lease period {info['lease_period']} s, "
        f"{info['seconds']:g} s windows after {info['warmup']:g} s of warm-up.",
        "",
        "| Redis | workers | procs | ideal/s | fetches/s | Redis CPU % | busiest node % "
        "| Redis us/fetch | client CPU % | limiter p50 ms | p99 ms | acquire/s | hosts/acquire "
        "| store/s | other scripts/s |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in rows:
        c = r["calls_per_s"]
        other = sum(c.get(k, 0) for k in SCRIPTS[2:])
        busiest = f"{r['busiest_pct']}" if r["busiest_pct"] is not None else "-"
        lines.append(
            f"| {r['topology']} | {r['workers']} | {r['processes']} | {r['ideal']:,} "
            f"| {r['fetches_per_s']:,.0f} | {r['redis_cpu_pct']} | {busiest} "
            f"| {r['redis_us_per_fetch']} | {r['client_cpu_pct']} | {r['limiter_p50_ms']} "
            f"| {r['limiter_p99_ms']} | {c.get('acquire', 0):,.0f} | {r['hosts_per_acquire']} "
            f"| {c.get('store', 0):,.0f} | {other:,.0f} |")
    lines += [
        "",
        "- **ideal/s**: min(global limit, workers x C / mean latency): what the workers could "
        "do with free CPU. **fetches/s**: fake fetches finished inside the window.",
        "- **Redis CPU %**: INFO used_cpu_user + used_cpu_sys over the window, % of one core "
        "(cluster: summed over the 3 primaries; **busiest node**: the highest one).",
        "- **Redis us/fetch**: Redis CPU over the window / fetches in it.",
        "- **client CPU %**: the simulating processes' own CPU (% of one core, summed).",
        "- **limiter p50/p99**: one `acquire_many` round trip (acquire.lua), as the dispatcher "
        "waits for it, on a machine whose 2 cores the clients and Redis share.",
        "- **other scripts/s**: claim + batch_start + batch_end + lease_renew calls.",
    ]
    return "\n".join(lines) + "\n"


def machine_info(args: argparse.Namespace, redis_version: str) -> dict[str, Any]:
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python -m bench.scale_sim " + " ".join(sys.argv[1:]),
        "machine": f"{os.cpu_count()} CPUs ({cpu_model()})",
        "python": f"CPython {sys.version.split()[0]}", "redis": redis_version,
        "git": f"{git_revision(REPO)} (working tree as it was)",
        **{k: getattr(args, k) for k in ("qps", "latency", "concurrency", "batch_size", "hosts",
                                         "lease_period", "seconds", "warmup", "processes")},
    }


async def sweep(args: argparse.Namespace, topology: str, url: str) -> list[dict[str, Any]]:
    rows = []
    for w in args.worker_counts:
        row = {"topology": topology, **await run_step(args, url, w)}
        print(json.dumps({k: v for k, v in row.items() if k != "server_commands"}), flush=True)
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp, \
            redis_server(Path(tmp)) as server:
        if server is None:
            raise SystemExit("redis-server is not installed")
        if not args.no_single:
            rows += asyncio.run(sweep(args, "single", server.url))
        if args.cluster == "start":
            with started_cluster() as url:
                rows += asyncio.run(sweep(args, "cluster x3", url))
        elif args.cluster:
            rows += asyncio.run(sweep(args, "cluster", args.cluster))
        info = machine_info(args, server.version)
    args.out.mkdir(parents=True, exist_ok=True)
    text = markdown(info, rows)
    (args.out / "scale_sim.md").write_text(text)
    (args.out / "scale_sim.json").write_text(json.dumps({"info": info, "rows": rows},
                                                        indent=1) + "\n")
    print(text)


if __name__ == "__main__":
    main()
