"""Structured requests end to end: JSON-lines input through `crawler submit` and the Python
API, run by three `crawler worker` processes on a real Redis."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import pytest
from httpserver import HTTPServer

from crawler import Crawler, JobState
from e2e.conftest import Cluster, wait_until
from e2e.test_distributed import api, cli  # noqa: F401 - the api fixture

pytestmark = pytest.mark.slow


def test_json_lines_submit_methods_bodies_meta_and_reasons(
    api: Crawler, cluster: Cluster, clean_sites: list[HTTPServer], tmp_path: Path  # noqa: F811
) -> None:
    a, b, _ = clean_sites
    # Given a file mixing URL lines and JSON request lines, with a duplicate and two bad lines
    lines = [
        a.url("/ok?t=req"),
        json.dumps({"url": a.url("/echo?t=req"), "json": {"q": "ü", "n": 1},
                    "meta": {"row": 2, "tags": ["x", None]}, "headers": {"X-Req": "2"}}),
        json.dumps({"url": a.url("/echo?t=req"), "json": {"q": "ü", "n": 1}, "meta": "dup"}),
        json.dumps({"url": a.url("/echo?t=req"), "body": "n=2",
                    "headers": {"Content-Type": "application/x-www-form-urlencoded"}}),
        json.dumps({"url": b.url("/ok?t=req"), "method": "HEAD", "meta": 5}),
        json.dumps({"url": b.url("/ok?t=req"), "meta": {"same": "url as line 1? no: host b"}}),
        json.dumps({"url": b.url("/ok?t=req"), "method": "PATCH"}),
        json.dumps({"url": "gopher://x/"}),
    ]
    src = tmp_path / "requests.jsonl"
    src.write_text("\n".join(lines) + "\n")
    sub = cli(cluster, "submit", str(src), "--allow-private-networks", "--batch-size", "2")
    # Then submit accepts six, names the two bad lines and why
    assert sub.returncode == 0, sub.stderr.decode()
    err = sub.stderr.decode()
    assert "6 accepted, 2 rejected" in err and "1 duplicates" in err
    assert "line 7: bad_request: 'method' must be one of GET, HEAD, POST, not 'PATCH'" in err
    assert "line 8: bad_scheme: url:" in err
    job = sub.stdout.decode().strip()
    st = api.wait(job, timeout=60)
    assert st.state is JobState.FINISHED and (st.total, st.done) == (5, 5)
    # and the servers saw each request once, as described
    seen = Counter((s.host, x.method, x.path, x.body) for s in (a, b) for x in s.arrivals()
                   if x.query == "t=req")
    assert seen == Counter({
        (a.host, "GET", "/ok", b""): 1,
        (a.host, "POST", "/echo", '{"q":"ü","n":1}'.encode()): 1,
        (a.host, "POST", "/echo", b"n=2"): 1,
        (b.host, "HEAD", "/ok", b""): 1,
        (b.host, "GET", "/ok", b""): 1,
    })
    posted = next(x for x in a.arrivals() if x.method == "POST" and x.body != b"n=2")
    assert posted.headers["X-Req"] == "2" and posted.headers["Content-Type"] == "application/json"
    # and each record carries its method and its meta, unchanged
    recs = {(r["url"], r["method"], json.dumps(r["meta"])): r for r in api.results(job)}
    assert set(recs) == {
        (a.url("/ok?t=req"), "GET", "null"),
        (a.url("/echo?t=req"), "POST", json.dumps({"row": 2, "tags": ["x", None]})),
        (a.url("/echo?t=req"), "POST", "null"),
        (b.url("/ok?t=req"), "HEAD", "5"),
        (b.url("/ok?t=req"), "GET", json.dumps({"same": "url as line 1? no: host b"})),
    }
    assert all(r["ok"] and r["data"] is None for r in recs.values())


def test_api_objects_survive_pause_and_resume_with_their_meta(
    api: Crawler, clean_sites: list[HTTPServer]  # noqa: F811
) -> None:
    # Given 150 request objects (a third of them POSTs), paced so a pause catches them mid-way
    reqs: list[object] = []
    for i in range(150):
        site = clean_sites[i % 3]
        if i % 3 == 0:
            reqs.append({"url": site.url(f"/echo?t=req-pause&i={i}"), "json": {"i": i},
                         "meta": {"i": i}})
        else:
            reqs.append({"url": site.url(f"/page/{i}?t=req-pause"), "meta": {"i": i}})
    job = api.submit(reqs, qps=50, allow_private_networks=True, batch_size=10)
    wait_until(lambda: api.status(job).done >= 20, 60, "20 records")
    # When the job is paused (batches hand their rest back to Redis) and resumed
    assert api.pause(job) is JobState.PAUSED
    time.sleep(1.5)  # in-flight fetches land within the control poll
    assert 0 < api.status(job).done < 150
    assert api.resume(job) in (JobState.RUNNING, JobState.QUEUED)
    assert api.wait(job, timeout=120).state is JobState.FINISHED
    # Then every request ran once, with its method, and its record has its meta
    recs = list(api.results(job))
    assert sorted(r["meta"]["i"] for r in recs) == list(range(150))
    assert all(r["method"] == ("POST" if r["meta"]["i"] % 3 == 0 else "GET") for r in recs)
    posts = [x for s in clean_sites for x in s.arrivals() if x.method == "POST"
             and "t=req-pause" in x.query]
    assert sorted(json.loads(x.body)["i"] for x in posts) == list(range(0, 150, 3))


def test_extract_runs_in_the_workers_and_a_failing_one_kills_nothing(
    api: Crawler, cluster: Cluster, clean_sites: list[HTTPServer]  # noqa: F811
) -> None:
    # Given a job whose function raises on every page
    urls = [s.url(f"/page/{i}?t=boom") for i, s in enumerate(clean_sites * 10)]
    bad = api.submit(urls, allow_private_networks=True, batch_size=5,
                     extract="extract_funcs:boom")
    st = api.wait(bad, timeout=60)
    # Then every page is fetched and recorded as extract_failed with the message
    assert st.state is JobState.FINISHED and st.errors == {"extract_failed": 30}
    assert all(r["status"] == 200 and "ValueError: no luck with" in r["error_detail"]
               for r in api.results(bad))
    # and the same workers run the next job's function: data, meta and follow requests
    reqs = [{"url": s.url(f"/page/{i}?t=follow"), "meta": {"i": i}}
            for i, s in enumerate(clean_sites)]
    good = api.submit(reqs, allow_private_networks=True, batch_size=1, depth=1,
                      extract="extract_funcs:follow_api")
    assert api.wait(good, timeout=60).state is JobState.FINISHED
    recs = list(api.results(good))
    seeds = {r["url"]: r for r in recs if r["depth"] == 0}
    assert {r["data"]["n"] for r in seeds.values()} == {0, 1, 2}
    assert {r["meta"]["i"] for r in seeds.values()} == {0, 1, 2}
    posts = sorted(r["meta"]["from"] for r in recs if r["method"] == "POST")
    assert posts == [0, 1, 2]  # one POST per page, each to its own host, meta intact
    assert all(r["ok"] for r in recs)
    assert all(cluster.procs[n].poll() is None for n in cluster.procs)


def test_submit_with_an_unimportable_extract_is_one_line(cluster: Cluster) -> None:
    res = cli(cluster, "submit", "-", "--extract", "nowhere_to_be_found:f",
              stdin=b"http://127.0.0.2/\n")
    err = res.stderr.decode().strip()
    assert res.returncode == 2 and len(err.splitlines()) == 1
    assert "cannot import nowhere_to_be_found" in err and "PYTHONPATH" in err
