"""Two real workers share one Prometheus port (`--metrics-dir`); scraped during and after a job.

Their own Redis: no other worker takes the job's batches, so the totals are exact."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from httpserver import HTTPServer
from prometheus_client.parser import text_string_to_metric_families
from redisserver import RedisServer, free_port

from crawler import Crawler, JobState
from e2e.conftest import Cluster, wait_until

pytestmark = pytest.mark.slow
NAMES = ["m1@e2e", "m2@e2e"]
PAGES = 400
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


class Workers(Cluster):
    port: int


@pytest.fixture(scope="module")
def workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workers]:
    redis = RedisServer()
    shared = tmp_path_factory.mktemp("metrics")
    c = Workers(redis.url, tmp_path_factory.mktemp("metric-workers"))
    c.port = free_port()
    try:
        for name in NAMES:
            c.start_worker(name, concurrency=10, extra=[
                "--metrics-port", str(c.port), "--metrics-dir", str(shared)])
        c.wait_ready(NAMES)
        yield c
    finally:
        c.stop()
        redis.stop()


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def get(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def serving_pid(port: int) -> int:
    for proc in psutil.process_iter():
        try:
            if any(c.status == psutil.CONN_LISTEN and c.laddr.port == port
                   for c in proc.net_connections("tcp")):
                return proc.pid
        except (psutil.AccessDenied, psutil.NoSuchProcess):
            continue
    raise AssertionError(f"nobody listens on {port}")


def test_workers_metrics_during_and_after_a_job(
    workers: Workers, clean_sites: list[HTTPServer], tmp_path: Path
) -> None:
    urls = [clean_sites[i % len(clean_sites)].url(f"/delay/100?m={i}") for i in range(PAGES)]
    with Crawler(redis_url=workers.redis_url) as c:
        job = c.submit(urls, allow_private_networks=True, batch_size=50)
        during: Samples = {}

        def busy() -> bool:
            during.update(scrape(workers.port))
            return (get(during, "crawler_inflight_requests") > 0
                    and get(during, "crawler_batches_running") > 0
                    and get(during, "crawler_pages_total", job=job, outcome="ok") > 0)

        wait_until(busy, 30, "the metrics to show the job running")
        assert c.status(job).state is JobState.RUNNING  # scraped during the job, not after
        assert get(during, "crawler_concurrency") == 20  # 2 processes x 10, summed
        assert c.wait(job, timeout=60).state is JobState.FINISHED

    after: Samples = {}

    def landed() -> bool:
        after.update(scrape(workers.port))
        return get(after, "crawler_pages_total", job=job, outcome="ok") == PAGES

    wait_until(landed, 10, "every page in the metrics")
    assert get(after, "crawler_pages_total", job=job, outcome="failed") == 0
    assert get(after, "crawler_responses_total", status_class="2xx") == PAGES
    assert get(after, "crawler_batches_total", outcome="done") == PAGES // 50
    fetches = get(after, "crawler_fetches_total")
    assert fetches == PAGES
    assert get(after, "crawler_fetch_duration_seconds_count") == fetches
    # Every page took its 100 ms: none in a bucket below 0.1 s, all at or under 60 s.
    assert get(after, "crawler_fetch_duration_seconds_bucket", le="0.05") == 0
    assert get(after, "crawler_fetch_duration_seconds_bucket", le="60.0") == fetches
    assert get(after, "crawler_fetch_duration_seconds_sum") >= 0.1 * PAGES
    assert get(after, "crawler_limiter_calls_total") > 0
    assert get(after, "crawler_response_bytes_total") > 0

    # The process serving the port stops: the other takes it over, and the stopped
    # one's counts stay in the sum (its live gauges leave it).
    pid = serving_pid(workers.port)
    name = next(n for n, p in workers.procs.items() if p.pid == pid)
    workers.procs[name].terminate()
    workers.procs[name].wait(30)
    took_over: Samples = {}

    def served() -> bool:
        try:
            took_over.update(scrape(workers.port))
        except OSError:
            return False
        return True

    wait_until(served, 20, "the other worker to take the metrics port over")
    assert serving_pid(workers.port) != pid
    assert get(took_over, "crawler_pages_total", job=job, outcome="ok") == PAGES
    assert get(took_over, "crawler_concurrency") == 10
