"""The metrics publisher: what runs counted reaches Prometheus exactly once, histogram included."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from redisserver import free_port

from crawler.metrics import CrawlMetrics, MetricsPublisher, MetricsServer
from crawler.work import FETCH_BUCKETS, RunStats


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples
            if not s.name.endswith("_created")}


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return samples(registry).get((name, tuple(sorted(labels.items()))), 0.0)


def test_counts_are_published_once_as_they_grow() -> None:
    registry = CollectorRegistry()
    pub = MetricsPublisher(CrawlMetrics(registry))
    st = RunStats()
    st.ok, st.failed, st.bytes, st.retries = 3, 1, 1200, 2
    st.statuses.update({"2xx": 3, "5xx": 1})
    st.errors["connection"] = 1
    st.deferred_host, st.deferred_global, st.limiter_wait = 4, 1, 0.5
    pub.publish("j1", st)
    pub.publish("j1", st)  # nothing new: nothing added
    assert value(registry, "crawler_pages_total", job="j1", outcome="ok") == 3
    assert value(registry, "crawler_pages_total", job="j1", outcome="failed") == 1
    assert value(registry, "crawler_responses_total", status_class="5xx") == 1
    assert value(registry, "crawler_errors_total", error="connection") == 1
    assert value(registry, "crawler_limiter_defers_total", scope="host") == 4
    assert value(registry, "crawler_limiter_wait_seconds_total") == 0.5
    assert value(registry, "crawler_response_bytes_total") == 1200
    st.ok += 2
    st.statuses["2xx"] += 2
    st.errors["timeout"] += 1
    pub.finish("j1", st)
    pub.batch_ended("done")
    assert value(registry, "crawler_pages_total", job="j1", outcome="ok") == 5
    assert value(registry, "crawler_responses_total", status_class="2xx") == 5
    assert value(registry, "crawler_errors_total", error="timeout") == 1
    assert value(registry, "crawler_batches_total", outcome="done") == 1
    # Two runs of one job add up; a finished run is forgotten (a new RunStats starts at 0).
    other = RunStats()
    other.ok = 7
    pub.publish("j1", other)
    assert value(registry, "crawler_pages_total", job="j1", outcome="ok") == 12


def test_the_histogram_equals_one_observe_per_fetch() -> None:
    durations_ms = [1, 5, 5.0001, 49, 50, 120, 999, 1000, 4000, 61_000, 0]
    registry = CollectorRegistry()
    pub = MetricsPublisher(CrawlMetrics(registry))
    st = RunStats()
    reference = CollectorRegistry()
    h = Histogram("crawler_fetch_duration_seconds", "d", buckets=FETCH_BUCKETS,
                  registry=reference)
    for i, ms in enumerate(durations_ms):
        st.fetched(ms)
        h.observe(ms / 1000)
        if i % 3 == 0:
            pub.publish("j", st)  # published in several steps
    pub.publish("j", st)
    ours = {k: v for k, v in samples(registry).items()
            if k[0].startswith("crawler_fetch_duration_seconds")}
    theirs = samples(reference)
    assert ours.keys() == theirs.keys()
    for key, want in theirs.items():
        assert ours[key] == pytest.approx(want), key
    assert value(registry, "crawler_fetches_total") == len(durations_ms)


def test_a_taken_port_is_an_error_unless_shared(tmp_path: Path) -> None:
    port = free_port()
    first = MetricsServer(port)
    first.start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            assert b"crawler_fetches_total" in resp.read()
        with pytest.raises(OSError):
            MetricsServer(port).start()
    finally:
        first.close()


SHARED = textwrap.dedent("""
    import os, sys, time
    from crawler.metrics import MetricsServer, MetricsPublisher
    from crawler.work import RunStats
    server = MetricsServer(int(sys.argv[1]))
    server.start()
    st = RunStats(); st.ok = int(sys.argv[2]); st.fetched(20.0)
    pub = MetricsPublisher(server.metrics)
    pub.publish("shared", st); pub.gauges(inflight=int(sys.argv[2]), running=1, concurrency=10)
    print("serving" if server.serving else "waiting", flush=True)
    sys.stdin.read()  # until the test closes our stdin
    server.close()
""")


def test_processes_sharing_a_directory_serve_their_sum(tmp_path: Path) -> None:
    """Multi-process mode (prometheus_client's): one port, every process's values summed;
    a process that stops leaves the live gauges."""
    port = free_port()
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    procs = [subprocess.Popen([sys.executable, "-c", SHARED, str(port), str(n)], env=env,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for n in (3, 4)]
    try:
        roles = sorted(p.stdout.readline().strip() for p in procs)  # type: ignore[union-attr]
        assert roles == ["serving", "waiting"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        got = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(text) for s in f.samples}
        assert got[("crawler_pages_total", (("job", "shared"), ("outcome", "ok")))] == 7
        assert got[("crawler_inflight_requests", ())] == 7
        assert got[("crawler_fetch_duration_seconds_count", ())] == 2
    finally:
        for p in procs:
            p.stdin.close()  # type: ignore[union-attr]
            p.wait(10)
            p.stdout.close()  # type: ignore[union-attr]


def exposed_names() -> set[str]:
    """Every sample name the worker's metrics expose (histogram and counter suffixes too)."""
    registry = CollectorRegistry()
    metrics = CrawlMetrics(registry)
    metrics.pages.labels("j", "ok").inc()
    for m in (metrics.responses, metrics.errors, metrics.defers, metrics.batches):
        m.labels("x").inc()
    return {name for name, _ in samples(registry)}


ROOT = Path(__file__).resolve().parent.parent


def test_the_dashboard_and_the_readme_name_real_metrics() -> None:
    names = exposed_names()
    dashboard = (ROOT / "config" / "grafana" / "crawler-dashboard.json").read_text()
    used = set(re.findall(r"\bcrawler_[a-z_]+", dashboard))
    assert used and used <= names, used - names
    readme = (ROOT / "README.md").read_text()
    families = {re.sub(r"_(bucket|count|sum)$", "", n) for n in names}
    missing = {n for n in families if f"`{n}`" not in readme}
    assert not missing, f"metrics not documented in the README: {sorted(missing)}"
