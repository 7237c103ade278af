"""Chaos run: a job over several workers while workers are SIGKILLed and Redis restarts.

    python -m bench.chaos [--urls 5000] [--workers 3] [--kill-every 3] [--qps 100]
                          [--batch-size 100] [--lease 20] [--seed N] [--timeout 900]
                          [--out DIR]

Everything is local and real: a redis-server with AOF (fsync always) on a free loopback
port, HTTP servers on 127.0.0.2-4 (tests/httpserver.py), `crawler worker` processes. While
the job runs, every `--kill-every` seconds a random worker gets SIGKILL and a fresh one is
started in its place; once, at about 40 % progress, Redis is stopped and started again. When
the job reports finished, the run counts:

* lost: accepted URLs without a record (must be 0);
* duplicated: records beyond one per URL (must be 0);
* refetched: URLs the servers saw more than once (expected: a killed worker's in-flight
  requests are fetched again; this costs requests, never records).

Writes bench/results/chaos.md and chaos.json, prints the markdown, exits 1 if lost or
duplicated is not 0.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from httpserver import serve_many  # noqa: E402
from redisserver import RedisServer  # noqa: E402

from crawler import Crawler, JobState  # noqa: E402

RESULTS = REPO / "bench" / "results"
HOSTS = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]


@dataclass
class ChaosResult:
    urls: int
    workers: int
    kill_every: float
    qps: float
    batch_size: int
    lease: float
    seed: int
    kills: int = 0
    redis_restarts: int = 0
    elapsed_s: float = 0.0
    state: str = ""
    records: int = 0
    lost: int = 0
    duplicated: int = 0
    refetched: int = 0
    server_requests: int = 0
    reaped_batches: int = 0
    events: list[str] = field(default_factory=list)


class Workers:
    def __init__(self, redis_url: str, logdir: Path, lease: float) -> None:
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CRAWLER_")}
        self.env |= {"CRAWLER_REDIS_URL": redis_url, "CRAWLER_LEASE_SECONDS": str(lease)}
        self.logdir = logdir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.gen = itertools.count(1)

    def start(self) -> str:
        name = f"c{next(self.gen)}@chaos"
        with open(self.logdir / f"{name}.log", "wb") as log:
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", "crawler", "worker", "--hostname", name,
                 "--concurrency", "20", "--loglevel", "INFO"],
                env=self.env, stdout=log, stderr=subprocess.STDOUT)
        return name

    def alive(self) -> list[str]:
        return [n for n, p in self.procs.items() if p.poll() is None]

    def kill(self, name: str) -> None:
        self.procs[name].kill()
        self.procs[name].wait(10)

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()

    def logs(self) -> str:
        return "".join(f.read_text(errors="replace") for f in self.logdir.glob("*.log"))


def run(args: argparse.Namespace) -> ChaosResult:
    rng = random.Random(args.seed)
    res = ChaosResult(urls=args.urls, workers=args.workers, kill_every=args.kill_every,
                      qps=args.qps, batch_size=args.batch_size, lease=args.lease,
                      seed=args.seed)
    redis = RedisServer(appendonly=True)
    logdir = Path(tempfile.mkdtemp(prefix="crawler-chaos-"))
    workers = Workers(redis.url, logdir, args.lease)
    t0 = time.monotonic()

    def event(text: str) -> None:
        line = f"{time.monotonic() - t0:7.1f} s  {text}"
        res.events.append(line)
        print(line, file=sys.stderr)

    try:
        with serve_many(HOSTS) as sites:
            cycle = itertools.cycle(sites)
            urls = [next(cycle).url(f"/page/{i}?chaos=1") for i in range(args.urls)]
            for _ in range(args.workers):
                workers.start()
            with Crawler(redis_url=redis.url) as api:
                job = api.submit(urls, qps=args.qps, batch_size=args.batch_size,
                                 allow_private_networks=True)
            event(f"submitted job {job}: {args.urls} URLs, {args.workers} workers")
            r = redis.client()
            next_kill = time.monotonic() + args.kill_every
            deadline = time.monotonic() + args.timeout
            while time.monotonic() < deadline:
                try:
                    meta = r.hmget(f"crawler:job:{{{job}}}:meta", "state")
                    done = int(r.hget(f"crawler:job:{{{job}}}:counters", "done") or 0)
                except Exception:  # Redis is restarting: this loop just tries again
                    r = redis.client()
                    time.sleep(0.2)
                    continue
                if meta[0] == b"finished":
                    break
                if not res.redis_restarts and done >= 0.4 * args.urls:
                    event(f"restarting Redis at {done} records")
                    redis.halt()
                    time.sleep(1.0)  # Redis stays down for a while
                    redis.start()
                    res.redis_restarts += 1
                    event("Redis is back")
                    r = redis.client()
                if time.monotonic() >= next_kill:
                    victim = rng.choice(workers.alive())
                    workers.kill(victim)
                    res.kills += 1
                    fresh = workers.start()
                    event(f"SIGKILL {victim} at {done} records; started {fresh}")
                    next_kill = time.monotonic() + args.kill_every
                time.sleep(0.1)  # a progress poll, not synchronisation
            res.elapsed_s = round(time.monotonic() - t0, 1)
            with Crawler(redis_url=redis.url) as api:
                st = api.status(job)
                res.state = str(st.state)
                recs = Counter(str(rec["url"]) for rec in api.results(job))
            res.records = sum(recs.values())
            res.lost = sum(1 for u in urls if u not in recs)
            res.duplicated = sum(n - 1 for n in recs.values())
            hits = Counter(f"{s.url(a.path)}?{a.query}" for s in sites for a in s.arrivals())
            res.server_requests = sum(hits.values())
            res.refetched = sum(1 for n in hits.values() if n > 1)
            event(f"job {res.state}: {res.records} records, lost {res.lost}, "
                  f"duplicated {res.duplicated}, refetched {res.refetched}")
            if st.state is not JobState.FINISHED:
                res.lost = max(res.lost, 1)
    finally:
        workers.stop()
        res.reaped_batches = workers.logs().count("lost their worker")
        redis.stop()
    return res


def markdown(res: ChaosResult) -> str:
    ok = res.lost == 0 and res.duplicated == 0 and res.state == "finished"
    return "\n".join([
        "# Chaos run",
        "",
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, `python -m bench.chaos "
        f"--urls {res.urls} --workers {res.workers} --kill-every {res.kill_every} "
        f"--qps {res.qps:g} --batch-size {res.batch_size} --lease {res.lease:g} "
        f"--seed {res.seed}`",
        "",
        "| measure | value |",
        "|---|---|",
        f"| URLs in the job | {res.urls:,} |",
        f"| workers (kept at) | {res.workers} |",
        f"| SIGKILLs | {res.kills} |",
        f"| Redis restarts | {res.redis_restarts} |",
        f"| reaper resends (log lines) | {res.reaped_batches} |",
        f"| job state | {res.state} |",
        f"| elapsed | {res.elapsed_s} s |",
        f"| records | {res.records:,} |",
        f"| **lost** | **{res.lost}** |",
        f"| **duplicated records** | **{res.duplicated}** |",
        f"| URLs fetched more than once at the server | {res.refetched} |",
        f"| requests at the servers | {res.server_requests:,} |",
        "",
        "Verdict: " + ("PASS (0 lost, 0 duplicated)" if ok else "FAIL"),
        "",
        "Events:",
        "",
        "```",
        *res.events,
        "```",
        "",
    ])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--urls", type=int, default=5000)
    p.add_argument("--workers", type=int, default=3)
    p.add_argument("--kill-every", type=float, default=3.0)
    p.add_argument("--qps", type=float, default=100.0, help="global rate: makes the job last")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--lease", type=float, default=20.0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--timeout", type=float, default=900.0)
    p.add_argument("--out", type=Path, default=RESULTS, help="where chaos.md/json go")
    args = p.parse_args(argv)
    res = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    text = markdown(res)
    (args.out / "chaos.md").write_text(text)
    (args.out / "chaos.json").write_text(json.dumps(asdict(res), indent=2) + "\n")
    print(text)
    return 0 if res.lost == 0 and res.duplicated == 0 and res.state == "finished" else 1


if __name__ == "__main__":
    sys.exit(main())
