"""Latency-bound crawling: every page takes --delay ms, so throughput is concurrency / delay.

    python -m bench.latency [--concurrency 10,100,250,500,1000] [--delay 100] [--rounds 40]
                            [--repeat 3] [--rows raw-aiohttp,ours,ours-default]
                            [--worker-check | --no-worker] [--worker-urls 100000]
                            [--worker-concurrency 1000] [--server node|python] [--out DIR]

A server on a free 127.0.0.1 port (bench/latency_server.js on Node, else an aiohttp fallback
in a child process) answers every GET after the delay with the same ~2.5 KiB page. Per
concurrency C the URL file has C x rounds distinct URLs on that one host, so a client that
keeps C requests in flight needs `rounds` delays (4 s by default). Rows, each in its own
process measured with wait4, interleaved over repetitions (medians reported):

* raw-aiohttp: `python -m bench.raw_aiohttp URLFILE --concurrency C`;
* ours: `crawler crawl URLFILE -o /dev/null --mode async --concurrency C
  --allow-private-networks --no-progress --retries 0` with CRAWLER_LIMIT_PER_HOST=C (no CLI
  flag sets it), the per-host share made the whole pool;
* ours-default: the same command without that setting (a host alone may use every slot).

The server counts what it sees (/__stats): peak and mid-run median of requests in flight,
connections opened, and its own CPU per request (/proc/PID/stat), so a capped client or a
server-bound run shows. The worker check runs one `crawler worker --concurrency 1000` against a
private redis-server (free loopback port, never 6379), submits --worker-urls URLs and samples
the worker's RSS every second. Writes bench/results/latency.md and latency.json. No traffic
leaves 127.0.0.0/8.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from importlib.metadata import version
from pathlib import Path
from statistics import median
from typing import Any

import psutil

from bench.contenders import ParseError, crawler_command, ours, parse_cli, parse_raw, raw
from bench.hostile import thin
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
from bench.site import HOST

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
NODE_SERVER = REPO / "bench" / "latency_server.js"
ROWS = ("raw-aiohttp", "ours", "ours-default")
GOAL = 0.95  # ours / raw pages/s at the same C, up to C = 1,000 (the issue)
WORKER_RSS_GOAL = 200.0  # MiB, peak RSS of one `crawler worker --concurrency 1000`
WORKER_GROWTH_GOAL = 1.10  # RSS at the end / RSS at 10 % of the job
INFLIGHT_POLL = 0.05  # s between /__stats reads during a row's run
START_TIMEOUT = 10.0  # s for the server to print its port
READY_TIMEOUT = 60.0  # s for the worker to answer a Celery ping
WORKER_NAME = "lat@bench"
MiB = 1024 * 1024


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def csv_ints(s: str) -> list[int]:
    return sorted({int(x) for x in s.split(",") if x})


# --- the server ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Server:
    base: str
    pid: int
    name: str

    def stats(self, reset: bool = False) -> dict[str, int]:
        url = f"{self.base}/__stats" + ("?reset" if reset else "")
        with urllib.request.urlopen(url, timeout=5) as resp:  # 127.0.0.1 only
            return dict(json.loads(resp.read()))

    def cpu(self) -> float:
        return tree_cpu(self.pid)


def node_binary() -> str | None:
    return shutil.which("node") or ("/usr/bin/node" if os.access("/usr/bin/node", os.X_OK)
                                    else None)


@contextmanager
def latency_server(delay_ms: int, kind: str) -> Iterator[Server]:
    """Node's server when Node is installed (or asked for), else the aiohttp fallback."""
    node = node_binary() if kind == "node" else None
    if node is not None:
        cmd = [node, str(NODE_SERVER), "--host", HOST, "--port", "0", "--delay", str(delay_ms)]
        ver = subprocess.run([node, "--version"], capture_output=True, text=True).stdout.strip()
        name = f"Node.js {ver} http (bench/latency_server.js)"
    else:
        cmd = [sys.executable, "-m", "bench.latency", "serve", "--delay", str(delay_ms)]
        name = "aiohttp fallback (python -m bench.latency serve)"
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        timer = threading.Timer(START_TIMEOUT, proc.kill)
        timer.start()
        line = proc.stdout.readline()  # printed once it listens
        timer.cancel()
        if not line:
            raise RuntimeError(f"{name} exited with {proc.wait()} before listening")
        port = int(json.loads(line)["port"])
        yield Server(f"http://{HOST}:{port}", proc.pid, name)
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def serve_fallback(delay_ms: int) -> None:
    """The Python fallback (no Node): same page, same /__stats; likely the bottleneck at high
    rates, which its CPU per request in the report will show."""
    import asyncio

    from aiohttp import web

    from crawler import loops

    body = (b"<!doctype html><html><head><meta charset=\"utf-8\"><title>Latency page</title>"
            b"</head><body><h1>Latency page</h1>" + b"<p>" + b"latency socket " * 170
            + b"</p></body></html>\n")
    stats = {"requests": 0, "pages": 0, "other": 0, "inflight": 0, "peak_inflight": 0,
             "connections": 0, "open_connections": 0, "peak_connections": 0,
             "body_bytes": len(body)}

    async def handle(request: web.Request) -> web.Response:
        if request.path == "/__stats":
            out = web.json_response(dict(stats))
            if "reset" in request.query_string:
                stats["peak_inflight"] = stats["inflight"]
            return out
        stats["requests"] += 1
        if request.method != "GET" or request.path == "/robots.txt":
            stats["other"] += 1
            return web.Response(status=404, text="not found\n")
        stats["pages"] += 1
        stats["inflight"] += 1
        stats["peak_inflight"] = max(stats["peak_inflight"], stats["inflight"])
        try:
            await asyncio.sleep(delay_ms / 1000)
        finally:
            stats["inflight"] -= 1
        return web.Response(body=body, content_type="text/html", charset="utf-8")

    async def main() -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        runner = web.AppRunner(app, access_log=None, keepalive_timeout=120)
        await runner.setup()
        site = web.TCPSite(runner, HOST, 0, backlog=4096)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        print(json.dumps({"port": port, "pid": os.getpid()}), flush=True)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await runner.cleanup()

    loops.run(main())


# --- the rows ---------------------------------------------------------------------------------


@dataclass
class Run:
    """One row at one C, one repetition."""

    row: str
    conc: int
    rep: int
    urls: int
    pages: int = 0
    ok: int = 0
    elapsed: float = 0.0  # s, the child's own crawl timer
    wall: float = 0.0  # s, spawn to exit
    cpu: float = 0.0  # s, user + system of the child (wait4)
    maxrss_kib: int = 0
    server_cpu: float = 0.0  # s the server used during the run
    server_pages: int = 0  # delayed page requests the server answered during the run
    peak_inflight: int = 0  # as the server saw it
    mid_inflight: float = 0.0  # median in flight, server side, from 10 % to 90 % of the run
    connections: int = 0  # TCP connections opened to the server during the run
    error: str | None = None

    @property
    def rate(self) -> float:
        return self.pages / self.elapsed if self.elapsed > 0 else 0.0


def row_command(row: str, urlfile: Path, conc: int) -> list[str]:
    if row == "raw-aiohttp":
        return raw("bench.raw_aiohttp")(urlfile, conc)
    return ours("async")(urlfile, conc)


def row_env(row: str, conc: int, redis: Redis | None = None) -> dict[str, str]:
    """Our environment minus CRAWLER_*; the `ours` row lets one host use every slot."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRAWLER_")}
    if row == "ours":
        env["CRAWLER_LIMIT_PER_HOST"] = str(conc)
    if redis is not None:
        env["CRAWLER_REDIS_URL"] = redis.url
    return env


class InflightSampler(threading.Thread):
    """Reads the server's in-flight count every INFLIGHT_POLL s while a run goes on."""

    def __init__(self, server: Server, pages0: int) -> None:
        super().__init__(name="inflight-sampler", daemon=True)
        self.server, self.pages0 = server, pages0
        self.samples: list[tuple[int, int]] = []  # (pages answered so far, in flight)
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(INFLIGHT_POLL):
            try:
                s = self.server.stats()
            except OSError:
                continue
            self.samples.append((s["pages"] - self.pages0, s["inflight"]))

    def stop(self) -> None:
        self._halt.set()
        self.join()

    def mid_median(self, total: int) -> float:
        """Median in flight while 10-90 % of the URLs were answered (ramp-up and tail out)."""
        mid = [f for done, f in self.samples if 0.1 * total <= done <= 0.9 * total]
        return float(median(mid)) if mid else 0.0


def measure(row: str, conc: int, rep: int, urlfile: Path, urls: int, ctx: dict[str, Any]
            ) -> Run:
    srv: Server = ctx["server"]
    r = Run(row, conc, rep, urls)
    s0 = srv.stats(reset=True)
    cpu0 = srv.cpu()
    sampler = InflightSampler(srv, s0["pages"])
    sampler.start()
    try:
        fin = run_measured(row_command(row, urlfile, conc), env=row_env(row, conc), cwd=REPO,
                           tmp=ctx["tmp"], timeout=ctx["timeout"])
    finally:
        sampler.stop()
    r.server_cpu = srv.cpu() - cpu0
    s1 = srv.stats()
    r.server_pages, r.peak_inflight = s1["pages"] - s0["pages"], s1["peak_inflight"]
    r.connections = s1["connections"] - s0["connections"]
    r.mid_inflight = sampler.mid_median(urls)
    r.wall, r.cpu, r.maxrss_kib = fin.wall, fin.cpu, fin.maxrss_kib
    if fin.returncode != 0:
        tail = " | ".join(fin.stderr.strip().splitlines()[-3:])[-400:]
        r.error = f"{'timed out' if fin.timed_out else f'exit {fin.returncode}'}: {tail}"
        return r
    try:
        p = (parse_raw if row == "raw-aiohttp" else parse_cli)(fin.stdout, fin.stderr)
    except ParseError as exc:
        r.error = str(exc)
        return r
    r.pages, r.ok, r.elapsed = p.pages, p.ok, p.elapsed
    if r.ok != urls:
        r.error = f"only {r.ok}/{urls} ok"
    return r


def show(r: Run) -> str:
    head = f"{r.row:<13} C={r.conc:<5} rep {r.rep}:"
    if r.error:
        return f"{head} FAILED {r.error}"
    return (f"{head} {r.rate:8,.0f} pages/s, CPU {1000 * r.cpu / r.pages:.3f} ms/page, RSS "
            f"{r.maxrss_kib / 1024:.0f} MiB, in flight peak {r.peak_inflight} mid "
            f"{r.mid_inflight:.0f}, {r.connections} conns, server "
            f"{1000 * r.server_cpu / max(r.server_pages, 1):.3f} ms/req")


def write_urls(path: Path, base: str, prefix: str, n: int) -> None:
    path.write_text("".join(f"{base}/{prefix}/{i}\n" for i in range(n)))


def run_rows(args: argparse.Namespace, srv: Server, tmp: Path) -> list[Run]:
    """Repetition-major, then C, then row: drift on the machine hits every row alike."""
    ctx = {"server": srv, "tmp": tmp, "timeout": args.timeout}
    files: dict[int, tuple[Path, int]] = {}
    for c in args.concurrency:
        n = c * args.rounds
        files[c] = (tmp / f"urls-{c}.txt", n)
        write_urls(files[c][0], srv.base, f"p{c}", n)
    warm = tmp / "warm.txt"
    write_urls(warm, srv.base, "warm", 200)
    w = measure("raw-aiohttp", 50, 0, warm, 200, ctx)  # page cache, server JIT; unmeasured
    log(f"warm-up: {show(w)}")
    subprocess.run([*crawler_command(), "--version"], cwd=REPO, capture_output=True)
    runs: list[Run] = []
    broken: set[tuple[str, int]] = set()
    for rep in range(1, args.repeat + 1):
        for c in args.concurrency:
            for row in args.rows:
                if (row, c) in broken:
                    continue
                r = measure(row, c, rep, *files[c], ctx)
                log(show(r))
                runs.append(r)
                if r.error:
                    broken.add((row, c))
    return runs


# --- summaries --------------------------------------------------------------------------------


def med(values: list[float]) -> float | None:
    return float(median(values)) if values else None


def summarise(runs: list[Run], args: argparse.Namespace) -> dict[str, Any]:
    delay_s = args.delay / 1000
    good = [r for r in runs if not r.error]
    table: list[dict[str, Any]] = []
    for row in args.rows:
        for c in args.concurrency:
            rs = [r for r in good if r.row == row and r.conc == c]
            failed = next((r.error for r in runs if r.row == row and r.conc == c and r.error),
                          None)
            if not rs:
                table.append({"row": row, "conc": c, "runs": 0, "error": failed})
                continue
            rate = med([r.rate for r in rs]) or 0.0
            table.append({
                "row": row, "conc": c, "runs": len(rs), "error": failed,
                "pages": rs[0].pages,
                "pages_per_s": round(rate, 1),
                "ideal_pages_per_s": round(c / delay_s, 1),
                "of_ideal": round(rate * delay_s / c, 3),
                "pages_per_s_wall": round(med([r.pages / r.wall for r in rs]) or 0.0, 1),
                "cpu_ms_per_page": round(med([1000 * r.cpu / r.pages for r in rs]) or 0.0, 4),
                "peak_rss_mib": round(med([r.maxrss_kib / 1024 for r in rs]) or 0.0, 1),
                "peak_inflight": int(med([float(r.peak_inflight) for r in rs]) or 0),
                "mid_inflight": round(med([r.mid_inflight for r in rs]) or 0.0, 1),
                "connections": int(med([float(r.connections) for r in rs]) or 0),
                "server_cpu_ms_per_req": round(med(
                    [1000 * r.server_cpu / r.server_pages for r in rs if r.server_pages]) or 0,
                    4),
            })
    return {"rows": table, "ratios": ratios(good, table, args), "memory": memory(table, args)}


def cell(table: list[dict[str, Any]], row: str, c: int) -> dict[str, Any] | None:
    return next((t for t in table if t["row"] == row and t["conc"] == c and t["runs"]), None)


def ratios(good: list[Run], table: list[dict[str, Any]], args: argparse.Namespace
           ) -> list[dict[str, Any]]:
    """Per C and our row: ours / raw of the medians, and the median of per-repetition ratios."""
    out = []
    for row in (r for r in args.rows if r != "raw-aiohttp"):
        for c in args.concurrency:
            a, b = cell(table, row, c), cell(table, "raw-aiohttp", c)
            if a is None or b is None:
                continue
            raw_by_rep = {r.rep: r.rate for r in good if r.row == "raw-aiohttp" and r.conc == c}
            paired = [r.rate / raw_by_rep[r.rep] for r in good
                      if r.row == row and r.conc == c and raw_by_rep.get(r.rep)]
            ratio = a["pages_per_s"] / b["pages_per_s"]
            out.append({"row": row, "conc": c, "ratio": round(ratio, 3),
                        "paired": round(med(paired) or 0.0, 3), "goal": GOAL,
                        "met": ratio >= GOAL})
    return out


def memory(table: list[dict[str, Any]], args: argparse.Namespace) -> list[dict[str, Any]]:
    """(peak RSS at C - peak RSS at the smallest C) / (C - smallest C), per row and C."""
    lo = args.concurrency[0]
    out = []
    for row in args.rows:
        base = cell(table, row, lo)
        for c in args.concurrency[1:]:
            t = cell(table, row, c)
            if base is None or t is None:
                continue
            per = (t["peak_rss_mib"] - base["peak_rss_mib"]) * 1024 / (c - lo)
            out.append({"row": row, "conc": c, "from_conc": lo, "rss_mib": t["peak_rss_mib"],
                        "base_rss_mib": base["peak_rss_mib"], "kib_per_inflight": round(per, 1)})
    return out


# --- the worker check -------------------------------------------------------------------------


@dataclass
class WorkerResult:
    urls: int
    concurrency: int
    job: str = "latency-worker"
    ready_s: float = 0.0
    submit_s: float = 0.0
    elapsed_s: float = 0.0  # the job's finished - started
    pages_per_s: float = 0.0
    done: int = 0
    ok: int = 0
    idle_rss_mib: float = 0.0  # ready, before the job
    peak_rss_mib: float = 0.0  # highest 1-s sample
    maxrss_mib: float = 0.0  # ru_maxrss from wait4 (includes start-up and shutdown)
    rss_10_mib: float = 0.0
    rss_50_mib: float = 0.0
    end_rss_mib: float = 0.0
    growth: float = 0.0  # end / at 10 %
    cpu_ms_per_page: float = 0.0
    server_cpu_ms_per_req: float = 0.0
    peak_inflight: int = 0
    mid_inflight: float = 0.0
    redis_rss_mib: float = 0.0
    samples: list[dict[str, Any]] = field(default_factory=list)
    complaints: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def passed(self) -> bool:
        return (self.error is None and self.peak_rss_mib < WORKER_RSS_GOAL
                and self.growth <= WORKER_GROWTH_GOAL)


def tree_rss(pid: int) -> float:
    """RSS of pid and its descendants, MiB (Celery's threads pool has none, but be sure)."""
    try:
        p = psutil.Process(pid)
        procs = [p, *p.children(recursive=True)]
    except psutil.Error:
        return 0.0
    total = 0
    for q in procs:
        try:
            total += q.memory_info().rss
        except psutil.Error:
            continue
    return total / MiB


def tree_cpu_psutil(pid: int) -> float:
    try:
        t = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0
    return float(t.user + t.system + t.children_user + t.children_system)


def wait_ready(redis: Redis, proc: subprocess.Popen[bytes]) -> float:
    from crawler.broker import producer_app

    app = producer_app(redis.url)
    start = time.monotonic()
    while time.monotonic() - start < READY_TIMEOUT:
        if proc.poll() is not None:
            raise RuntimeError(f"the worker exited with {proc.returncode} before it was ready")
        if any(WORKER_NAME in reply for reply in app.control.ping(timeout=1) or []):
            return time.monotonic() - start
    raise RuntimeError(f"the worker did not answer a ping in {READY_TIMEOUT} s")


def stop_worker(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> int:
    """SIGTERM (warm shutdown), reap with wait4 for ru_maxrss (KiB); SIGKILL if it hangs."""
    proc.send_signal(signal.SIGTERM)
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    try:
        _, status, ru = os.wait4(proc.pid, 0)
    finally:
        timer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    return int(ru.ru_maxrss)


def at_share(samples: list[dict[str, Any]], total: int, share: float) -> dict[str, Any]:
    return next((s for s in samples if s["done"] >= share * total), samples[-1])


def worker_check(args: argparse.Namespace, srv: Server, tmp: Path) -> WorkerResult:
    """One worker, one job of --worker-urls URLs on the latency server; RSS every second."""
    from crawler.api import Crawler
    from crawler.jobs import TERMINAL

    res = WorkerResult(args.worker_urls, args.worker_concurrency)
    urlfile = tmp / "worker-urls.txt"
    write_urls(urlfile, srv.base, "w", args.worker_urls)
    with redis_server(tmp) as redis:
        if redis is None:
            res.error = "redis-server not found"
            return res
        env = row_env("ours-default", 0, redis)
        logf = tmp / "worker.log"
        with logf.open("wb") as out:
            proc = subprocess.Popen(
                [*crawler_command(), "worker", "--hostname", WORKER_NAME, "--concurrency",
                 str(args.worker_concurrency), "--loglevel", "WARNING"],
                env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL)
        maxrss = 0
        try:
            res.ready_s = round(wait_ready(redis, proc), 2)
            time.sleep(1.0)  # settled after the ping
            res.idle_rss_mib = round(tree_rss(proc.pid), 1)
            run_worker_job(args, srv, redis, proc, env, urlfile, res, Crawler, TERMINAL)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            res.error = str(exc)
        finally:
            if proc.poll() is None:
                maxrss = stop_worker(proc)
            res.maxrss_mib = round(maxrss / 1024, 1)
        text = logf.read_text(errors="replace") if logf.exists() else ""
        res.complaints = [ln.strip()[:300] for ln in text.splitlines()
                          if "ERROR" in ln or "CRITICAL" in ln or "Traceback" in ln][:5]
    return res


def run_worker_job(args: argparse.Namespace, srv: Server, redis: Redis,
                   proc: subprocess.Popen[bytes], env: dict[str, str], urlfile: Path,
                   res: WorkerResult, crawler_cls: Any, terminal: Any) -> None:
    s0, cpu0, wcpu0 = srv.stats(reset=True), srv.cpu(), tree_cpu_psutil(proc.pid)
    t0 = time.monotonic()
    sub = subprocess.Popen(
        [*crawler_command(), "submit", str(urlfile), "--allow-private-networks", "--retries",
         "0", "--mode", "async", "--job-id", res.job],
        env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL)
    sampler = InflightSampler(srv, s0["pages"])
    sampler.start()
    try:
        with crawler_cls(redis_url=redis.url, broker_url=redis.url) as c:
            st = poll_worker_job(args, c, srv, proc, sub, res, t0, terminal)
    finally:
        sampler.stop()
        if sub.poll() is None:
            sub.kill()
            sub.wait()
    res.server_cpu_ms_per_req = round(
        1000 * (srv.cpu() - cpu0) / max(srv.stats()["pages"] - s0["pages"], 1), 4)
    res.peak_inflight = srv.stats()["peak_inflight"]
    res.mid_inflight = sampler.mid_median(res.urls)
    res.done, res.ok = st.done, st.ok
    if st.started and st.finished:
        res.elapsed_s = round((st.finished - st.started) / 1000, 2)
        res.pages_per_s = round(st.done / res.elapsed_s, 1) if res.elapsed_s else 0.0
    res.cpu_ms_per_page = round(1000 * (tree_cpu_psutil(proc.pid) - wcpu0) / max(st.done, 1), 4)
    with suppress(psutil.Error):
        res.redis_rss_mib = round(psutil.Process(redis.pid).memory_info().rss / MiB, 1)
    rss = [s["rss_mib"] for s in res.samples]
    res.peak_rss_mib = max(rss)
    res.rss_10_mib = at_share(res.samples, res.urls, 0.1)["rss_mib"]
    res.rss_50_mib = at_share(res.samples, res.urls, 0.5)["rss_mib"]
    res.end_rss_mib = rss[-1]
    res.growth = round(res.end_rss_mib / res.rss_10_mib, 3) if res.rss_10_mib else 0.0
    if st.state != "finished" or st.ok != res.urls:
        res.error = f"job {st.state}: {st.ok}/{res.urls} ok, errors {st.errors}"


def poll_worker_job(args: argparse.Namespace, c: Any, srv: Server,
                    proc: subprocess.Popen[bytes], sub: subprocess.Popen[bytes],
                    res: WorkerResult, t0: float, terminal: Any) -> Any:
    """Every second: the worker's RSS, the job's done count, the server's in-flight count;
    returns the job's final status."""
    while True:
        time.sleep(1.0)
        if sub.returncode is None and sub.poll() is not None:
            res.submit_s = round(time.monotonic() - t0, 2)
            if sub.returncode != 0:
                err = sub.stderr.read().decode(errors="replace") if sub.stderr else ""
                raise RuntimeError(f"submit failed (exit {sub.returncode}): {err[-300:]}")
        try:
            st = c.status(res.job)
            done = st.done
        except Exception:  # not created yet: submit is still starting
            st, done = None, 0
        res.samples.append({"t": round(time.monotonic() - t0, 1), "done": done,
                            "rss_mib": round(tree_rss(proc.pid), 1),
                            "inflight": srv.stats()["inflight"]})
        if st is not None and st.state in terminal:
            return st
        if proc.poll() is not None:
            raise RuntimeError(f"the worker exited with {proc.returncode} mid-job")
        if time.monotonic() - t0 > args.timeout:
            raise RuntimeError(f"job still {st.state if st else '?'} after "
                               f"{args.timeout:.0f} s: {done}/{args.worker_urls} done")


# --- the run ----------------------------------------------------------------------------------


def machine_info(args: argparse.Namespace, srv: Server) -> dict[str, str]:
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{os.cpu_count()} CPUs ({cpu_model()}), {platform.platform()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}, "
                  f"aiohttp {version('aiohttp')}, celery {version('celery')}",
        "git": f"{git_revision(REPO)} (working tree as it was)",
        "server": f"{srv.name} on {srv.base}: every GET after {args.delay} ms, a "
                  f"{srv.stats()['body_bytes']:,}-byte text/html page, keep-alive; "
                  "/robots.txt 404 at once",
        "job": f"C x {args.rounds} distinct URLs per C on the one host, --retries 0; "
               f"{args.repeat} repetition(s) interleaved, medians",
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The whole benchmark; returns the result that `markdown` renders (and JSON keeps)."""
    started = time.monotonic()
    load0 = os.getloadavg()
    machine0, own0 = machine_busy(), own_cpu()
    tmp = Path(tempfile.mkdtemp(prefix="crawler-latency-"))
    result: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}, "info": {}}
    try:
        with latency_server(args.delay, args.server) as srv:
            log(f"server: {srv.name} at {srv.base}, delay {args.delay} ms")
            result["info"] = machine_info(args, srv)
            runs = run_rows(args, srv, tmp) if args.rows else []
            result |= summarise(runs, args) if runs else {"rows": [], "ratios": [],
                                                          "memory": []}
            result["runs"] = [asdict(r) | {"rate": round(r.rate, 1)} for r in runs]
            if args.worker:
                w = worker_check(args, srv, tmp)
                log(f"worker: {w.pages_per_s:,.0f} pages/s, peak RSS {w.peak_rss_mib} MiB, "
                    f"growth {w.growth}, in flight mid {w.mid_inflight}"
                    + (f"; FAILED {w.error}" if w.error else ""))
                result["worker"] = asdict(w) | {"passed": w.passed}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    # Every child is reaped by now, so own_cpu() has them all: the rest is other work.
    wall = time.monotonic() - started
    other = max((machine_busy() - machine0) - (own_cpu() - own0), 0.0)
    share = other / (wall * (os.cpu_count() or 1))
    result["info"]["other load"] = (
        f"processes other than the benchmark's (and kernel softirq) used {other:.0f} CPU s "
        f"during the run, {share:.0%} of the machine" + ("; NUMBERS SUSPECT" if share > 0.1
                                                         else ""))
    result["info"]["load average"] = (f"{load0[0]:.2f} before, {os.getloadavg()[0]:.2f} after "
                                      "(1 min; other jobs may share the machine)")
    result["info"]["benchmark wall"] = f"{time.monotonic() - started:.0f} s"
    return result


# --- the report -------------------------------------------------------------------------------


def fmt(v: float | None, spec: str = ",.0f") -> str:
    return "-" if v is None else format(v, spec)


def markdown(result: dict[str, Any]) -> str:
    """The report as a markdown section (a suite orchestrator may embed it)."""
    a, info = result["args"], result["info"]
    table, rats = result.get("rows", []), result.get("ratios", [])
    concs = sorted({t["conc"] for t in table})
    rows = [r for r in ROWS if any(t["row"] == r for t in table)]
    lines = ["# Latency-bound crawl: throughput = concurrency / delay", ""]
    lines += [f"- {k}: {v}" for k, v in info.items()]
    lines += [
        "- ours: `crawler crawl URLFILE -o /dev/null --mode async --concurrency C "
        "--allow-private-networks --no-progress --retries 0` with `CRAWLER_LIMIT_PER_HOST=C` "
        "(no CLI flag sets it); ours-default: the same without it (a host alone may use every "
        "slot); raw-aiohttp: `python -m bench.raw_aiohttp URLFILE --concurrency C`",
        "",
    ]
    if table:
        rat = {(r["row"], r["conc"]): r for r in rats}
        head = "| C | ideal pages/s | raw-aiohttp | " + " | ".join(
            f"{r} | {r}/raw (paired)" for r in rows if r != "raw-aiohttp") + " |"
        lines += [f"## pages/s (goal: ours >= {GOAL} x raw at the same C)", "", head,
                  "|--:|--:|--:|" + "--:|--:|" * (len(rows) - 1)]
        for c in concs:
            base = cell(table, "raw-aiohttp", c)
            cells = [f"{c:,}", f"{int(1000 * c / int(a['delay'])):,}",
                     fmt(base["pages_per_s"]) if base else "-"]
            for r in rows:
                if r == "raw-aiohttp":
                    continue
                t, q = cell(table, r, c), rat.get((r, c))
                cells.append(fmt(t["pages_per_s"]) if t else "-")
                cells.append(f"{'**' if q and not q['met'] else ''}{q['ratio']:.2f}"
                             f"{'**' if q and not q['met'] else ''} ({q['paired']:.2f})"
                             if q else "-")
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", "## Every row", "",
                  "| row | C | pages/s | of ideal | pages/s incl. start-up | CPU ms/page | "
                  "peak RSS MiB | in flight: peak / mid-run median | connections | "
                  "server CPU ms/req |",
                  "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
        for t in table:
            if not t["runs"]:
                lines.append(f"| {t['row']} | {t['conc']:,} | FAILED: {t['error']} "
                             "| | | | | | | |")
                continue
            lines.append(
                f"| {t['row']} | {t['conc']:,} | {t['pages_per_s']:,.0f} | "
                f"{t['of_ideal']:.0%} | {t['pages_per_s_wall']:,.0f} | "
                f"{t['cpu_ms_per_page']:.3f} | {t['peak_rss_mib']:.0f} | "
                f"{t['peak_inflight']:,} / {t['mid_inflight']:,.0f} | {t['connections']:,} | "
                f"{t['server_cpu_ms_per_req']:.3f} |")
        failed = [t for t in table if t["runs"] and t["error"]]
        lines += [f"- {t['row']} C={t['conc']}: a repetition failed: {t['error']}"
                  for t in failed]
        mem = result.get("memory", [])
        if mem:
            lo = mem[0]["from_conc"]
            lines += ["", f"## Memory per in-flight request: (peak RSS at C - at C={lo}) / "
                      f"(C - {lo})", "", "| row | C | peak RSS MiB | KiB per in-flight |",
                      "|---|--:|--:|--:|"]
            lines += [f"| {m['row']} | {m['conc']:,} | {m['rss_mib']:.0f} | "
                      f"{m['kib_per_inflight']:.1f} |" for m in mem]
    w = result.get("worker")
    if w:
        lines += ["", f"## One `crawler worker --concurrency {w['concurrency']:,}`, "
                  f"{w['urls']:,} URLs", ""]
        if w["error"]:
            lines += [f"**FAILED**: {w['error']}", ""]
        lines += [
            "| measure | value |", "|---|--:|",
            f"| pages/s (job finished - started) | {w['pages_per_s']:,.0f} "
            f"({w['done']:,} done, {w['ok']:,} ok in {w['elapsed_s']} s) |",
            f"| of ideal ({int(1000 * w['concurrency'] / int(a['delay'])):,}/s) | "
            f"{w['pages_per_s'] * int(a['delay']) / 1000 / w['concurrency']:.0%} |",
            f"| requests in flight: peak / mid-job median (server) | {w['peak_inflight']:,} / "
            f"{w['mid_inflight']:,.0f} |",
            f"| RSS idle (ready, before the job) | {w['idle_rss_mib']} MiB |",
            f"| **peak RSS** (1-s samples; goal < {WORKER_RSS_GOAL:.0f} MB) | "
            f"**{w['peak_rss_mib']} MiB** |",
            f"| ru_maxrss (wait4, start-up and shutdown included) | {w['maxrss_mib']} MiB |",
            f"| RSS at 10 % / 50 % / end | {w['rss_10_mib']} / {w['rss_50_mib']} / "
            f"{w['end_rss_mib']} MiB |",
            f"| **growth** end / 10 % (goal <= {WORKER_GROWTH_GOAL:.2f}) | "
            f"**{w['growth']:.3f}** |",
            f"| worker CPU ms/page | {w['cpu_ms_per_page']:.3f} |",
            f"| server CPU ms/request | {w['server_cpu_ms_per_req']:.3f} |",
            f"| submit process wall | {w['submit_s']} s |",
            f"| redis-server RSS at the end | {w['redis_rss_mib']} MiB |",
            "", "Verdict: " + ("PASS" if w["passed"] else "FAIL"),
        ]
        if w["complaints"]:
            lines += ["", "Worker log errors:", ""] + [f"- `{c}`" for c in w["complaints"]]
        lines += ["", "| s | URLs done | RSS MiB | in flight |", "|--:|--:|--:|--:|"]
        lines += [f"| {s['t']} | {s['done']:,} | {s['rss_mib']} | {s['inflight']:,} |"
                  for s in thin(w["samples"], w["urls"])]
    lines += ["", "Numbers from a 2-core machine where client and server share the cores; "
              "compare rows of the same run."]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.latency",
                                description=__doc__.splitlines()[0])
    p.add_argument("command", nargs="?", choices=["run", "serve"], default="run",
                   help="serve: the Python fallback server (started by run without Node)")
    p.add_argument("--concurrency", type=csv_ints, default=[10, 100, 250, 500, 1000])
    p.add_argument("--delay", type=int, default=100, help="ms before every page is answered")
    p.add_argument("--rounds", type=int, default=40, help="URLs per C = C x rounds")
    p.add_argument("--repeat", type=int, default=3, help="interleaved repetitions (median)")
    p.add_argument("--rows", type=lambda s: [r for r in s.split(",") if r], default=list(ROWS),
                   help=f"comma-separated subset of {', '.join(ROWS)}")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--worker-check", action="store_true", help="only the worker memory check")
    g.add_argument("--no-worker", action="store_true", help="skip the worker memory check")
    p.add_argument("--worker-urls", type=int, default=100_000)
    p.add_argument("--worker-concurrency", type=int, default=1000)
    p.add_argument("--server", choices=["node", "python"], default="node",
                   help="python: the aiohttp fallback even when Node is installed")
    p.add_argument("--timeout", type=float, default=300.0, help="s per child run or job")
    p.add_argument("--out", type=Path, default=RESULTS, help="where latency.md/json go")
    args = p.parse_args(argv)
    if bad := set(args.rows) - set(ROWS):
        p.error(f"unknown row(s): {', '.join(sorted(bad))}")
    if args.rows and "raw-aiohttp" not in args.rows:
        args.rows.insert(0, "raw-aiohttp")  # every ratio needs it
    args.rows = [r for r in ROWS if r in args.rows]
    if args.worker_check:
        args.rows = []
    args.worker = not args.no_worker
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.command == "serve":
        serve_fallback(args.delay)
        return
    result = run(args)
    text = markdown(result)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latency.md").write_text(text)
    (args.out / "latency.json").write_text(json.dumps(result, indent=1) + "\n")
    print(text)


if __name__ == "__main__":
    main()
