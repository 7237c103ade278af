"""Distributed mode against embedded, on one machine: W `crawler worker` processes vs `crawl`.

    python -m bench.distributed [--urls 20000] [--repeat 1] [--workers 1,2,4]
                                [--modes async,threads] [--batch-sizes 500,1000]
                                [--submit-urls 100000] [--no-presubmitted] [--no-profile]
                                [--stacks DIR]

Against a local nginx site and a private redis-server (free loopback port, never 6379):

* embedded: `crawler crawl URLFILE -o /dev/null ... --stats-json F` with CRAWLER_REDIS_URL
  set to the same redis-server the workers use; pages/s from `pages_per_s`;
* distributed: for each mode, W and batch size B, start W `crawler worker` processes, wait
  for their Celery control ping, time `crawler submit` until the job is finished (status
  polled through `crawler.api.Crawler`); pages/s = total / (finished - started) from the job
  state, and pages / wall from the submit's spawn; then SIGTERM the workers and FLUSHALL;
* pre-submitted: the whole job enqueued first, then 1 worker started (no `submit` competing);
* submit speed: `crawler submit` of --submit-urls URLs with no worker running (enqueue only),
  as a process (spawn to exit) and in-process (`AsyncCrawler.submit_canonical`);
* profile: one more (unmeasured) 1-worker run per mode with `py-spy record --gil --pid` on the
  worker, and the enqueue-only submit under py-spy; shares of GIL samples by area.

Writes bench/results/distributed.md and distributed.json and prints the markdown.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from importlib.metadata import version
from pathlib import Path
from statistics import median
from typing import Any

import psutil

from bench import site
from bench.contenders import crawler_command, ours
from bench.procs import (
    Redis,
    cpu_model,
    git_revision,
    machine_busy,
    own_cpu,
    redis_server,
    run_measured,
    tree_cpu,
)
from bench.profile import read_stacks
from bench.run import REPO, RESULTS, child_env, describe_failure, log, warm_up

MODES = ("async", "threads")
READY_TIMEOUT = 60.0  # s for workers to answer a control ping
STOP_TIMEOUT = 20.0  # s for a worker to exit after SIGTERM before it is killed
POLL = 0.02  # s between job status reads while a job runs
GOALS = {"one worker / embedded": 0.85, "submit URLs/s": 50_000}

# py-spy areas for a worker process; the first area with a matching frame wins, so the
# Celery/kombu frames (task threads, broker I/O, events) come before the libraries they call.
AREAS = (
    ("start-up imports", ("_find_and_load",)),
    ("celery/kombu (consumer, task protocol, events, broker I/O)",
     ("celery/", "kombu/", "billiard/", "vine/", "amqp/")),
    ("intake: read and canonicalize URLs", ("crawler/urls.py", "w3lib/", "idna/")),
    ("redis-py client (limiter, store, job state)", ("redis/",)),
    ("records and store (JSON, digests)", ("crawler/store.py", "crawler/records.py")),
    ("aiohttp", ("aiohttp/", "yarl/", "multidict/")),
    ("requests/urllib3/http.client", ("requests/", "urllib3/", "/http/client.py")),
    ("engine glue (engines/, guard, body)",
     ("crawler/engines/", "crawler/guard.py", "crawler/body.py")),
    ("runner", ("crawler/runner.py",)),
    ("limiter glue (ratelimit/)", ("crawler/ratelimit/",)),
    ("job control (jobs.py)", ("crawler/jobs.py",)),
    ("thread pool", ("concurrent/futures/",)),
    ("worker runtime (worker_runtime.py, slots)",
     ("crawler/worker_runtime.py", "crawler/slots.py")),
    ("event loop and the rest", ("",)),
)
# uvloop is C: the time it spends in itself (polling, callbacks, transports) is charged to the
# Python frame that called run_forever, the runtime's loop thread.
LOOP_LEAF = ("WorkerRuntime._serve", "event loop (uvloop's own C code, under run_forever)")


def csv_ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.distributed",
                                description=__doc__.splitlines()[0])
    p.add_argument("--urls", type=int, default=20_000, help="pages in the site and the job")
    p.add_argument("--repeat", type=int, default=1, help="runs per configuration (median)")
    p.add_argument("--workers", type=csv_ints, default=[1, 2, 4], help="worker processes")
    p.add_argument("--modes", type=lambda s: s.split(","), default=list(MODES))
    p.add_argument("--batch-sizes", type=csv_ints, default=[500, 1000],
                   help="`submit --batch-size` values; the first is the reference")
    p.add_argument("--async-concurrency", type=int, default=100)
    p.add_argument("--threads-concurrency", type=int, default=32)
    p.add_argument("--submit-urls", type=int, default=100_000,
                   help="URLs in the enqueue-only submit test (0 skips it)")
    p.add_argument("--no-presubmitted", action="store_true",
                   help="skip the 1-worker runs started after the whole job was enqueued")
    p.add_argument("--no-profile", action="store_true", help="skip the py-spy profiles")
    p.add_argument("--profile-rate", type=int, default=200, help="py-spy samples per second")
    p.add_argument("--stacks", type=Path, help="keep py-spy's collapsed stacks in this dir")
    p.add_argument("--timeout", type=float, default=300.0, help="s per job")
    p.add_argument("--out", type=Path, default=RESULTS, help="where distributed.md/json go")
    args = p.parse_args(argv)
    if bad := set(args.modes) - set(MODES):
        p.error(f"unknown mode(s): {', '.join(sorted(bad))}")
    if 1 not in args.workers:
        args.workers.insert(0, 1)  # the reference for every ratio
    return args


@dataclass
class Run:
    """One measured crawl: embedded (workers 0) or distributed."""

    config: str
    mode: str
    workers: int  # 0: embedded
    batch_size: int | None
    concurrency: int
    rep: int
    pages: int = 0
    ok: int = 0
    elapsed: float = 0.0  # s: embedded's runner timer, or the job's finished - started
    wall: float = 0.0  # s: spawn of `crawl` / `submit` to exit / job finished (as polled)
    submit_wall: float | None = None  # s: the `submit` process alone
    cpu: float | None = 0.0  # s: the crawl process, or every worker process (threads incl.)
    nginx_cpu: float = 0.0
    redis_cpu: float = 0.0
    maxrss_mib: float | None = None
    after_submit: float | None = None  # pages/s from the submit's exit to the job's end
    ready_s: float | None = None  # s from spawning the workers to all answering a ping
    killed_workers: int = 0  # workers that ignored SIGTERM for STOP_TIMEOUT s
    timeline: list[tuple[float, int]] = field(default_factory=list)  # (s since submit, done)
    error: str | None = None

    @property
    def rate(self) -> float:
        return self.pages / self.elapsed if self.elapsed > 0 else 0.0


@dataclass
class SubmitRun:
    batch_size: int
    rep: int
    urls: int
    process_wall: float = 0.0  # s, spawn to exit of `crawler submit`
    process_cpu: float = 0.0
    inproc: float = 0.0  # s around AsyncCrawler.submit_canonical (file read included)
    batches: int = 0
    error: str | None = None


@dataclass
class Ctx:
    site: site.Site
    redis: Redis
    tmp: Path
    timeout: float
    urlfile: Path
    env: dict[str, str] = field(default_factory=dict)


# --- workers -------------------------------------------------------------------------------


def start_workers(ctx: Ctx, n: int, conc: int, tag: str) -> list[subprocess.Popen[bytes]]:
    procs = []
    for i in range(1, n + 1):
        logf = (ctx.tmp / f"worker-{tag}-b{i}.log").open("wb")
        procs.append(subprocess.Popen(
            [*crawler_command(), "worker", "--hostname", f"b{i}@bench",
             "--concurrency", str(conc), "--loglevel", "WARNING"],
            env=ctx.env, cwd=REPO, stdout=logf, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        ))
        logf.close()
    return procs


def wait_ready(ctx: Ctx, procs: list[subprocess.Popen[bytes]], tag: str) -> float:
    """Until every worker answers a Celery control ping; returns the seconds it took."""
    from crawler.broker import producer_app

    app = producer_app(ctx.redis.url)
    want = {f"b{i}@bench" for i in range(1, len(procs) + 1)}
    start = time.monotonic()
    while time.monotonic() - start < READY_TIMEOUT:
        for i, p in enumerate(procs, 1):
            if p.poll() is not None:
                raise RuntimeError(f"worker b{i} exited with {p.returncode} before it was "
                                   f"ready: {log_tail(ctx, tag, i)}")
        got = {h for reply in app.control.ping(timeout=1) or [] for h in reply}
        if want <= got:
            return time.monotonic() - start
    raise RuntimeError(f"workers {sorted(want)} not all ready in {READY_TIMEOUT} s")


def log_tail(ctx: Ctx, tag: str, i: int, lines: int = 3) -> str:
    path = ctx.tmp / f"worker-{tag}-b{i}.log"
    text = path.read_text(errors="replace") if path.exists() else ""
    return " | ".join(text.strip().splitlines()[-lines:])[-400:] or "no output"


def worker_complaints(ctx: Ctx, tag: str, n: int) -> list[str]:
    """ERROR/CRITICAL lines and tracebacks in the workers' logs (run at WARNING)."""
    out = []
    for i in range(1, n + 1):
        path = ctx.tmp / f"worker-{tag}-b{i}.log"
        for line in path.read_text(errors="replace").splitlines() if path.exists() else ():
            if re.search(r"ERROR|CRITICAL|Traceback", line):
                out.append(f"b{i}: {line.strip()[:300]}")
    return out


def stop_workers(procs: list[subprocess.Popen[bytes]]) -> int:
    """SIGTERM (Celery's warm shutdown) each, wait; kill the ones that hang. Returns killed."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    killed = 0
    deadline = time.monotonic() + STOP_TIMEOUT
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            killed += 1
    return killed


def cpu_of(procs: list[subprocess.Popen[bytes]]) -> float:
    total = 0.0
    for p in procs:
        try:
            t = psutil.Process(p.pid).cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system
    return total


def rss_mib(procs: list[subprocess.Popen[bytes]]) -> float:
    total = 0
    for p in procs:
        try:
            total += psutil.Process(p.pid).memory_info().rss
        except psutil.Error:
            continue
    return total / 2**20


# --- one distributed run ----------------------------------------------------------------------


def submit_cmd(urlfile: Path, mode: str, batch_size: int) -> list[str]:
    return [*crawler_command(), "submit", str(urlfile), "--allow-private-networks",
            "--retries", "0", "--mode", mode, "--batch-size", str(batch_size)]


def poll_job(ctx: Ctx, c: Any, job: str, r: Run, t0: float, note_at: float | None = None
             ) -> tuple[Any, float | None]:
    """Read the job's status every POLL s until it ends; returns it (None on timeout) and the
    time it was seen ended. Records (s since t0, done) about every 0.25 s in r.timeline."""
    from crawler.jobs import TERMINAL

    last = -1.0
    while True:
        st = c.status(job)
        now = time.perf_counter() - t0
        if now - last >= 0.25 or st.state in TERMINAL:
            r.timeline.append((round(now, 3), st.done))
            last = now
        if st.state in TERMINAL:
            return st, now
        if now > ctx.timeout:
            r.error = (f"job {job} still {st.state} after {ctx.timeout:.0f} s: "
                       f"{st.done}/{st.total} done")
            return None, None
        time.sleep(POLL)


def finish_run(r: Run, st: Any, job: str) -> None:
    r.pages, r.ok = st.done, st.ok
    if st.started is None or st.finished is None:
        r.error = f"job {job} {st.state} without started/finished times"
        return
    r.elapsed = (st.finished - st.started) / 1000
    if st.state != "finished" or st.done != st.total or st.total == 0:
        r.error = f"job {job} {st.state}: {st.done}/{st.total} done, {st.cancelled} cancelled"
    elif st.ok != st.done:
        r.error = f"job {job}: only {st.ok}/{st.done} ok; errors {st.errors}"


def run_job(ctx: Ctx, mode: str, batch_size: int, procs: list[subprocess.Popen[bytes]],
            r: Run) -> None:
    """Submit the URL file and wait for the job; fills r (procs: the workers, for CPU)."""
    from crawler.api import Crawler

    with Crawler(redis_url=ctx.redis.url, broker_url=ctx.redis.url) as c:
        cpu0, nginx0, redis0 = cpu_of(procs), tree_cpu(ctx.site.pid), tree_cpu(ctx.redis.pid)
        t0 = time.perf_counter()
        sub = subprocess.run(submit_cmd(ctx.urlfile, mode, batch_size), env=ctx.env, cwd=REPO,
                             capture_output=True, text=True, timeout=ctx.timeout)
        r.submit_wall = time.perf_counter() - t0
        if sub.returncode != 0:
            tail = " | ".join(sub.stderr.strip().splitlines()[-3:])[-400:]
            r.error = f"submit failed (exit {sub.returncode}): {tail}"
            return
        job = sub.stdout.strip().splitlines()[-1]
        st, seen = poll_job(ctx, c, job, r, t0)
        if st is None or seen is None:
            return
        r.wall = seen
        r.cpu = cpu_of(procs) - cpu0
        r.nginx_cpu = tree_cpu(ctx.site.pid) - nginx0
        r.redis_cpu = tree_cpu(ctx.redis.pid) - redis0
        r.maxrss_mib = rss_mib(procs)
    # The steady state without the submit process competing for the cores: from the first
    # poll after it exited to the end, when at least a tenth of the job was left by then.
    t_sub, done_sub = r.timeline[0]
    if st.total and st.done - done_sub >= st.total / 10 and seen > t_sub:
        r.after_submit = (st.done - done_sub) / (seen - t_sub)
    finish_run(r, st, job)


def presubmitted(ctx: Ctx, mode: str, conc: int, batch_size: int, rep: int,
                 n: int = 1) -> Run:
    """n workers started together after the whole job is enqueued: no submit competing for
    the cores (as the peers' queues are filled before their processes start)."""
    from crawler.api import Crawler

    r = Run(f"distributed W={n} B={batch_size} pre-submitted", mode, n, batch_size, conc, rep)
    r.cpu = None  # the worker's start-up would be charged to the job: not measured
    tag = f"{mode}-presub-w{n}-b{batch_size}-r{rep}"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with Crawler(redis_url=ctx.redis.url, broker_url=ctx.redis.url) as c:
            t0 = time.perf_counter()
            sub = subprocess.run(submit_cmd(ctx.urlfile, mode, batch_size), env=ctx.env,
                                 cwd=REPO, capture_output=True, text=True, timeout=ctx.timeout)
            r.submit_wall = time.perf_counter() - t0
            if sub.returncode != 0:
                r.error = f"submit failed (exit {sub.returncode}): {sub.stderr.strip()[-300:]}"
                return r
            job = sub.stdout.strip().splitlines()[-1]
            nginx0, redis0 = tree_cpu(ctx.site.pid), tree_cpu(ctx.redis.pid)
            t1 = time.perf_counter()
            procs = start_workers(ctx, n, conc, tag)
            st, seen = poll_job(ctx, c, job, r, t1)
            if st is None or seen is None:
                return r
            r.wall = r.submit_wall + seen  # submit alone, then worker spawn to job end
            r.nginx_cpu = tree_cpu(ctx.site.pid) - nginx0
            r.redis_cpu = tree_cpu(ctx.redis.pid) - redis0
            r.maxrss_mib = rss_mib(procs)
        finish_run(r, st, job)
    except subprocess.TimeoutExpired as exc:
        r.error = str(exc)
    finally:
        r.killed_workers = stop_workers(procs)
        ctx.redis.flush()
    if complaints := worker_complaints(ctx, tag, n):
        r.error = (r.error + "; " if r.error else "") + \
            f"worker log: {len(complaints)} error lines, first: {complaints[0]}"
    return r


def distributed(ctx: Ctx, mode: str, n: int, conc: int, batch_size: int, rep: int,
                profile: Path | None = None, rate: int = 200) -> Run:
    config = f"distributed W={n} B={batch_size}"
    r = Run(config, mode, n, batch_size, conc, rep)
    tag = f"{mode}-w{n}-b{batch_size}-r{rep}" + ("-profile" if profile else "")
    procs = start_workers(ctx, n, conc, tag)
    spy: subprocess.Popen[bytes] | None = None
    try:
        r.ready_s = wait_ready(ctx, procs, tag)
        if profile is not None:
            spy = subprocess.Popen(
                [str(shutil.which("py-spy")), "record", "--gil", "--nonblocking", "-r",
                 str(rate), "-f", "raw", "-o", str(profile), "--pid", str(procs[0].pid)],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            time.sleep(0.5)  # attached before the job starts
        run_job(ctx, mode, batch_size, procs, r)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        r.error = str(exc)
    finally:
        if spy is not None:
            spy.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
            try:
                spy.wait(30)
            except subprocess.TimeoutExpired:
                spy.kill()
                spy.wait()
        r.killed_workers = stop_workers(procs)
        ctx.redis.flush()  # only now: no worker is left to touch the keys
    if complaints := worker_complaints(ctx, tag, n):
        r.error = (r.error + "; " if r.error else "") + \
            f"worker log: {len(complaints)} error lines, first: {complaints[0]}"
    return r


def embedded(ctx: Ctx, mode: str, conc: int, rep: int) -> Run:
    r = Run("embedded", mode, 0, None, conc, rep)
    stats = ctx.tmp / f"stats-{mode}-{rep}.json"
    cmd = [*ours(mode)(ctx.urlfile, conc), "--stats-json", str(stats)]
    nginx0, redis0 = tree_cpu(ctx.site.pid), tree_cpu(ctx.redis.pid)
    fin = run_measured(cmd, env=ctx.env, cwd=REPO, tmp=ctx.tmp, timeout=ctx.timeout)
    r.nginx_cpu = tree_cpu(ctx.site.pid) - nginx0
    r.redis_cpu = tree_cpu(ctx.redis.pid) - redis0
    r.wall, r.cpu, r.maxrss_mib = fin.wall, fin.cpu, fin.maxrss_kib / 1024
    ctx.redis.flush()
    if fin.returncode != 0:
        r.error = describe_failure(fin, "crawl failed")
        return r
    try:
        d = json.loads(stats.read_text())
    except (OSError, ValueError) as exc:
        r.error = describe_failure(fin, f"no --stats-json output: {exc}")
        return r
    r.pages, r.ok, r.elapsed = int(d["done"]), int(d["ok"]), float(d["elapsed_s"])
    if r.ok != r.pages or r.pages == 0:
        r.error = f"only {r.ok}/{r.pages} ok; errors {d.get('errors')}"
    return r


# --- submit speed ---------------------------------------------------------------------------


def submit_speed(ctx: Ctx, urlfile: Path, n: int, batch_size: int, rep: int) -> SubmitRun:
    """Enqueue only (no worker runs): the `submit` process, then the API call in-process."""
    from crawler import loops
    from crawler.api import AsyncCrawler
    from crawler.jobs import JobControl
    from crawler.urls import IntakeStats, iter_urls, open_source

    s = SubmitRun(batch_size, rep, n)
    fin = run_measured(submit_cmd(urlfile, "async", batch_size), env=ctx.env, cwd=REPO,
                       tmp=ctx.tmp, timeout=ctx.timeout)
    s.process_wall, s.process_cpu = fin.wall, fin.cpu
    if fin.returncode != 0:
        s.error = describe_failure(fin, "submit failed")
        ctx.redis.flush()
        return s
    job = fin.stdout.strip().splitlines()[-1]

    async def check(c: AsyncCrawler, job_id: str) -> tuple[int, int]:
        st = await JobControl(c.client, c.settings.key_prefix).status(job_id)
        return st.total, st.batches

    async def inproc() -> tuple[float, int, int, int, int]:
        c = AsyncCrawler(redis_url=ctx.redis.url, broker_url=ctx.redis.url,
                         allow_private_networks=True, retries=0)
        try:
            total0, batches0 = await check(c, job)
            await c.client.flushall()
            intake = IntakeStats()
            with open_source(str(urlfile)) as source:
                t0 = time.perf_counter()
                job2 = await c.submit_canonical(iter_urls(source, intake), batch_size=batch_size,
                                                intake=intake)
                took = time.perf_counter() - t0
            total, batches = await check(c, job2)
            return took, total0, batches0, total, batches
        finally:
            await c.aclose()

    try:
        s.inproc, total0, s.batches, total, batches = loops.run(inproc())
        if total0 != n or total != n or batches != s.batches:
            s.error = (f"jobs hold {total0} (process) and {total} (in-process) URLs, "
                       f"{s.batches}/{batches} batches; expected {n}")
    except Exception as exc:  # reported, not raised: the rest still runs
        s.error = f"in-process submit failed: {type(exc).__name__}: {exc}"
    ctx.redis.flush()
    return s


# --- profile --------------------------------------------------------------------------------


def summarize_profile(path: Path, top: int = 15) -> dict[str, Any]:
    stacks = read_stacks(path)
    total = sum(n for _, n in stacks) or 1
    areas: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    for frames, n in stacks:
        joined = ";".join(frames)
        if frames[-1].startswith(LOOP_LEAF[0]):
            areas[LOOP_LEAF[1]] += n
        else:
            areas[next(a for a, pats in AREAS if any(p in joined for p in pats))] += n
        leaves[frames[-1]] += n
    return {
        "samples": total,
        "areas": [(a, round(n / total, 4)) for a, n in areas.most_common()],
        "functions": [(f, round(n / total, 4)) for f, n in leaves.most_common(top)],
    }


# --- report ---------------------------------------------------------------------------------


def med(values: list[float]) -> float:
    return median(values) if values else 0.0


def med_opt(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return median(present) if present else None


def rows(runs: list[Run]) -> list[dict[str, Any]]:
    out = []
    for key in dict.fromkeys((r.mode, r.config) for r in runs):
        good = [r for r in runs if (r.mode, r.config) == key and r.error is None]
        failed = [r for r in runs if (r.mode, r.config) == key and r.error is not None]
        first = next(r for r in runs if (r.mode, r.config) == key)
        row: dict[str, Any] = {
            "mode": first.mode, "config": first.config, "workers": first.workers,
            "batch_size": first.batch_size, "concurrency": first.concurrency,
            "runs": len(good), "failed": len(failed),
            "error": failed[0].error if failed else None,
        }
        if good:
            row.update(
                pages=int(med([r.pages for r in good])),
                rate=med([r.rate for r in good]),
                rate_wall=med([r.pages / r.wall for r in good]),
                elapsed=med([r.elapsed for r in good]),
                wall=med([r.wall for r in good]),
                submit_wall=med([r.submit_wall for r in good if r.submit_wall is not None])
                if first.workers else None,
                after_submit=med_opt([r.after_submit for r in good]),
                ready_s=med_opt([r.ready_s for r in good]),
                cpu_ms=med_opt([None if r.cpu is None else 1000 * r.cpu / r.pages
                                for r in good]),
                nginx_ms=med([1000 * r.nginx_cpu / r.pages for r in good]),
                redis_ms=med([1000 * r.redis_cpu / r.pages for r in good]),
                rss_mib=med([r.maxrss_mib or 0.0 for r in good]),
            )
        out.append(row)
    return out


def ratios(table: list[dict[str, Any]], batch_sizes: list[int]) -> list[dict[str, Any]]:
    by = {(r["mode"], r["workers"], r["batch_size"]): r for r in table
          if "rate" in r and "pre-submitted" not in r["config"]}
    pre = {r["mode"]: r for r in table if "rate" in r and "pre-submitted" in r["config"]}
    out = []
    for mode in dict.fromkeys(r["mode"] for r in table):
        emb = by.get((mode, 0, None))
        if emb and mode in pre:
            out.append({"mode": mode, "what": f"1 worker, job pre-submitted "
                        f"(B={pre[mode]['batch_size']}) / embedded, pages/s",
                        "ratio": pre[mode]["rate"] / emb["rate"],
                        "goal": GOALS["one worker / embedded"]})
        for b in batch_sizes:
            one = by.get((mode, 1, b))
            if emb and one:
                for key, label in (("rate", "pages/s"), ("rate_wall", "pages/s incl. start-up")):
                    goal = GOALS["one worker / embedded"] if key == "rate" else None
                    out.append({"mode": mode, "what": f"1 worker (B={b}) / embedded, {label}",
                                "ratio": one[key] / emb[key], "goal": goal})
            for w in sorted({k[1] for k in by if k[0] == mode and k[1] > 1}):
                many = by.get((mode, w, b))
                if one and many:
                    out.append({"mode": mode, "what": f"{w} workers / 1 worker (B={b})",
                                "ratio": many["rate"] / one["rate"], "goal": None})
    return out


def fmt(v: float | None, spec: str = ",.0f") -> str:
    return "-" if v is None else format(v, spec)


def markdown(info: dict[str, str], table: list[dict[str, Any]], rats: list[dict[str, Any]],
             submits: list[dict[str, Any]], profiles: dict[str, Any]) -> str:
    lines = ["# Distributed benchmark", ""]
    lines += [f"- {k}: {v}" for k, v in info.items()]
    lines += ["", "## Crawl (medians)", "",
              "| mode | config | C | runs | pages | pages/s | pages/s incl. start-up | "
              "pages/s after submit exited | crawl s | wall s | submit s | CPU ms/page | "
              "nginx CPU ms/page | redis CPU ms/page | RSS MiB |",
              "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for r in table:
        if "rate" not in r:
            lines.append(f"| {r['mode']} | {r['config']} | {r['concurrency']} | 0 | FAILED: "
                         f"{r['error']} ||||||||||||")
            continue
        lines.append(
            f"| {r['mode']} | {r['config']} | {r['concurrency']} | {r['runs']} | {r['pages']} | "
            f"{fmt(r['rate'])} | {fmt(r['rate_wall'])} | {fmt(r['after_submit'])} | "
            f"{r['elapsed']:.2f} | {r['wall']:.2f} | "
            f"{fmt(r['submit_wall'], '.2f')} | {fmt(r['cpu_ms'], '.3f')} | {r['nginx_ms']:.3f} | "
            f"{r['redis_ms']:.3f} | {r['rss_mib']:.0f} |")
    failures = [r for r in table if r["failed"] and "rate" in r]
    for r in failures:
        lines.append(f"\n{r['mode']} {r['config']}: {r['failed']} failed run(s): {r['error']}")
    lines += ["", "## Ratios (pages/s of the medians)", ""]
    for x in rats:
        goal = "" if x["goal"] is None else (
            f" (goal >= {x['goal']:.2f}: {'met' if x['ratio'] >= x['goal'] else 'NOT met'})")
        lines.append(f"- {x['mode']}: {x['what']}: **{x['ratio']:.2f}**{goal}")
    if submits:
        lines += ["", "## Submit speed (enqueue only, no worker running)", "",
                  "| URLs | batch size | runs | `crawler submit` process URLs/s | process s | "
                  "process CPU s | start-up s (`submit --help`) | in-process `submit_canonical` "
                  "URLs/s | in-process s | batches |",
                  "|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
        for s in submits:
            if s.get("error"):
                lines.append(f"| {s['urls']} | {s['batch_size']} | - | FAILED: {s['error']} "
                             f"|||||||")
                continue
            lines.append(
                f"| {s['urls']} | {s['batch_size']} | {s['runs']} | {fmt(s['process_rate'])} | "
                f"{s['process_wall']:.2f} | {s['process_cpu']:.2f} | {s['startup']:.2f} | "
                f"{fmt(s['inproc_rate'])} | "
                f"{s['inproc']:.2f} | {s['batches']} |")
        target = GOALS["submit URLs/s"]
        lines += ["", f"Goal: >= {target:,.0f} URLs/s. " + "; ".join(
            f"B={s['batch_size']}: process {'met' if s['process_rate'] >= target else 'NOT met'}"
            f", in-process {'met' if s['inproc_rate'] >= target else 'NOT met'}"
            for s in submits if not s.get("error"))]
    for mode, p in profiles.items():
        what = (f"`crawler submit` of the {submits[0]['urls'] if submits else '?'}-URL file, "
                f"no worker" if mode == "submit" else f"worker b1 (1 worker, {mode})")
        lines += ["", f"## py-spy --gil of {what}", ""]
        if "error" in p:
            lines.append(f"not profiled: {p['error']}")
            continue
        under = (f"; the profiled run did {fmt(p['rate'])} pages/s under py-spy"
                 if "rate" in p else "")
        lines.append(f"{p['samples']} GIL samples{under}. By area:")
        lines += [""] + [f"- {share:6.1%}  {a}" for a, share in p["areas"]]
        lines += ["", "Hottest functions (self):", ""]
        lines += [f"- {share:6.1%}  `{f}`" for f, share in p["functions"]]
    lines += ["", "Numbers from a machine where the workers, nginx and Redis share the cores; "
              "compare rows of the same run."]
    return "\n".join(lines) + "\n"


def machine_info(args: argparse.Namespace, srv: site.Site, redis: Redis) -> dict[str, str]:
    model, git = cpu_model(), git_revision(REPO)
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{os.cpu_count()} CPUs ({model}), {platform.platform()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "libraries": f"celery {version('celery')}, kombu {version('kombu')}, "
                     f"aiohttp {version('aiohttp')}, requests {version('requests')}, "
                     f"redis-py {version('redis')}",
        "site": f"{srv.server}, {args.urls} pages on {srv.base}",
        "redis": f"redis-server {redis.version} (broker, limiter, job state and results)",
        "job": f"{args.urls} URLs, --retries 0, --allow-private-networks; concurrency "
               f"{args.async_concurrency} async / {args.threads_concurrency} threads; "
               f"{args.repeat} repetition(s), median",
        "pages/s": "pages / the crawl's own timer (embedded: runner start to end; distributed: "
                   "job `finished - started`, first batch start to last batch end)",
        "pages/s incl. start-up": "embedded: pages / `crawl` process wall; distributed: pages / "
                                  "(spawn of `submit` to the job seen finished), workers "
                                  "already running",
        "CPU ms/page": "embedded: the crawl process (wait4); distributed: all worker processes "
                       "(psutil, submit to finish)",
        "git": f"{git} (working tree as it was)",
    }


# --- main ----------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> str:
    conc = {"async": args.async_concurrency, "threads": args.threads_concurrency}
    busy = psutil.cpu_percent(interval=1.0)  # other load on the machine voids the numbers
    if busy > 20:
        log(f"warning: the machine is already {busy:.0f}% busy before the benchmark starts")
    tmp = Path(tempfile.mkdtemp(prefix="crawler-dist-bench-"))
    started = time.monotonic()
    machine0, ours0 = machine_busy(), own_cpu()
    try:
        root = tmp / "site"
        site.generate(root, args.urls)
        with site.serve(root, tmp) as srv, redis_server(tmp) as redis:
            if redis is None:
                sys.exit("redis-server not found: the distributed benchmark needs one")
            urlfile = tmp / "urls.txt"
            site.write_url_file(urlfile, srv.base, args.urls)
            ctx = Ctx(srv, redis, tmp, args.timeout, urlfile, child_env(redis))
            log(f"site: {srv.server} at {srv.base}, {args.urls} pages; redis {redis.url}")
            warm_up(urlfile, {"site": srv, "redis": redis, "tmp": tmp, "timeout": args.timeout})
            runs = measure_all(ctx, args, conc)
            submits = measure_submit(ctx, args, srv.base)
            profiles = profile_all(ctx, args, conc)
            info = machine_info(args, srv, redis)
            info["benchmark wall"] = f"{time.monotonic() - started:.0f} s"
            if problems := srv.problems():
                info["SITE ERRORS (numbers suspect)"] = f"{len(problems)}, first: {problems[0]}"
        # Every child is reaped by now (nginx and redis-server included), so own_cpu() has them.
        wall = time.monotonic() - started
        other = (machine_busy() - machine0) - (own_cpu() - ours0)
        share = max(other, 0.0) / (wall * (os.cpu_count() or 1))
        info["other load"] = (
            f"{busy:.0f}% of the CPUs busy in the second before the start; during the run, "
            f"processes other than the benchmark's (and kernel softirq) used {other:.0f} CPU s, "
            f"{share:.0%} of the machine" + ("; NUMBERS SUSPECT" if share > 0.1 else ""))
        log(f"other load: {info['other load']}")
        table = rows(runs)
        rats = ratios(table, args.batch_sizes)
        md = markdown(info, table, rats, submits, profiles)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "distributed.md").write_text(md)
        (args.out / "distributed.json").write_text(json.dumps({
            "info": info, "rows": table, "ratios": rats, "submit": submits,
            "profiles": profiles, "runs": [asdict(r) | {"rate": r.rate} for r in runs],
        }, indent=2) + "\n")
        return md
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def show(r: Run) -> str:
    head = f"{r.mode:<7} {r.config:<24} rep {r.rep}:"
    if r.error:
        return f"{head} FAILED {r.error}"
    sub = f", submit {r.submit_wall:.2f} s" if r.submit_wall is not None else ""
    after = f", {r.after_submit:,.0f}/s after submit" if r.after_submit else ""
    cpu = f", CPU {1000 * r.cpu / max(r.pages, 1):.3f} ms/page" if r.cpu is not None else ""
    return (f"{head} {r.rate:8,.0f} pages/s ({r.ok}/{r.pages} ok, crawl {r.elapsed:.2f} s, "
            f"wall {r.wall:.2f} s{sub}{after}{cpu})")


def measure_all(ctx: Ctx, args: argparse.Namespace, conc: dict[str, int]) -> list[Run]:
    """Repetitions interleaved: each covers every configuration once, in the same order."""
    runs: list[Run] = []
    broken: set[tuple[str, str]] = set()
    for rep in range(1, args.repeat + 1):
        for mode in args.modes:
            plan: list[tuple[int, int | None]] = [(0, None)]
            plan += [(w, b) for b in args.batch_sizes for w in args.workers]
            if not args.no_presubmitted:
                plan.append((-1, args.batch_sizes[0]))
            for w, b in plan:
                key = (mode, f"{w}/{b}")
                if key in broken:
                    continue
                if w == 0:
                    r = embedded(ctx, mode, conc[mode], rep)
                elif w < 0:
                    assert b is not None
                    r = presubmitted(ctx, mode, conc[mode], b, rep)
                else:
                    assert b is not None
                    r = distributed(ctx, mode, w, conc[mode], b, rep)
                log(show(r))
                runs.append(r)
                if r.error and r.pages == 0:
                    broken.add(key)  # nothing fetched: don't spend minutes failing again
    return runs


def measure_submit(ctx: Ctx, args: argparse.Namespace, base: str) -> list[dict[str, Any]]:
    if args.submit_urls <= 0:
        return []
    n = args.submit_urls
    path = ctx.tmp / "submit-urls.txt"
    path.write_text("".join(f"{base}/page/{i}\n" for i in range(n)))
    startup = []
    for _ in range(3):
        fin = run_measured([*crawler_command(), "submit", "--help"], env=ctx.env, cwd=REPO,
                           tmp=ctx.tmp, timeout=60)
        startup.append(fin.wall)
    log(f"`crawler submit --help`: {median(startup):.2f} s (interpreter start and imports)")
    out: list[dict[str, Any]] = []
    for b in args.batch_sizes:
        samples = []
        for rep in range(1, args.repeat + 1):
            s = submit_speed(ctx, path, n, b, rep)
            log(f"submit {n} URLs B={b} rep {rep}: " + (f"FAILED {s.error}" if s.error else
                f"process {n / s.process_wall:,.0f} URLs/s ({s.process_wall:.2f} s), "
                f"in-process {n / s.inproc:,.0f} URLs/s ({s.inproc:.2f} s), "
                f"{s.batches} batches"))
            samples.append(s)
        good = [s for s in samples if s.error is None]
        row: dict[str, Any] = {"urls": n, "batch_size": b, "runs": len(good),
                               "samples": [asdict(s) for s in samples]}
        if good:
            row.update(process_wall=med([s.process_wall for s in good]),
                       process_cpu=med([s.process_cpu for s in good]),
                       inproc=med([s.inproc for s in good]), batches=good[0].batches)
            row.update(process_rate=n / row["process_wall"], inproc_rate=n / row["inproc"],
                       startup=median(startup))
        else:
            row["error"] = samples[0].error
        out.append(row)
    return out


def profile_all(ctx: Ctx, args: argparse.Namespace, conc: dict[str, int]) -> dict[str, Any]:
    if args.no_profile:
        return {}
    if shutil.which("py-spy") is None:
        return {m: {"error": "py-spy not found (pip install py-spy)"} for m in args.modes}
    out: dict[str, Any] = {}
    stacks_dir = args.stacks or ctx.tmp
    stacks_dir.mkdir(parents=True, exist_ok=True)
    for mode in args.modes:
        path = stacks_dir / f"distributed-{mode}.pyspy.txt"
        r = distributed(ctx, mode, 1, conc[mode], args.batch_sizes[0], 0, profile=path,
                        rate=args.profile_rate)
        log(f"profiled: {show(r)}")
        if not path.exists() or not path.read_text().strip():
            out[mode] = {"error": f"py-spy wrote nothing ({r.error or 'run ok'})"}
            continue
        out[mode] = summarize_profile(path) | {"rate": r.rate, "run_error": r.error}
    if args.submit_urls > 0:
        path = stacks_dir / "distributed-submit.pyspy.txt"
        urls = ctx.tmp / "submit-urls.txt"
        subprocess.run([str(shutil.which("py-spy")), "record", "--gil", "-r",
                        str(args.profile_rate), "-f", "raw", "-o", str(path), "--",
                        *submit_cmd(urls, "async", args.batch_sizes[0])],
                       env=ctx.env, cwd=REPO, capture_output=True, timeout=ctx.timeout)
        ctx.redis.flush()
        out["submit"] = summarize_profile(path) if path.exists() else {
            "error": "py-spy wrote nothing"}
        log(f"profiled `crawler submit` of {args.submit_urls} URLs")
    return out


def main(argv: list[str] | None = None) -> None:
    print(run(parse_args(argv)))


if __name__ == "__main__":
    main()
