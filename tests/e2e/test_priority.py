"""Priorities across jobs: one `crawler worker` running one batch at a time takes batches in
the order of the shared line (crawler/schedule.py): higher priority first, aging so that
nothing starves, and input lines' own priorities."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from httpserver import HTTPServer

from crawler import Crawler, JobState
from e2e.conftest import Cluster

pytestmark = pytest.mark.slow
AGING = 1.0  # s of waiting per priority point, for producer and worker alike
DB = 7  # a database of the e2e Redis of its own: the package's workers never see its queue


@pytest.fixture
def lone(e2e_redis: object, tmp_path: Path) -> Iterator[tuple[Cluster, Crawler]]:
    url = f"{e2e_redis.url.rsplit('/', 1)[0]}/{DB}"  # type: ignore[attr-defined]
    cluster = Cluster(url, tmp_path, env={"CRAWLER_PRIORITY_AGING": str(AGING)})
    with Crawler(redis_url=url, priority_aging=AGING) as api:
        api._run(api._async.client.flushdb())
        try:
            yield cluster, api
        finally:
            cluster.stop()


def order_of_jobs(site: HTTPServer) -> list[str]:
    """The tags of arrivals in arrival order, runs collapsed: the order batches ran in."""
    tags = [a.query.split("t=")[1].split("&")[0] for a in sorted(site.arrivals(),
                                                                  key=lambda a: a.at)]
    return [k for k, _ in itertools.groupby(tags)]


def test_higher_priority_first_aging_and_line_priorities(
    lone: tuple[Cluster, Crawler], clean_sites: list[HTTPServer]
) -> None:
    cluster, api = lone
    site = clean_sites[0]

    def urls(tag: str, n: int) -> list[str]:
        return [site.url(f"/page/{i}?t={tag}") for i in range(n)]

    opts = {"allow_private_networks": True, "batch_size": 5, "concurrency": 5}
    # Given, with no worker running: an old job at priority 0, then 3 s later (3 points of
    # waiting at 1 s a point) a job at 0, one at 10, one at 2 (2 < 3: the old one goes first),
    # and a job at 0 whose input gives some lines priority 20
    old = api.submit(urls("old", 10), **opts)
    time.sleep(3.0)  # the waiting itself is what ranks `old` ahead of `two`
    late = api.submit(urls("late", 10), **opts)
    ten = api.submit(urls("ten", 10), priority=10, **opts)
    two = api.submit(urls("two", 10), priority=2, **opts)
    lines = [{"url": u, "priority": 20} for u in urls("lines20", 5)] + urls("lines0", 5)
    mixed = api.submit(lines, **opts)
    # When one worker starts that runs one batch at a time
    cluster.start_worker("prio@e2e", concurrency=5, extra=["--batches", "1"])
    cluster.wait_ready(["prio@e2e"])
    for job in (old, late, ten, two, mixed):
        assert api.wait(job, timeout=90).state is JobState.FINISHED
    # Then batches ran in the line's order: the priority-20 lines, the job at 10, the old
    # job (its 3 s of waiting beat the 2 points of `two`), `two`, then arrival order
    assert order_of_jobs(site) == ["lines20", "ten", "old", "two", "late", "lines0"]
    # and the line is empty, no claim is left
    assert api._run(api._async.schedule.length()) == 0


def test_batches_sent_again_keep_their_line_priority(
    lone: tuple[Cluster, Crawler], clean_sites: list[HTTPServer]
) -> None:
    cluster, api = lone
    site = clean_sites[1]
    opts = {"allow_private_networks": True, "batch_size": 5, "concurrency": 5}
    # Given a job whose lines have priority 50, paused before any worker runs, and a long job
    # at priority 0 (20 batches of slow pages)
    high = api.submit([{"url": site.url(f"/page/{i}?t=high"), "priority": 50}
                       for i in range(10)], **opts)
    assert api.pause(high) is JobState.PAUSED
    low = api.submit([site.url(f"/delay/100?t=low&i={i}") for i in range(100)], **opts)
    # When a worker parks the paused job's batches, runs some of `low`, and `high` resumes
    cluster.start_worker("prio2@e2e", concurrency=5, extra=["--batches", "1"])
    cluster.wait_ready(["prio2@e2e"])
    deadline = time.monotonic() + 60
    while api.status(low).done < 10:  # another process's progress: polled
        assert time.monotonic() < deadline, "low never started"
        time.sleep(0.05)
    assert api.resume(high) in (JobState.RUNNING, JobState.QUEUED)
    assert api.wait(high, timeout=60).state is JobState.FINISHED
    assert api.wait(low, timeout=90).state is JobState.FINISHED
    # Then its batches, sent again, went back in line at priority 50: ahead of low's rest
    assert order_of_jobs(site) == ["low", "high", "low"]
