"""`crawler crawl` as a user runs it: a real process, stdin or a file, a local server."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
import redis
from httpserver import HTTPServer

MODES = ["async", "threads"]


def run(args: list[str], *, stdin: bytes | None = None, env: dict[str, str] | None = None,
        cwd: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("CRAWLER_")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "crawler", *args], input=stdin, capture_output=True,
        env=full_env, cwd=cwd, timeout=120,
    )


def records(data: bytes) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for line in data.splitlines():
        rec = orjson.loads(line)
        assert rec["url"] not in out
        out[rec["url"]] = rec
    return out


@pytest.mark.parametrize("mode", MODES)
def test_crawl_stdin_with_rejected_lines_and_duplicates(
    mode: str, http_server: HTTPServer, tmp_path: Path
) -> None:
    ok, missing = http_server.url("/page/1"), http_server.url("/status/404")
    lines = [
        b"# a comment",
        b"",
        ok.encode(),
        ok.encode() + b"#frag",  # the same URL in another spelling
        missing.encode(),
        b"ftp://example.org/file",
        b"not a url at all",
        b"http://\xff\xfe.example/",  # not UTF-8
        b"\x00\x01binary\x02",
    ]
    out = tmp_path / "out.jsonl"
    proc = run(
        ["crawl", "-", "-o", str(out), "--mode", mode, "--allow-private-networks",
         "--no-progress"],
        stdin=b"\n".join(lines) + b"\n", cwd=tmp_path,
    )
    err = proc.stderr.decode()
    assert proc.returncode == 0, err
    recs = records(out.read_bytes())
    assert set(recs) == {ok, missing}  # the fragment spelling is the same URL
    assert recs[ok]["status"] == 200 and recs[ok]["ok"] is True
    assert recs[missing] | {"status": 404, "ok": False, "error": None} == recs[missing]
    assert "4 rejected" in err and "1 duplicate" in err
    assert "bad_scheme" in err and "not_utf8" in err
    assert "fetched 2 URLs" in err
    assert len(http_server.arrivals()) == 2  # rejected lines were never crawled


def test_crawl_file_to_csv(http_server: HTTPServer, tmp_path: Path) -> None:
    src = tmp_path / "urls.txt"
    src.write_text("".join(http_server.url(f"/page/{i}") + "\n" for i in range(20)))
    out = tmp_path / "out.csv"
    proc = run(["crawl", str(src), "-o", str(out), "--allow-private-networks", "--no-progress"],
               cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert len(rows) == 20 and {r["status"] for r in rows} == {"200"}


def test_crawl_to_stdout_by_default(http_server: HTTPServer, tmp_path: Path) -> None:
    proc = run(["crawl", "-", "--allow-private-networks"],
               stdin=http_server.url("/ok").encode(), cwd=tmp_path)
    assert proc.returncode == 0
    [rec] = records(proc.stdout).values()
    assert rec["status"] == 200 and rec["content_type"] == "text/html"


def test_ssrf_guard_is_on_by_default(http_server: HTTPServer, tmp_path: Path) -> None:
    proc = run(["crawl", "-"], stdin=http_server.url("/ok").encode(), cwd=tmp_path)
    assert proc.returncode == 0
    [rec] = records(proc.stdout).values()
    assert rec["error"] == "blocked_address"
    assert "--allow-private-networks" in rec["error_detail"]
    assert http_server.arrivals() == []


def test_shared_redis_keeps_results(http_server: HTTPServer, redis_url: str,
                                    tmp_path: Path) -> None:
    proc = run(
        ["crawl", "-", "--job-id", "jobA", "--allow-private-networks", "--qps", "50"],
        stdin=http_server.url("/ok").encode(), env={"CRAWLER_REDIS_URL": redis_url},
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    client = redis.Redis.from_url(redis_url)
    assert client.xlen("crawler:job:{jobA}:results") == 1
    assert client.hget("crawler:job:{jobA}:counters", "ok") == b"1"
    assert client.exists("crawler:{rl}:g:global")  # the global limiter lives in that Redis
    client.close()


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        pytest.param(["crawl", "-", "--qps", "-1"], {}, "invalid setting qps", id="neg-qps"),
        pytest.param(["crawl", "-", "--qps", "x"], {}, "invalid float value", id="qps-not-number"),
        pytest.param(["crawl", "-", "--mode", "fibers"], {}, "invalid choice", id="bad-mode"),
        pytest.param(["crawl", "missing.txt"], {}, "missing.txt", id="missing-file"),
        pytest.param(["crawl", "-", "--header", "nocolon"], {}, "Name: value", id="bad-header"),
        pytest.param(["frobnicate"], {}, "invalid choice", id="bad-command"),
        pytest.param(["crawl", "-"], {"CRAWLER_REDIS_URL": "redis://:pw@127.0.0.1:1/0"},
                     "cannot reach Redis at redis://:***@127.0.0.1:1/0", id="no-redis"),
        pytest.param(["submit", "-"], {"CRAWLER_REDIS_URL": "redis+cluster://:pw@127.0.0.1:1",
                                       "CRAWLER_BROKER_URL": "redis://127.0.0.1:1/0"},
                     "cannot reach Redis at redis+cluster://:***@127.0.0.1:1", id="no-cluster"),
        pytest.param(["worker"], {"CRAWLER_REDIS_URL": "redis+cluster://127.0.0.1:1"},
                     "a Redis Cluster cannot be the Celery broker", id="cluster-as-broker"),
        pytest.param(["status", "x"], {"CRAWLER_BROKER_QUEUE_TYPE": "quorum"},
                     "quorum queues need a RabbitMQ broker", id="quorum-on-redis"),
        pytest.param(["crawl", "-"], {"CRAWLER_CONCURRENCY": "0"}, "invalid setting concurrency",
                     id="bad-env"),
        pytest.param(["crawl", "-", "--config", "nope.toml"], {}, "config file not found",
                     id="missing-config"),
    ],
)
def test_user_mistakes_are_one_line_exit_2(
    args: list[str], env: dict[str, str], expected: str, tmp_path: Path
) -> None:
    proc = run(args, stdin=b"http://127.0.0.1:9/\n", env=env, cwd=tmp_path)
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    assert expected in err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err and "pw@" not in err


def test_only_rejected_input_is_not_an_error(tmp_path: Path) -> None:
    proc = run(["crawl", "-"], stdin=b"ftp://x/\n\xff\n", cwd=tmp_path)
    assert proc.returncode == 0
    assert proc.stdout == b""
    assert "2 rejected" in proc.stderr.decode()
