"""Beyond one Redis, end to end: a job on a real 3-master Redis Cluster, and a job that lives
through a Sentinel failover, each run by real `crawler worker` processes.

The cluster holds job state, results, dedupe and the limiter (a cluster cannot carry Celery's
queue: the broker is a plain redis-server). Under Sentinel, Redis and the broker are the master
the sentinels name; the failover demotes it mid-job, its clients get READONLY or a closed
connection, reconnect to the promoted replica, and the job finishes with every URL recorded
once.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from httpserver import HTTPServer
from redisserver import RedisServer
from redistopo import RedisClusterServers, SentinelGroup

from crawler import Crawler, JobState
from e2e.conftest import Cluster, urls_for, wait_until

pytestmark = pytest.mark.slow


def fetched(sites: list[HTTPServer], tag: str) -> Counter[str]:
    return Counter(f"{s.host}{a.path}" for s in sites for a in s.arrivals()
                   if a.query == f"t={tag}")


@pytest.fixture
def broker_redis() -> Iterator[RedisServer]:
    """A broker of the test's own: the package's workers consume the shared e2e Redis."""
    server = RedisServer()
    yield server
    server.stop()


def test_a_job_on_a_redis_cluster_runs_once_over_two_workers(
    redis_cluster: RedisClusterServers, broker_redis: RedisServer,
    clean_sites: list[HTTPServer], tmp_path: Path
) -> None:
    # Given two workers whose Redis is a 3-master cluster (the broker a plain Redis)
    redis_cluster.flushall()
    c = Cluster(redis_cluster.url, tmp_path, broker_url=broker_redis.url)
    names = ["c1@cluster", "c2@cluster"]
    try:
        c.start(names, concurrency=20)
        # When 300 URLs are submitted with the CLI and waited for
        tag = "cluster"
        urls = urls_for(clean_sites, 300, tag)
        res = subprocess.run(
            [sys.executable, "-m", "crawler", "submit", "-", "--qps", "100", "--batch-size",
             "20", "--allow-private-networks"], input="\n".join(urls).encode(),
            capture_output=True, env=c.env, timeout=120)
        assert res.returncode == 0, res.stderr.decode()
        job = res.stdout.decode().split()[-1]
        waited = subprocess.run([sys.executable, "-m", "crawler", "wait", job, "--timeout",
                                 "120"], capture_output=True, env=c.env, timeout=180)
        assert waited.returncode == 0, waited.stdout.decode() + waited.stderr.decode()
        # Then every URL was fetched once, recorded once, by both workers
        with Crawler(redis_url=redis_cluster.url, broker_url=broker_redis.url) as api:
            recs = list(api.results(job))
            assert api.status(job).state is JobState.FINISHED
        assert Counter(str(r["url"]) for r in recs) == Counter(urls)
        hits = fetched(clean_sites, tag)
        assert len(hits) == 300 and max(hits.values()) == 1
        assert {r["worker"] for r in recs} == set(names)
        # and the keys live on the cluster's shards (job keys on one slot, the limiter's on
        # another), none in the broker's Redis
        per_node = [n.client().dbsize() for n in redis_cluster.nodes]
        assert sum(per_node) > 0 and sum(1 for k in per_node if k) >= 2
        assert not broker_redis.client().keys(f"crawler:job:{{{job}}}*")
    finally:
        c.stop()


@pytest.fixture
def sentinels() -> Iterator[SentinelGroup]:
    group = SentinelGroup()
    yield group
    group.stop()


def test_a_sentinel_failover_mid_job_loses_nothing(
    sentinels: SentinelGroup, clean_sites: list[HTTPServer], tmp_path: Path
) -> None:
    # Given two workers on redis+sentinel:// (their Redis and their broker) and a paced job
    c = Cluster(sentinels.url, tmp_path)
    names = ["s1@sentinel", "s2@sentinel"]
    try:
        c.start(names, concurrency=20)
        tag = "failover"
        urls = urls_for(clean_sites, 300, tag)
        with Crawler(redis_url=sentinels.url) as api:
            job = api.submit(urls, qps=30, allow_private_networks=True, batch_size=20)
            wait_until(lambda: api.status(job).done >= 60, 60, "60 records")
            # When the sentinels fail the master over to the replica mid-job
            old = sentinels.master_port()
            assert sentinels.failover() != old
            # Then the job finishes: every URL recorded exactly once, nothing pending
            st = api.wait(job, timeout=180)
            assert st.state is JobState.FINISHED and st.done == 300 and st.pending == 0
            recs = list(api.results(job))
        assert Counter(str(r["url"]) for r in recs) == Counter(urls)
        assert len(fetched(clean_sites, tag)) == 300
    finally:
        c.stop()
