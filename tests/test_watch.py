"""The live view: its text on rich's recording console, its data from a job's status and from
a running crawl, and `crawler crawl` drawing it in a real pseudo-terminal."""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import orjson
from httpserver import HTTPServer
from ptyrun import run_in_pty
from rich.console import Console

from crawler import loops
from crawler.embedded import crawl
from crawler.jobs import JobState, JobStatus, _live
from crawler.progress import Progress
from crawler.settings import load_settings
from crawler.watch import RecentRate, WatchView, from_status, plain, render


def text_of(view: WatchView, width: int = 110) -> str:
    console = Console(record=True, width=width, file=io.StringIO(), force_terminal=True)
    console.print(render(view))
    return console.export_text()


VIEW = WatchView(
    job_id="j7", state="running", done=4210, total=10_000, ok=4180, failed=30, rate=350.0,
    qps=400, per_host_qps=2, inflight=37, elapsed=12.5,
    hosts=[("a.example", 1200), ("b.example", 800)], errors={"timeout": 20, "connection": 10},
    statuses={"2xx": 4180, "5xx": 10, "none": 20},
    workers=[("w1@box", 0.4, 20), ("w2@box", 1.1, 17)], final=True)


def test_the_view_shows_every_subject() -> None:
    text = text_of(VIEW)
    assert "job j7  running   elapsed 0:00:12" in text
    assert "4,210/10,000" in text and "42.1%" in text
    assert "ETA 0:00:16" in text  # 5,790 left at 350/s
    assert "350.0/s of 400/s target (88%), at most 2/s per host" in text
    assert "ok 4,180   failed 30   in flight 37" in text
    assert "a.example 1,200 · b.example 800" in text
    assert "timeout 20 · connection 10" in text
    assert "2xx 4,180 · 5xx 10 · none 20" in text
    assert "w1@box  seen 0.4 s ago, 20 in flight" in text
    assert "w2@box  seen 1.1 s ago, 17 in flight" in text


def test_an_unlimited_job_and_a_growing_total() -> None:
    view = WatchView(job_id="j", state="running", done=5, total=50, ok=5, failed=0, rate=0.0,
                     final=False)
    text = text_of(view)
    assert "(no global limit)" in text and "5/50+" in text and "ETA -" in text
    assert "hosts   none waiting" in text and "errors  none" in text
    assert "workers" not in text  # an embedded crawl has none


def test_the_plain_line() -> None:
    assert plain(VIEW) == (
        "job j7 running 4210/10000 (42.1%) rate 350.0/400/s eta 0:00:16 ok 4180 failed 30 "
        "inflight 37 errors timeout=20,connection=10 hosts a.example=1200,b.example=800 "
        "workers 2")


def test_from_status_uses_fresh_live_reports_only() -> None:
    now = 1_000_000.0
    live = {
        b"w1": orjson.dumps({"t": now - 1000, "inflight": 7, "hosts": {"a": 3, "b": 1}}),
        b"w2": orjson.dumps({"t": now - 500, "inflight": 2, "hosts": {"a": 2}}),
        b"old": orjson.dumps({"t": now - 60_000, "inflight": 99, "hosts": {"z": 9}}),
        b"bad": b"not json",
    }
    inflight, hosts, by_worker = _live(live, now)
    assert (inflight, hosts, by_worker) == (9, {"a": 5, "b": 1}, {"w1": 7, "w2": 2})
    st = JobStatus(job_id="j", state=JobState.RUNNING, total=100, done=40, ok=39, failed=1,
                   rate_10s=20.0, submitted=True, started=int(now - 10_000),
                   workers={"w1": int(now - 1000), "w2": int(now - 3000)},
                   inflight=inflight, queued_hosts=hosts, worker_inflight=by_worker,
                   spec={"qps": 25.0})
    view = from_status(st, now_ms=now)
    assert view.inflight == 9 and view.hosts == [("a", 5), ("b", 1)] and view.qps == 25
    assert view.workers == [("w1", 1.0, 7), ("w2", 3.0, 2)]
    assert view.elapsed == 10.0 and view.eta == 3.0 and view.final


def test_recent_rate_forgets_old_samples() -> None:
    rate = RecentRate(window=5.0)
    assert rate(0, now=0.0) == 0.0
    assert rate(100, now=1.0) == 100.0
    for t in range(2, 20):
        r = rate(100 + (t - 1) * 10, now=float(t))
    assert abs(r - 10.0) < 1e-9  # the first second's burst is out of the window


def test_an_embedded_crawl_prints_plain_lines_when_not_a_terminal() -> None:
    with HTTPServer("127.0.0.1") as server:
        urls = iter(server.url(f"/delay/50?i={i}") for i in range(60))
        settings = load_settings(allow_private_networks=True, concurrency=4)
        out = io.StringIO()
        progress = Progress("jplain", enabled=True, stream=out, terminal=False,
                            refresh=0.05, plain_every=0.2)
        with progress:
            summary = loops.run(crawl(urls, settings, job_id="jplain",
                                      on_start=progress.attach))
    assert summary.stats.done == 60
    lines = out.getvalue().splitlines()
    assert lines, "a crawl of about 0.75 s prints lines every 0.2 s"
    assert all(line.startswith("job jplain running ") for line in lines)
    assert "\x1b" not in out.getvalue()  # no terminal codes in a log


def test_crawl_draws_the_view_in_a_terminal(tmp_path: Path) -> None:
    """`crawler crawl` with stderr on a pseudo-terminal draws the live view there."""
    with HTTPServer("127.0.0.1") as server:
        src = tmp_path / "urls.txt"
        src.write_text("".join(server.url(f"/delay/100?i={i}") + "\n" for i in range(40)))
        env = {k: v for k, v in os.environ.items() if not k.startswith("CRAWLER_")}
        code, text = run_in_pty(
            [sys.executable, "-m", "crawler", "crawl", str(src), "-o", str(tmp_path / "o.jsonl"),
             "--allow-private-networks", "--concurrency", "4", "--job-id", "jtty"], env)
    assert code == 0, text
    assert "job jtty" in text and "running" in text
    assert "in flight" in text and "hosts" in text and "ETA" in text
    assert "(no global limit)" in text
    assert "fetched 40 URLs" in text  # the summary after the view
