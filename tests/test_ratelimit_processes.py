"""The limiter across real OS processes, counted where it matters: at a local HTTP server.

Given a real redis-server and a loopback server that timestamps every arrival,
when 4 worker processes each loop acquire -> sleep(wait) -> GET,
then no window W holds more than R*W + B + 1 arrivals, same-host arrivals are never closer than
the host interval (minus a few ms of wake-up noise), and a host that answered 429 with
Retry-After sees no request once the in-flight ones have landed.
"""

from __future__ import annotations

import http.server
import itertools
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
PROCESSES = 4

# One worker process: its own Redis client and limiter, a proxy-free opener (loopback only).
WORKER = """
import json, sys, time, urllib.error, urllib.request
import redis
from crawler.ratelimit import LimiterConfig, RateLimiter

redis_url, base_url, config, share, hosts, name = sys.argv[1:7]
limiter = RateLimiter(redis.Redis.from_url(redis_url), LimiterConfig(**json.loads(config)))
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
hosts = hosts.split(",")
opener.open(f"{base_url}/warmup/{name}", timeout=10).read()  # first-call imports: not paced
done = i = 0
while done < int(share):
    host = hosts[i % len(hosts)]
    grant = limiter.acquire(host)
    time.sleep(grant.wait)
    if not grant.granted:
        i += 1  # a deferred host is set aside: try the next one after the wait
        continue
    try:
        opener.open(f"{base_url}/{host}/{name}/{done}", timeout=10).read()
    except urllib.error.HTTPError as exc:
        if exc.code == 429:
            limiter.penalize(host, float(exc.headers.get("Retry-After", "nan")))
    done += 1
    i += 1
"""


@dataclass
class Arrivals:
    """What the server saw: (host, monotonic time) per request, and when it answered 429."""

    throttle_host: str = ""
    throttle_at: int = 0  # answer 429 to this host's n-th request (1-based); 0 = never
    retry_after: float = 1.0
    seen: list[tuple[str, float]] = field(default_factory=list)
    throttled_at: float | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, host: str, now: float) -> bool:
        """Note one arrival; True when this one must be answered with 429."""
        with self.lock:
            self.seen.append((host, now))
            count = sum(1 for h, _ in self.seen if h == host)
            throttle = host == self.throttle_host and count == self.throttle_at
            if throttle:
                self.throttled_at = now
            return throttle

    def times(self, host: str | None = None) -> list[float]:
        return sorted(t for h, t in self.seen if host is None or h == host)


class StampingServer(http.server.ThreadingHTTPServer):
    """Stamps each connection when accepted, before a handler thread starts and parses it."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.accepted_at: dict[int, float] = {}

    def process_request(self, request: Any, client_address: Any) -> None:
        self.accepted_at[id(request)] = time.monotonic()
        super().process_request(request, client_address)


@pytest.fixture
def server() -> Iterator[tuple[str, Arrivals]]:
    arrivals = Arrivals()

    class Handler(http.server.BaseHTTPRequestHandler):
        server: StampingServer

        def do_GET(self) -> None:
            host = self.path.split("/")[1]
            arrived = self.server.accepted_at.pop(id(self.request))
            if host != "warmup" and arrivals.record(host, arrived):
                self.send_response(429)
                self.send_header("Retry-After", str(arrivals.retry_after))
            else:
                self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, format: str, *args: object) -> None:  # keep test output clean
            pass

    httpd = StampingServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", arrivals
    httpd.shutdown()
    httpd.server_close()
    thread.join(10)


def run_workers(redis_url: str, base_url: str, config: dict[str, object], share: int,
                hosts: list[str]) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT),
                                                                     os.environ.get("PYTHONPATH")]))}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, redis_url, base_url, json.dumps(config), str(share),
             ",".join(hosts), f"p{n}"],
            cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True,
        )
        for n in range(PROCESSES)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err


def max_in_window(times: list[float], window: float) -> int:
    """The most arrivals in any half-open window [t, t + window) starting at an arrival."""
    best, j = 0, 0
    for i, start in enumerate(times):
        j = max(j, i)
        while j < len(times) and times[j] < start + window:
            j += 1
        best = max(best, j - i)
    return best


def test_global_rate_holds_across_processes(
    redis_url: str, server: tuple[str, Arrivals]
) -> None:
    base_url, arrivals = server
    rate, burst, share = 20, 0, 15  # 60 requests: about 3 s at 20 QPS

    run_workers(redis_url, base_url, {"qps": rate, "burst": burst}, share,
                [f"h{n}" for n in range(8)])

    times = arrivals.times()
    assert len(times) == PROCESSES * share
    for window in (1.0, 0.5):
        assert max_in_window(times, window) <= rate * window + burst + 1, window


def test_host_interval_and_penalty_hold_across_processes(
    redis_url: str, server: tuple[str, Arrivals]
) -> None:
    base_url, arrivals = server
    arrivals.throttle_host, arrivals.throttle_at, arrivals.retry_after = "a", 4, 1.0
    host_qps, share = 10, 8
    interval = 1 / host_qps

    run_workers(redis_url, base_url, {"per_host_qps": host_qps, "qps": 30}, share, ["a", "b"])

    assert len(arrivals.times()) == PROCESSES * share
    for host in ("a", "b"):
        times = arrivals.times(host)
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert min(gaps) >= interval - 0.005, (host, min(gaps))
    # Grants issued before the penalty landed reach the host within the host horizon (50 ms);
    # after that the host is quiet until Retry-After (1 s) has run out.
    assert arrivals.throttled_at is not None
    quiet_from, quiet_to = arrivals.throttled_at + 0.2, arrivals.throttled_at + 0.95
    assert not [t for t in arrivals.times("a") if quiet_from < t < quiet_to]
