"""RabbitMQ as the broker, end to end: `crawler worker` processes consuming from a vhost of
their own on the machine's RabbitMQ, job state and results in a redis-server.

A subset of the Redis-broker suite, the part where the broker matters: a job submitted,
paused, resumed and finished through the CLI and the API (resume publishes again); a depth
crawl (workers publish found links and released levels); a worker
SIGKILLed mid-job on a quorum queue, whose unacknowledged messages RabbitMQ hands to the
other worker as soon as the connection drops. Without RabbitMQ these tests skip locally and
fail on CI (tests/rabbitmq.py).
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from crawlcheck import check_exact
from httpserver import HTTPServer
from rabbitmq import RabbitVhost
from redisserver import RedisServer
from sitegraph import expected
from siteserver import serve_site

from crawler import Crawler, JobState
from e2e.conftest import Cluster, urls_for, wait_until
from e2e.test_crawl import FAST_DELAY, crawl

pytestmark = pytest.mark.slow

TASK_RECEIVED = re.compile(r"Task crawler\.fetch_batch\[([0-9a-f-]{36})\] received")


def received(cluster: Cluster, name: str) -> set[str]:
    """Task ids a worker's log says it received."""
    return set(TASK_RECEIVED.findall(cluster.log(name)))


@pytest.fixture(scope="module")
def vhost() -> Iterator[RabbitVhost]:
    v = RabbitVhost()
    yield v
    v.delete()


@pytest.fixture(scope="module")
def amqp_cluster(e2e_redis: RedisServer, vhost: RabbitVhost,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(e2e_redis.url, tmp_path_factory.mktemp("amqp"), broker_url=vhost.url)
    try:
        c.start(["a1@amqp", "a2@amqp"], concurrency=20)
        yield c
    finally:
        c.stop()


def test_submit_pause_resume_and_finish_over_rabbitmq(
    amqp_cluster: Cluster, vhost: RabbitVhost, e2e_redis: RedisServer,
    clean_sites: list[HTTPServer]
) -> None:
    # Given 300 URLs submitted with the CLI, the broker a RabbitMQ vhost
    tag = "amqp"
    urls = urls_for(clean_sites, 300, tag)
    res = subprocess.run(
        [sys.executable, "-m", "crawler", "submit", "-", "--qps", "60", "--batch-size", "25",
         "--allow-private-networks"], input="\n".join(urls).encode(), capture_output=True,
        env=amqp_cluster.env, timeout=120)
    assert res.returncode == 0, res.stderr.decode()
    job = res.stdout.decode().split()[-1]
    with Crawler(redis_url=amqp_cluster.redis_url, broker_url=vhost.url) as api:
        wait_until(lambda: api.status(job).done >= 40, 60, "40 records")
        # When it is paused, then resumed (resume publishes the parked batches again)
        assert api.pause(job) is JobState.PAUSED
        wait_until(lambda: api.status(job).pending > 0, 30, "batches parked")
        assert api.resume(job) in (JobState.RUNNING, JobState.QUEUED)
        # Then it finishes with every URL fetched once and one record each
        assert api.wait(job, timeout=120).state is JobState.FINISHED
        recs = list(api.results(job))
    assert Counter(str(r["url"]) for r in recs) == Counter(urls)
    hits = Counter(f"{s.host}{a.path}" for s in clean_sites for a in s.arrivals()
                   if a.query == f"t={tag}")
    assert len(hits) == 300 and max(hits.values()) == 1
    # and the batches went through RabbitMQ (a classic queue), none through the Redis
    assert vhost.queue_types().get("crawler") == "classic"
    assert e2e_redis.client().exists("crawler") == 0
    assert received(amqp_cluster, "a1@amqp") and received(amqp_cluster, "a2@amqp")


def test_a_depth_crawl_over_rabbitmq_is_exact(amqp_cluster: Cluster, tmp_path: Path) -> None:
    # Given a generated site; when two workers crawl it 2 links deep (found links and the
    # level barrier's held batches are published by the workers, over AMQP)
    with serve_site(crawl_delay=FAST_DELAY) as server:
        want = expected(server.site, server.site.seeds, depth=2, scope="host")
        _job, records, status = crawl(amqp_cluster, server, tmp_path, "--depth", "2")
        # Then exactly the pages within 2 links were recorded, each fetched once
        assert status["state"] == "finished"
        check_exact(records, want, server)


def test_sigkill_on_a_quorum_queue_redelivers_at_once_and_loses_nothing(
    e2e_redis: RedisServer, clean_sites: list[HTTPServer], tmp_path: Path
) -> None:
    # Given two workers on a quorum queue sharing a slow job (a per-host limit)
    quorum = RabbitVhost()
    c = Cluster(e2e_redis.url, tmp_path, broker_url=quorum.url,
                env={"CRAWLER_BROKER_QUEUE_TYPE": "quorum"})
    try:
        c.start(["q1@amqp", "q2@amqp"], concurrency=20)
        urls = urls_for(clean_sites, 240, "amqp-kill")
        with Crawler(redis_url=e2e_redis.url, broker_url=quorum.url,
                     broker_queue_type="quorum") as api:
            job = api.submit(urls, per_host_qps=10, allow_private_networks=True,
                             batch_size=20)
            wait_until(lambda: received(c, "q1@amqp") and api.status(job).done >= 20, 60,
                       "q1 running a batch")
            # When q1 is SIGKILLed holding unacknowledged messages
            held = received(c, "q1@amqp")
            c.kill("q1@amqp")
            # Then RabbitMQ gives them to q2 (a redelivery; the running ones answer `leased`
            # there and come back by their lease) and the job finishes exactly once
            wait_until(lambda: held & received(c, "q2@amqp"), 30, "q1's messages at q2")
            assert api.wait(job, timeout=180).state is JobState.FINISHED
            recs = list(api.results(job))
        assert Counter(str(r["url"]) for r in recs) == Counter(urls)
        assert quorum.queue_types().get("crawler") == "quorum"
    finally:
        c.stop()
        quorum.delete()
