"""`crawler status JOB --watch` on a pseudo-terminal, while real workers run the job."""

from __future__ import annotations

import re
import sys

import pytest
from httpserver import HTTPServer
from ptyrun import run_in_pty

from crawler import Crawler
from e2e.conftest import Cluster, crawler_env

pytestmark = pytest.mark.slow


def test_watch_shows_the_running_job(cluster: Cluster, clean_sites: list[HTTPServer]) -> None:
    # 3 hosts at 40/s each, 50/s in all: about 4 s of running job to watch.
    urls = [clean_sites[i % 3].url(f"/page/{i}?t=watch") for i in range(200)]
    with Crawler(redis_url=cluster.redis_url) as c:
        job = c.submit(urls, allow_private_networks=True, batch_size=25, qps=50,
                       per_host_qps=40)
    code, text = run_in_pty([sys.executable, "-m", "crawler", "status", job, "--watch"],
                            crawler_env(cluster.redis_url), columns=140)
    assert code == 0, text
    assert f"job {job}" in text and "running" in text and "ETA" in text
    assert "of 50/s target" in text and "at most 40/s per host" in text
    assert re.search(r"in flight [1-9]", text), text  # summed from the workers' reports
    # Workers report what they hold: hosts by queued URLs, and themselves with a heartbeat.
    assert re.search("hosts +(" + "|".join(re.escape(s.host) for s in clean_sites) + r") \d",
                     text), text
    assert re.search(r"w[123]@e2e  seen \d+\.\d s ago, \d+ in flight", text), text
    assert f"job {job}: finished" in text  # the full status at the end
