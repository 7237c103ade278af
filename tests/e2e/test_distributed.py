"""Distributed crawling end to end: three `crawler worker` processes, one redis-server,
HTTP servers on 127.0.0.2-4, jobs driven through the CLI and the Python API."""

from __future__ import annotations

import bisect
import itertools
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import redis as redis_sync
from hookserver import HookReceiver
from httpserver import HTTPServer

from crawler import Crawler, JobState
from e2e.conftest import Cluster, crawler_env, urls_for, wait_until

pytestmark = pytest.mark.slow

# Server-side timing (arrival spacing across processes) depends on how fast this 2-core box
# delivers a request after its slot: on a host that is starved for CPU, wake-ups and sends run
# tens of ms late and a correct pacer still shows bunched arrivals. Such a test runs again (up
# to twice) before it fails; a broken limiter fails every run.
TIMING = pytest.mark.flaky(reruns=2, reruns_delay=5)


def max_in_window(times: list[float], window: float) -> int:
    """Most arrivals inside any closed window of `window` seconds (sliding over arrivals)."""
    times = sorted(times)
    return max((bisect.bisect_right(times, t + window) - i for i, t in enumerate(times)),
               default=0)


def cli(cluster: Cluster, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "crawler", *args], input=stdin,
                          capture_output=True, env=crawler_env(cluster.redis_url), timeout=300)


@pytest.fixture
def api(cluster: Cluster) -> Iterator[Crawler]:
    with Crawler(redis_url=cluster.redis_url) as c:
        yield c


def arrivals(sites: list[HTTPServer], tag: str) -> list[tuple[str, float]]:
    query = f"t={tag}"
    return [(f"{s.host}{a.path}", a.at) for s in sites for a in s.arrivals() if a.query == query]


@TIMING
@pytest.mark.parametrize("mode", ["async", "threads"])
def test_global_qps_holds_at_the_servers_exactly_once(
    mode: str, cluster: Cluster, clean_sites: list[HTTPServer], tmp_path: Path
) -> None:
    # Given 450 URLs over three hosts and a global limit of 25 requests/s. At the servers the
    # bound holds while the spread of delivery delays (a first connection, a busy 2-core box)
    # stays under the interval minus the lateness allowance: 40 - 10 ms here. At 50/s (20 - 5
    # ms) job starts measured up to 19 ms here, with three workers opening connections at once.
    rate, n, tag = 25, 450, f"qps-{mode}"
    urls = urls_for(clean_sites, n, tag)
    src = tmp_path / "urls.txt"
    src.write_text("\n".join(urls) + "\n")
    # When a user submits them and waits
    sub = cli(cluster, "submit", str(src), "--mode", mode, "--qps", str(rate),
              "--allow-private-networks", "--batch-size", "30")
    assert sub.returncode == 0, sub.stderr.decode()
    job = sub.stdout.decode().strip()
    waited = cli(cluster, "wait", job, "--timeout", "120")
    assert waited.returncode == 0, waited.stderr.decode()
    # Then every URL has exactly one record and was fetched once at the server
    res = cli(cluster, "results", job)
    lines = res.stdout.decode().splitlines()
    assert len(lines) == n
    recs = [orjson.loads(x) for x in lines]
    assert {r["url"] for r in recs} == set(urls)
    assert all(r["status"] == 200 for r in recs)
    hits = arrivals(clean_sites, tag)
    assert len(hits) == n and max(Counter(p for p, _ in hits).values()) == 1
    # and the global limit held in every window, across three processes
    times = [t for _, t in hits]
    for window in (1.0, 0.5):
        assert max_in_window(times, window) <= rate * window + 0 + 1, window
    # and all three workers took part
    status = cli(cluster, "status", job, "--json")
    st = orjson.loads(status.stdout)
    assert st["state"] == "finished" and st["done"] == n and st["pending"] == 0
    assert len(st["workers"]) == 3
    watched = cli(cluster, "status", job, "--watch")  # not a terminal: plain lines, then the end
    assert watched.returncode == 0 and f"job {job}: finished" in watched.stdout.decode()
    listed = cli(cluster, "jobs")
    assert any(line.startswith(job) and "finished" in line
               for line in listed.stdout.decode().splitlines())
    csv_out = cli(cluster, "results", job, "--format", "csv", "--errors-only")
    assert csv_out.stdout.decode().splitlines() == [
        "url,final_url,status,ok,error,error_detail,attempts,elapsed_ms,bytes,content_type,"
        "fetched_at,depth,worker,redirects,job,body_stored,method,meta,data"]


@TIMING
def test_per_host_limit_holds_while_hosts_proceed_in_parallel(
    api: Crawler, clean_sites: list[HTTPServer]
) -> None:
    per_host, tag = 10.0, "per-host"
    urls = urls_for(clean_sites, 60, tag)
    job = api.submit(urls, per_host_qps=per_host, allow_private_networks=True, batch_size=10)
    assert api.wait(job, timeout=120).state is JobState.FINISHED
    by_host: dict[str, list[float]] = {}
    for path, at in arrivals(clean_sites, tag):
        by_host.setdefault(path.split("/")[0], []).append(at)
    assert sorted(len(v) for v in by_host.values()) == [20, 20, 20]
    for host, times in by_host.items():
        times.sort()
        gaps = [b - a for a, b in itertools.pairwise(times)]
        # The limiter's own guarantee (interval - 5 ms, measured at a server with warm clients)
        # is tested in test_ratelimit_processes.py. Here three Celery processes and three
        # servers share two cores and one test process's GIL: a request can leave ~10 ms after
        # its slot's lateness check, so the end-to-end bound is the interval minus 15 ms.
        assert min(gaps) >= 1 / per_host - 0.015, (host, min(gaps))
    # Hosts in parallel: the whole job took about one host's time, not three.
    starts = [min(v) for v in by_host.values()]
    ends = [max(v) for v in by_host.values()]
    assert max(ends) - min(starts) < 2 * (20 / per_host)


def test_pause_holds_everything_and_resume_finishes(
    api: Crawler, clean_sites: list[HTTPServer]
) -> None:
    tag = "pause"
    urls = urls_for(clean_sites, 300, tag)
    job = api.submit(urls, qps=50, allow_private_networks=True, batch_size=25)
    wait_until(lambda: api.status(job).done >= 40, 60, "40 records")
    assert api.pause(job) is JobState.PAUSED
    # In-flight fetches land within the control poll; then nothing reaches the servers.
    time.sleep(1.5)  # asserting an absence: there is no event for "nothing happened"
    held = len(arrivals(clean_sites, tag))
    time.sleep(1.5)
    assert len(arrivals(clean_sites, tag)) == held
    st = api.status(job)
    assert st.state is JobState.PAUSED and st.pending > 0 and st.done == held
    assert api.resume(job) in (JobState.RUNNING, JobState.QUEUED)
    assert api.wait(job, timeout=120).state is JobState.FINISHED
    hits = Counter(p for p, _ in arrivals(clean_sites, tag))
    assert len(hits) == 300 and max(hits.values()) == 1  # nothing lost, nothing twice
    recs = list(api.results(job))
    assert len(recs) == 300 and len({r["url"] for r in recs}) == 300


def test_cancel_drops_pending_and_counts_them(
    api: Crawler, cluster: Cluster, clean_sites: list[HTTPServer]
) -> None:
    tag = "cancel"
    urls = urls_for(clean_sites, 300, tag)
    job = api.submit(urls, qps=50, allow_private_networks=True, batch_size=25)
    wait_until(lambda: api.status(job).done >= 30, 60, "30 records")
    res = cli(cluster, "cancel", job)
    assert res.returncode == 0 and "cancelled" in res.stdout.decode()
    waited = cli(cluster, "wait", job, "--timeout", "60")
    assert waited.returncode == 3
    wait_until(lambda: (s := api.status(job)).done + s.cancelled == 300, 30, "all accounted")
    st = api.status(job)
    assert st.cancelled > 0 and st.pending == 0
    time.sleep(1.0)  # asserting an absence: nothing more is fetched after the cancel
    fetched = len(arrivals(clean_sites, tag))
    assert fetched == st.done
    assert len(list(api.results(job))) == st.done


def test_unknown_job_and_unreachable_redis_are_one_line(cluster: Cluster) -> None:
    for args in (["status", "nosuchjob"], ["wait", "nosuchjob"], ["results", "nosuchjob"],
                 ["cancel", "nosuchjob"]):
        res = cli(cluster, *args)
        err = res.stderr.decode()
        assert res.returncode == 2 and "no job 'nosuchjob'" in err, (args, err)
        assert len(err.strip().splitlines()) == 1
    res = subprocess.run([sys.executable, "-m", "crawler", "status", "x"], capture_output=True,
                         env=crawler_env("redis://:secret@127.0.0.1:1/0"), timeout=60)
    err = res.stderr.decode()
    assert res.returncode == 2 and "cannot reach Redis" in err and "secret" not in err
    res = subprocess.run([sys.executable, "-m", "crawler", "submit", "-"], input=b"http://a/\n",
                         capture_output=True, env=crawler_env("redis://127.0.0.1:1/0"),
                         timeout=60)
    assert res.returncode == 2 and len(res.stderr.decode().strip().splitlines()) == 1


def job_keys(cluster: Cluster, job: str) -> list[bytes]:
    r = redis_sync.Redis.from_url(cluster.redis_url)
    try:
        return list(r.scan_iter(match=f"crawler:job:{{{job}}}:*", count=1000))
    finally:
        r.close()


def test_a_jobs_keys_expire_ttl_after_its_end_and_purge_deletes_them(
    cluster: Cluster, clean_sites: list[HTTPServer]
) -> None:
    # Given a job with a 5-second TTL, crawled to the end (watched in process: a `crawler
    # wait` subprocess takes 2 s to start, and a 2-second TTL could pass before it asks)
    urls = urls_for(clean_sites, 60, "ttl")
    sub = cli(cluster, "submit", "-", "--ttl", "5", "--allow-private-networks",
              "--batch-size", "20", stdin="\n".join(urls).encode())
    assert sub.returncode == 0, sub.stderr.decode()
    job = sub.stdout.decode().split()[-1]
    with Crawler(redis_url=cluster.redis_url) as c:
        assert c.wait(job, timeout=60).state is JobState.FINISHED
    assert job_keys(cluster, job)
    # When its TTL passes (applied once no batch holds the job: the next reaper pass)
    try:
        wait_until(lambda: not job_keys(cluster, job), 60, "the job's keys to expire")
    except AssertionError:
        r = redis_sync.Redis.from_url(cluster.redis_url)
        left = {k.decode(): r.pttl(k) for k in job_keys(cluster, job)}
        raise AssertionError(f"keys left (name: ms to live): {left}") from None
    # Then no key of it is left, and `crawler jobs` drops it from the index
    assert job not in cli(cluster, "jobs", "--limit", "200").stdout.decode()
    r = redis_sync.Redis.from_url(cluster.redis_url)
    assert r.zscore("crawler:jobs", job) is None
    r.close()

    # Given another job, ended; `crawler jobs --purge` deletes its keys at once
    sub = cli(cluster, "submit", "-", "--allow-private-networks",
              stdin="\n".join(urls_for(clean_sites, 10, "purge")).encode())
    job = sub.stdout.decode().split()[-1]
    assert cli(cluster, "wait", job, "--timeout", "60").returncode == 0
    purged = cli(cluster, "jobs", "--purge", job)
    assert purged.returncode == 0 and "purged" in purged.stdout.decode()
    assert not job_keys(cluster, job)
    gone = cli(cluster, "status", job)
    assert gone.returncode == 2 and "no job" in gone.stderr.decode()


def test_purging_a_running_job_is_refused_in_one_line(
    api: Crawler, cluster: Cluster, clean_sites: list[HTTPServer]
) -> None:
    job = api.submit(urls_for(clean_sites, 100, "purge-running"), qps=20,
                     allow_private_networks=True, batch_size=20)
    res = cli(cluster, "jobs", "--purge", job)
    err = res.stderr.decode()
    assert res.returncode == 2 and "cancel it first" in err and len(err.splitlines()) == 1
    assert job_keys(cluster, job)
    api.cancel(job)


def test_max_queued_stops_the_input_at_a_named_line_and_the_accepted_part_runs(
    api: Crawler, cluster: Cluster, clean_sites: list[HTTPServer]
) -> None:
    # Given 40 URLs (each of the first 10 twice: duplicates do not count) and --max-queued 25
    urls = urls_for(clean_sites, 40, "max-queued")
    lines = urls[:10] + urls[:10] + urls[10:]
    res = cli(cluster, "submit", "-", "--max-queued", "25", "--allow-private-networks",
              stdin="\n".join(lines).encode())
    # Then submit fails in one line naming the job and the first line it did not read
    err = res.stderr.decode().strip().splitlines()[-1]
    assert res.returncode == 2
    assert "--max-queued 25" in err and "from line 36 on was not read" in err
    job = err.split()[3]
    # and the 25 accepted URLs run to the end, nothing beyond them
    st = api.wait(job, timeout=60)
    assert st.state is JobState.FINISHED and st.total == 25 and st.done == 25
    assert {r["url"] for r in api.results(job)} == set(urls[:25])


def test_on_finish_posts_the_final_status_once_retrying_a_503(
    api: Crawler, cluster: Cluster, clean_sites: list[HTTPServer], hook: HookReceiver
) -> None:
    # Given a job with a finish hook whose endpoint fails once, and a callback task
    job = api.submit(urls_for(clean_sites, 30, "hook"), allow_private_networks=True,
                     batch_size=10, on_finish=hook.url, on_finish_task="myapp.crawl_done")
    assert api.wait(job, timeout=60).state is JobState.FINISHED
    # Then one worker posts the final status, again after the 503, and sends the task
    assert hook.got.wait(60), hook.answers
    assert hook.answers == [503, 200]
    final = hook.bodies[-1]
    assert final["job_id"] == job and final["state"] == "finished" and final["done"] == 30
    r = redis_sync.Redis.from_url(cluster.redis_url)
    wait_until(lambda: r.llen("celery") > 0, 30, "the callback task on the broker")
    message = orjson.loads(r.lindex("celery", 0))
    assert message["headers"]["task"] == "myapp.crawl_done"
    r.delete("celery")
    r.close()


def test_on_finish_posts_a_cancelled_jobs_status(
    api: Crawler, clean_sites: list[HTTPServer], hook: HookReceiver
) -> None:
    hook.answers.append(0)  # no 503 this time
    job = api.submit(urls_for(clean_sites, 200, "hook-cancel"), qps=20,
                     allow_private_networks=True, batch_size=20, on_finish=hook.url)
    wait_until(lambda: api.status(job).done >= 10, 60, "10 records")
    api.cancel(job)
    assert hook.got.wait(60)
    final = hook.bodies[-1]
    assert final["job_id"] == job and final["state"] == "cancelled"
    assert final["done"] + final["cancelled"] == 200


def test_an_on_finish_url_that_is_not_http_is_one_line(cluster: Cluster) -> None:
    res = cli(cluster, "submit", "-", "--on-finish", "ftp://x/", stdin=b"http://127.0.0.2/\n")
    err = res.stderr.decode()
    assert res.returncode == 2 and "on_finish" in err and len(err.strip().splitlines()) == 1
