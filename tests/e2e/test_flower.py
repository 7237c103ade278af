"""A real Flower process sees the workers and the job's tasks through its HTTP API."""

from __future__ import annotations

import base64
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from httpserver import HTTPServer
from prometheus_client.parser import text_string_to_metric_families
from redisserver import free_port

from crawler import Crawler, JobState
from e2e.conftest import WORKERS, Cluster, crawler_env, wait_until

pytestmark = pytest.mark.slow
AUTH = "admin:test-only-password"


@pytest.fixture(scope="module")
def flower(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log = tmp_path_factory.mktemp("flower") / "flower.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(  # as a user starts it: the login comes in the environment
            [sys.executable, "-m", "crawler", "flower", "--port", str(port)],
            env=crawler_env(cluster.redis_url) | {"FLOWER_BASIC_AUTH": AUTH}, stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"flower exited: {log.read_text()[-2000:]}")
        try:
            get(base + "/healthcheck")
            return True
        except OSError:
            return False

    try:
        wait_until(up, 60, "Flower to answer")
        yield base
    finally:
        proc.terminate()
        proc.wait(30)


def get(url: str, auth: str | None = AUTH) -> Any:
    req = urllib.request.Request(url)
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    with urllib.request.urlopen(req, timeout=10) as resp:
        body = resp.read()
    return orjson.loads(body) if body[:1] in (b"{", b"[") else body


def test_flower_lists_workers_and_job_tasks(
    flower: str, cluster: Cluster, clean_sites: list[HTTPServer]
) -> None:
    workers: dict[str, Any] = {}

    def all_workers() -> bool:
        workers.update(get(flower + "/api/workers?refresh=1"))
        return sum(name.endswith("@e2e") for name in workers) >= WORKERS

    wait_until(all_workers, 60, "Flower to list the workers")
    assert {f"w{i}@e2e" for i in range(1, WORKERS + 1)} <= set(workers)

    with Crawler(redis_url=cluster.redis_url) as c:
        urls = [clean_sites[0].url(f"/page/{i}?t=flower") for i in range(40)]
        job = c.submit(urls, allow_private_networks=True, batch_size=10)
        assert c.wait(job, timeout=60).state is JobState.FINISHED

    tasks: dict[str, Any] = {}

    def job_tasks() -> list[dict[str, Any]]:
        tasks.update(get(flower + "/api/tasks"))
        return [t for t in tasks.values()
                if t.get("name") == "crawler.fetch_batch" and job in str(t.get("args"))
                and t.get("state") == "SUCCESS"]

    wait_until(lambda: len(job_tasks()) == 4, 60, "Flower to show the job's 4 tasks")
    done = job_tasks()
    assert {t["worker"] for t in done} <= {f"w{i}@e2e" for i in range(1, WORKERS + 1)}
    assert all("'outcome': 'done'" in str(t["result"]) for t in done)
    # Each task is labelled with what it holds: job, batch, URL count and hosts.
    assert sorted(t["args"] for t in done) == [f"job={job} batch={n}" for n in range(4)]
    host = clean_sites[0].host
    assert {t["kwargs"] for t in done} == {f"why=submitted urls=10 hosts={host}"}
    # Its result summarises the batch.
    result = done[0]["result"]
    for key in ("'urls': 10", "'fetched': 10", "'ok': 10", "'failed': 0", "'bytes':",
                "'elapsed_s':"):
        assert key in result, result
    # Flower's own Prometheus endpoint counts the job's task events.
    succeeded = sum(
        sample.value
        for family in text_string_to_metric_families(get(flower + "/metrics", auth=None).decode())
        if family.name == "flower_events"
        for sample in family.samples
        if sample.labels.get("task") == "crawler.fetch_batch"
        and sample.labels.get("type") == "task-succeeded")
    assert succeeded >= 4
    # The API is not open without the password.
    with pytest.raises(urllib.error.HTTPError) as info:
        get(flower + "/api/workers", auth=None)
    assert info.value.code == 401
    info.value.close()
