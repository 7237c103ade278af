"""End-to-end fixtures: a redis-server, three `crawler worker` processes, local HTTP servers.

Everything is started as a user would: real processes on loopback, nothing mocked. The broker
is that Redis unless a `Cluster` is given another (RabbitMQ: test_amqp.py).
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
import redis
from httpserver import HTTPServer, serve_many
from redisserver import RedisServer

from crawler.broker import producer_app

HOSTS = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
WORKERS = 3
WORKER_CONCURRENCY = 50
READY_TIMEOUT = 60.0


TESTS = Path(__file__).parent.parent
# Workers import --extract functions from their own path, as a user's would: the tests' own
# (tests/extract_funcs.py) and the shipped example (examples/page_summary.py).
EXTRACT_PATH = os.pathsep.join([str(TESTS), str(TESTS.parent / "examples")])


def crawler_env(redis_url: str, broker_url: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRAWLER_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (EXTRACT_PATH, env.get("PYTHONPATH")) if p)
    env["CRAWLER_REDIS_URL"] = redis_url
    if broker_url:
        env["CRAWLER_BROKER_URL"] = broker_url
    return env


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll a condition that no event announces (another process's state) until it holds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def urls_for(sites: list[HTTPServer], n: int, tag: str) -> list[str]:
    """n pages spread over the sites, tagged (?t=tag) so a test finds its own arrivals."""
    cycle = itertools.cycle(sites)
    return [next(cycle).url(f"/page/{i}?t={tag}") for i in range(n)]


class Cluster:
    """Worker processes started with `crawler worker`, and a way to talk to them (a set of
    workers, not a Redis Cluster). Their broker is `broker_url`, else the Redis."""

    def __init__(self, redis_url: str, logdir: Path, env: dict[str, str] | None = None,
                 broker_url: str | None = None) -> None:
        self.redis_url = redis_url
        self.broker_url = broker_url or redis_url
        self.logdir = logdir
        self.env = crawler_env(redis_url, broker_url) | (env or {})
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start_worker(self, name: str, concurrency: int = WORKER_CONCURRENCY,
                     extra: Sequence[str] = ()) -> None:
        with open(self.logdir / f"{name}.log", "ab") as log:  # the child keeps its own fd
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", "crawler", "worker", "--hostname", name,
                 "--concurrency", str(concurrency), "--loglevel", "INFO", *extra],
                env=self.env, stdout=log,
                stderr=subprocess.STDOUT,
            )

    def start(self, names: list[str], concurrency: int = WORKER_CONCURRENCY) -> None:
        """Start these workers and return once every one answers."""
        for name in names:
            self.start_worker(name, concurrency)
        self.wait_ready(names)

    def kill(self, name: str) -> None:
        """SIGKILL: no handler runs, nothing is handed back."""
        proc = self.procs[name]
        proc.kill()
        proc.wait(10)

    def wait_ready(self, names: list[str]) -> None:
        """Every named worker answers a Celery control ping (a real round trip)."""
        app = producer_app(self.broker_url)
        pending = set(names)

        def answered() -> bool:
            try:
                replies = app.control.ping(timeout=0.5) or []
            except (redis.ConnectionError, OSError):  # a pooled connection from before a restart
                replies = []
            for reply in replies:
                pending.difference_update(reply)
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise AssertionError(f"worker {name} exited: {self.log(name)[-2000:]}")
            return not pending

        wait_until(answered, READY_TIMEOUT, f"workers {sorted(pending)}")

    def log(self, name: str) -> str:
        return (self.logdir / f"{name}.log").read_text(errors="replace")

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="package")
def e2e_redis() -> Iterator[RedisServer]:
    server = RedisServer()
    yield server
    server.stop()


@pytest.fixture(scope="package")
def cluster(e2e_redis: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(e2e_redis.url, tmp_path_factory.mktemp("workers"))
    names = [f"w{i}@e2e" for i in range(1, WORKERS + 1)]
    try:
        c.start(names)
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="package")
def sites() -> Iterator[list[HTTPServer]]:
    with serve_many(HOSTS) as servers:
        yield servers


@pytest.fixture
def clean_sites(sites: list[HTTPServer], e2e_redis: RedisServer) -> list[HTTPServer]:
    """The sites with no arrivals, and no host state left in the limiter by an earlier test (a
    429 slows its host for every later job for minutes: README, "Cluster-wide back-off")."""
    for s in sites:
        s.clear()
    r = redis.Redis.from_url(e2e_redis.url)
    try:
        stale = list(r.scan_iter(match="crawler:{rl}:h:*", count=1000))
        if stale:
            r.delete(*stale)
    finally:
        r.close()
    return sites
