"""--extract: the user's function in threads, its data in the record, its failures contained."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import extract_funcs
import pytest
from httpserver import HTTPServer

from crawler.embedded import crawl
from crawler.errors import InputError
from crawler.extract import DATA_MAX, Extractor, Page, check_extract, check_spec
from crawler.settings import Settings

TESTS = Path(__file__).parent
EXAMPLES = TESTS.parent / "examples"


async def run(urls: list[str], **options: Any) -> list[dict[str, Any]]:
    settings = Settings(redis_url=None, allow_private_networks=True, retries=0, **options)
    out = _Sink()
    await crawl(iter(urls), settings, out=out)  # type: ignore[arg-type]
    return [json.loads(line) for line in out.data.splitlines()]


class _Sink:
    def __init__(self) -> None:
        self.data = b""

    def write(self, b: bytes) -> int:
        self.data += b
        return len(b)


def by_url(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["url"]: r for r in records}


async def test_data_from_a_2xx_page_and_none_from_others(http_server: HTTPServer) -> None:
    ok, missing = http_server.url("/ok"), http_server.url("/status/404")
    recs = by_url(await run([ok, missing], extract="extract_funcs:title"))
    assert recs[ok]["data"] == {"title": "ok", "status": 200, "meta": None,
                                "type": "text/html; charset=utf-8"}
    assert recs[ok]["ok"] is True and recs[ok]["error"] is None
    assert recs[missing]["data"] is None and recs[missing]["error"] is None


@pytest.mark.parametrize(("func", "detail"), [
    ("boom", "ValueError: no luck with http://"),
    ("not_a_dict", "returned list, not a dict or None"),
    ("not_json", "returned data that is not JSON-serialisable"),
    ("too_big", f"(at most {DATA_MAX})"),
])
async def test_a_failing_function_is_an_error_on_its_record_only(
    http_server: HTTPServer, func: str, detail: str
) -> None:
    urls = [http_server.url(f"/page/{i}") for i in range(5)]
    recs = await run(urls, extract=f"extract_funcs:{func}")
    assert len(recs) == 5
    for r in recs:
        assert (r["status"], r["ok"], r["error"], r["data"]) == (200, False, "extract_failed",
                                                                 None)
        assert detail in r["error_detail"]


async def test_the_function_runs_off_the_event_loop(http_server: HTTPServer) -> None:
    # Given one page whose extraction blocks its thread until the other 20 have arrived
    extract_funcs.RELEASE.clear()
    urls = [http_server.url("/ok?block=1")] + [http_server.url(f"/page/{i}") for i in range(20)]

    async def release() -> None:
        while len(http_server.arrivals()) < 21:  # arrivals are the server's: no event here
            await asyncio.sleep(0.01)
        extract_funcs.RELEASE.set()

    watcher = asyncio.create_task(release())
    recs = by_url(await run(urls, extract="extract_funcs:blocker", concurrency=4))
    await watcher
    # Then the others were fetched while it waited: the loop never blocked on it
    assert recs[urls[0]]["data"] == {"released": True}
    assert len(recs) == 21


async def test_follow_requests_join_the_job_through_scope_dedupe_and_depth(
    http_server: HTTPServer,
) -> None:
    seeds = [http_server.url("/page/1"), http_server.url("/page/2")]
    recs = await run(seeds, extract="extract_funcs:follow_api", depth=1)
    got = {(r["method"], r["url"].replace(http_server.base_url, ""), json.dumps(r["meta"]))
           for r in recs if "/echo" in r["url"] or "/status" in r["url"]}
    assert {g for g in got if g[0] == "POST"} == {
        ("POST", "/echo?from=1", '{"from": 1}'), ("POST", "/echo?from=2", '{"from": 2}')}
    assert {g[1] for g in got if g[0] == "GET"} == {"/status/201", "/status/200"}
    # /status/200 and /status/201 once each though both pages asked for one; the POST bodies
    posts = sorted(a.body for a in http_server.arrivals() if a.method == "POST")
    assert posts == [b'{"n":1}', b'{"n":2}']
    assert [a.path for a in http_server.arrivals()].count("/status/201") == 1
    # and nothing beyond depth 1 (the depth-1 pages' own links are not followed)
    assert max(r["depth"] for r in recs) == 1


async def test_an_unimportable_function_is_found_before_any_fetch() -> None:
    with pytest.raises(InputError, match=r"cannot import no_such_module .*PYTHONPATH"):
        check_extract("no_such_module:f")
    with pytest.raises(InputError, match="has no function nope"):
        check_extract("extract_funcs:nope")
    with pytest.raises(ValueError, match=r"expected package\.module:function"):
        check_spec("not a spec")


async def test_a_worker_without_the_module_marks_pages_not_dies() -> None:
    ex = Extractor("no_such_module:f")
    try:
        out = await ex.run(Page("http://a/", "http://a/", 200, {}, b""))
    finally:
        ex.close()
    assert out.error is not None and "cannot import no_such_module" in out.error


def test_the_example_reads_title_description_headings_and_follows_next(
    http_server: HTTPServer, tmp_path: Path
) -> None:
    html = (b"<html><head><title> Shoes &amp; boots </title>"
            b'<meta name="Description" content="All  the shoes">'
            b'<link rel="next" href="/ok"></head>'
            b"<body><h1>Shoes</h1><h2>Red <b>ones</b></h2><h3>Blue</h3></body></html>")
    http_server.set_route("/shop", html, content_type="text/html; charset=utf-8")
    src = tmp_path / "in.txt"
    src.write_text(http_server.url("/shop") + "\n")
    out = tmp_path / "out.jsonl"
    env = dict(os.environ, PYTHONPATH=str(EXAMPLES))
    proc = subprocess.run(
        [sys.executable, "-m", "crawler", "crawl", str(src), "-o", str(out), "--no-progress",
         "--allow-private-networks", "--extract", "page_summary:summary", "--depth", "1"],
        capture_output=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr.decode()
    recs = by_url([json.loads(line) for line in out.read_text().splitlines()])
    assert recs[http_server.url("/shop")]["data"] == {
        "title": "Shoes & boots", "description": "All the shoes",
        "headings": [["h1", "Shoes"], ["h2", "Red ones"], ["h3", "Blue"]]}
    assert recs[http_server.url("/ok")]["data"]["title"] == "ok"  # rel=next was followed


def test_crawl_with_a_bad_extract_is_one_line_exit_2(tmp_path: Path) -> None:
    src = tmp_path / "in.txt"
    src.write_text("http://127.0.0.1:9/\n")
    for spec, msg in (("nope:f", "cannot import nope"), ("bad spec", "package.module:function")):
        proc = subprocess.run(
            [sys.executable, "-m", "crawler", "crawl", str(src), "--no-progress",
             "--extract", spec], capture_output=True, timeout=60)
        err = proc.stderr.decode().strip()
        assert proc.returncode == 2 and len(err.splitlines()) == 1 and msg in err, err
