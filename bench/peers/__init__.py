"""Peer contenders: other crawl frameworks fetching the same URL list, for the suite's tables.

Each peer is a script beside this file, run from its own benchmark-only virtualenv under
bench/.venvs/ (`bench.crawl_contenders.venvs`), never from the project's venv. Every peer
fetches every URL of a URL file once (no robots.txt, retries, cookies or throttling), reads
every body and writes one line per page (its URL). `run_peer` checks that output (each URL
exactly once) and raises `PeerError` otherwise, so a number in a table always means the whole
list was fetched.

- `list` peers are one process, measured with `os.wait4` (`bench.procs.run_measured`).
- `distributed` peers are 2 processes sharing one Redis: the harness fills the queue first
  (unmeasured), starts both, lets them go together (a ready/go barrier through Redis keys) and
  measures each with `os.wait4`. They stop by themselves once the queue is empty.

`elapsed` is, for every peer, the first request to the last page done as the children saw
it (epoch timestamps; for 2 processes the earliest first and the latest last), so framework
start-up and shutdown tails (feapder polls for 3 s before it stops, an idle scrapy-redis spider
waits for Scrapy's 5 s heartbeat) are in `wall` but not in the rate.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.crawl_contenders import venvs
from bench.procs import run_measured

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
TIMEOUT = 600.0  # s per run: a hung peer fails its run instead of the suite
READY_TIMEOUT = 120.0  # s for both distributed processes to be built
FILL_CHUNK = 10_000  # URLs per RPUSH


class PeerError(RuntimeError):
    """A peer failed, or fetched other than every URL exactly once."""


@dataclass(frozen=True)
class PeerResult:
    name: str
    pages: int
    ok: int  # 200 responses
    elapsed: float  # s, first request to last page done, as the peer's processes timed it
    wall: float  # s from spawn to exit of every process (start-up and shutdown included)
    cpu_s: float  # user + system CPU of every peer process, children included (wait4)
    peak_rss_mib: float  # max RSS of the process; for 2 processes the sum of both peaks
    processes: int
    versions: str  # "scrapy 2.19.0, twisted ..."
    note: str = ""


@dataclass(frozen=True)
class Peer:
    """What runs, from which venv, and how wide by default."""

    name: str
    venv: str  # key of venvs.REQUIREMENTS
    family: str  # "list" (1 process) or "distributed" (2 processes on one Redis)
    default_concurrency: int  # C per process: the best of a short sweep (bench/README.md)
    script: str
    summary: str

    @property
    def processes(self) -> int:
        return 2 if self.family == "distributed" else 1


PEERS: dict[str, Peer] = {p.name: p for p in (
    Peer("scrapy-list", "scrapy", "list", 8, "scrapy_list.py",
         "Scrapy Spider, start() yields the URL list; CONCURRENT_REQUESTS(_PER_DOMAIN)=C"),
    Peer("crawlee-http", "crawlee-parsel", "list", 50, "crawlee_list.py",
         "crawlee HttpCrawler (impit), memory storage, fixed pool of C"),
    Peer("crawlee-parsel", "crawlee-parsel", "list", 50, "crawlee_list.py",
         "crawlee ParselCrawler (impit, every body parsed), memory storage, fixed pool of C"),
    Peer("feapder-list", "feapder", "list", 16, "feapder_peer.py",
         "feapder AirSpider, C threads, in-memory queue, one keep-alive requests.Session"),
    Peer("scrapy-redis", "scrapy-redis", "distributed", 32, "scrapy_redis_peer.py",
         "2 x scrapy-redis RedisSpider on one Redis list, C each, idle close after 1 s"),
    Peer("feapder-redis", "feapder", "distributed", 32, "feapder_peer.py",
         "2 x feapder Spider on one Redis task zset, C threads each"),
)}


def ensure_venvs(names: Iterable[str], log: Callable[[str], object] = print) -> None:
    """Create or update the venvs the named peers need (pip, from the package index)."""
    for venv in dict.fromkeys(_peer(n).venv for n in names):
        venvs.ensure(venv, log=log)


def run_peer(name: str, urlfile: Path, concurrency: int | None, redis_url: str | None,
             tmp: Path, *, timeout: float = TIMEOUT) -> PeerResult:
    """Run one peer once over urlfile and check it fetched every URL exactly once.

    concurrency None means the peer's default; redis_url is needed by distributed peers only
    (the benchmark's own server: the run uses and then deletes keys of a fresh prefix, nothing
    else). tmp holds the run's output files. Raises PeerError on any failure.
    """
    peer = _peer(name)
    c = concurrency or peer.default_concurrency
    run_dir = Path(tempfile.mkdtemp(prefix=f"{name}-c{c}-", dir=tmp))
    urls = [u for ln in urlfile.read_text().splitlines() if (u := ln.strip())]
    if peer.family == "list":
        return _run_list(peer, urlfile, urls, c, run_dir, timeout)
    if not redis_url:
        raise PeerError(f"{name} is distributed: it needs a redis URL")
    import redis  # the project's redis-py: the harness side only

    try:
        return _run_distributed(peer, urlfile, urls, c, redis_url, run_dir, timeout)
    except redis.RedisError as exc:
        raise PeerError(f"{name}: Redis at {redis_url}: {exc}") from exc


def _peer(name: str) -> Peer:
    try:
        return PEERS[name]
    except KeyError:
        raise PeerError(f"unknown peer {name!r}; known: {', '.join(PEERS)}") from None


_VERSIONS: dict[str, str] = {}


def _versions(venv: str) -> str:
    if venv not in _VERSIONS:
        _VERSIONS[venv] = venvs.versions(venv)
    return _VERSIONS[venv]


def child_env() -> dict[str, str]:
    """Ours minus CRAWLER_* and proxy settings: every request must go straight to loopback."""
    proxies = {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("CRAWLER_") and k.lower() not in proxies}
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env.pop("VIRTUAL_ENV", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _argv(peer: Peer, c: int, *rest: str) -> list[str]:
    return [str(venvs.python(peer.venv)), str(HERE / peer.script), *rest,
            "--concurrency", str(c)]


def _list_command(peer: Peer, urlfile: Path, out: Path, c: int) -> list[str]:
    if peer.name.startswith("crawlee-"):
        kind = peer.name.removeprefix("crawlee-")
        return [*_argv(peer, c, str(urlfile), str(out)), "--crawler", kind]
    if peer.name == "feapder-list":
        return _argv(peer, c, "air", str(urlfile), str(out))
    return _argv(peer, c, str(urlfile), str(out))


def _tail(text: str, lines: int = 4) -> str:
    return " | ".join(text.strip().splitlines()[-lines:])[-600:] or "no stderr"


def _report(stdout: str, what: str, stderr: str) -> dict[str, Any]:
    try:
        return dict(json.loads(stdout.strip().splitlines()[-1]))
    except (IndexError, ValueError):
        raise PeerError(f"{what}: no JSON line on stdout; stderr: {_tail(stderr)}") from None


def _check(name: str, urls: list[str], written: list[str], reported: int) -> None:
    """Every URL once, nothing else; and the peer's own count agrees with its output."""
    dups = [u for u, n in Counter(written).items() if n > 1]
    missing = set(urls) - set(written)
    extra = set(written) - set(urls)
    if dups or missing or extra or len(written) != len(urls):
        raise PeerError(
            f"{name}: wrote {len(written)} lines for {len(urls)} URLs: {len(missing)} missing "
            f"(e.g. {sorted(missing)[:1]}), {len(dups)} duplicated (e.g. {dups[:1]}), "
            f"{len(extra)} not in the list")
    if reported != len(written):
        raise PeerError(f"{name}: says {reported} pages but wrote {len(written)} lines")


def _elapsed(name: str, reports: list[dict[str, Any]]) -> float:
    firsts = [r["first"] for r in reports if r.get("first")]
    lasts = [r["last"] for r in reports if r.get("last")]
    if not firsts or not lasts or max(lasts) <= min(firsts):
        raise PeerError(f"{name}: no first/last page timestamps in {reports}")
    return float(max(lasts) - min(firsts))


def _run_list(peer: Peer, urlfile: Path, urls: list[str], c: int, run_dir: Path,
              timeout: float) -> PeerResult:
    out = run_dir / "pages.txt"
    fin = run_measured(_list_command(peer, urlfile, out, c), env=child_env(), cwd=run_dir,
                       tmp=run_dir, timeout=timeout)
    if fin.returncode != 0 or fin.timed_out:
        status = f"timed out after {timeout:.0f} s" if fin.timed_out else f"exit {fin.returncode}"
        raise PeerError(f"{peer.name} failed ({status}): {_tail(fin.stderr)}")
    rep = _report(fin.stdout, peer.name, fin.stderr)
    written = out.read_text().split() if out.exists() else []
    _check(peer.name, urls, written, int(rep["pages"]))
    note = f"own timer {rep['own_elapsed']:.2f} s" if rep.get("own_elapsed") else ""
    return PeerResult(peer.name, len(written), int(rep["ok"]), _elapsed(peer.name, [rep]),
                      fin.wall, fin.cpu, fin.maxrss_kib / 1024, 1, _versions(peer.venv), note)


# Distributed peers -----------------------------------------------------------------------


def _fill(peer: Peer, client: Any, urlfile: Path, urls: list[str], redis_url: str, key: str,
          run_dir: Path) -> float:
    """Put the URL list into Redis the way the peer reads it; s it took (not measured)."""
    t0 = time.perf_counter()
    if peer.name == "scrapy-redis":
        for i in range(0, len(urls), FILL_CHUNK):
            client.rpush(f"{key}:start_urls",
                         *(json.dumps({"url": u}) for u in urls[i:i + FILL_CHUNK]))
        filled = int(client.llen(f"{key}:start_urls"))
    else:  # feapder: its own master step, so the tasks are in its own serialization
        done = subprocess.run(
            [str(venvs.python(peer.venv)), str(HERE / peer.script), "fill", str(urlfile),
             "--redis-url", redis_url, "--key", key],
            env=child_env(), cwd=run_dir, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise PeerError(f"{peer.name} fill failed (exit {done.returncode}): "
                            f"{_tail(done.stderr)}")
        filled = int(client.zcard(f"{key}:z_requests"))
    if filled != len(urls):
        raise PeerError(f"{peer.name}: queue holds {filled} tasks after filling {len(urls)}")
    return time.perf_counter() - t0


def _worker_command(peer: Peer, out: Path, c: int, redis_url: str, key: str) -> list[str]:
    common = ["--redis-url", redis_url, "--key", key, "--barrier"]
    if peer.name == "scrapy-redis":
        return [*_argv(peer, c, str(out)), *common]
    return [*_argv(peer, c, "worker", str(out)), *common]


def _alive(pid: int) -> bool:
    """Still running? Without reaping it (wait4 must get its rusage later)."""
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None


@dataclass
class _Proc:
    popen: subprocess.Popen[bytes]
    out: Path
    stdout: Path
    stderr: Path
    status: int | None = None
    cpu: float = 0.0
    maxrss_kib: int = 0


def _run_distributed(peer: Peer, urlfile: Path, urls: list[str], c: int, redis_url: str,
                     run_dir: Path, timeout: float) -> PeerResult:
    import redis

    key = f"bench-peers:{peer.name}:{uuid.uuid4().hex[:12]}"
    client = redis.Redis.from_url(redis_url)
    procs: list[_Proc] = []
    try:
        fill_s = _fill(peer, client, urlfile, urls, redis_url, key, run_dir)
        start = time.perf_counter()
        for i in range(peer.processes):
            out, so, se = (run_dir / f"{stem}{i}.txt" for stem in ("pages", "stdout", "stderr"))
            with so.open("wb") as fo, se.open("wb") as fe:
                popen = subprocess.Popen(_worker_command(peer, out, c, redis_url, key),
                                         env=child_env(), cwd=run_dir, stdout=fo, stderr=fe,
                                         stdin=subprocess.DEVNULL)
            procs.append(_Proc(popen, out, so, se))
        _await_ready(peer, client, key, procs)
        client.rpush(f"{key}:go", *["go"] * len(procs))
        timed_out = _reap(procs, timeout)
        wall = time.perf_counter() - start
    finally:
        for p in procs:
            if p.status is None:
                _kill(p)
        for k in client.scan_iter(match=f"{key}*", count=1000):
            client.delete(k)
        client.close()
    return _distributed_result(peer, urls, procs, wall, timed_out, fill_s, timeout)


def _await_ready(peer: Peer, client: Any, key: str, procs: list[_Proc]) -> None:
    ready, deadline = 0, time.monotonic() + READY_TIMEOUT
    while ready < len(procs):
        if time.monotonic() > deadline:
            raise PeerError(f"{peer.name}: {ready} of {len(procs)} processes ready after "
                            f"{READY_TIMEOUT:.0f} s")
        for p in procs:
            if not _alive(p.popen.pid):
                raise PeerError(f"{peer.name}: a process exited before the start: "
                                f"{_tail(p.stderr.read_text(errors='replace'))}")
        ready += client.blpop([f"{key}:ready"], timeout=1) is not None


def _reap(procs: list[_Proc], timeout: float) -> bool:
    """wait4 every process (killing all after timeout s); True if the timer fired."""
    fired = threading.Event()

    def kill_all() -> None:
        fired.set()
        for p in procs:
            if _alive(p.popen.pid):
                os.kill(p.popen.pid, signal.SIGKILL)  # not Popen.kill: its poll() would reap

    timer = threading.Timer(timeout, kill_all)
    timer.start()
    try:
        for p in procs:
            _, status, ru = os.wait4(p.popen.pid, 0)
            p.status = os.waitstatus_to_exitcode(status)
            p.popen.returncode = p.status  # reaped here: Popen must not wait again
            p.cpu, p.maxrss_kib = ru.ru_utime + ru.ru_stime, ru.ru_maxrss
    finally:
        timer.cancel()
    return fired.is_set()


def _kill(p: _Proc) -> None:
    if _alive(p.popen.pid):
        os.kill(p.popen.pid, signal.SIGKILL)
    _, status, _ = os.wait4(p.popen.pid, 0)
    p.status = os.waitstatus_to_exitcode(status)
    p.popen.returncode = p.status


def _distributed_result(peer: Peer, urls: list[str], procs: list[_Proc], wall: float,
                        timed_out: bool, fill_s: float, timeout: float) -> PeerResult:
    reports: list[dict[str, Any]] = []
    for i, p in enumerate(procs):
        stderr = p.stderr.read_text(errors="replace")
        if timed_out or p.status != 0:
            status = f"timed out after {timeout:.0f} s" if timed_out else f"exit {p.status}"
            raise PeerError(f"{peer.name} process {i} failed ({status}): {_tail(stderr)}")
        reports.append(_report(p.stdout.read_text(errors="replace"), f"{peer.name}#{i}",
                               stderr))
    written = [u for p in procs if p.out.exists() for u in p.out.read_text().split()]
    _check(peer.name, urls, written, sum(int(r["pages"]) for r in reports))
    split = "/".join(str(r["pages"]) for r in reports)
    spans = "/".join(f"{r['last'] - r['first']:.2f}" if r.get("first") else "-" for r in reports)
    note = (f"pages per process {split} in {spans} s; queue filled in {fill_s:.2f} s before the "
            f"start (unmeasured); peak RSS = sum of the {len(procs)} processes' peaks")
    return PeerResult(
        peer.name, len(written), sum(int(r["ok"]) for r in reports), _elapsed(peer.name, reports),
        wall, sum(p.cpu for p in procs), sum(p.maxrss_kib for p in procs) / 1024, len(procs),
        _versions(peer.venv), note)
