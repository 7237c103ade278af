"""Structured requests (crawler.request): parsing, identity, entries; both engines send them."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from httpserver import HTTPServer

from crawler.engines import FetchConfig, make_engine
from crawler.engines.base import redirected_method
from crawler.request import BadRequest, CrawlRequest, decode, entry_key, parse_line, parse_object
from crawler.urls import MAX_REQUEST_LINE, IntakeStats, InvalidURL, RejectReason, iter_urls

both = pytest.mark.parametrize("mode", ["async", "threads"])


# --- parsing -------------------------------------------------------------------------------


def test_full_line_parsed_and_canonical() -> None:
    req = parse_line('{"url": "HTTP://Example.COM:80/a?b=2&a=1", "method": "post", '
                     '"headers": {"X-Token": "t"}, "json": {"q": [1, 2]}, '
                     '"meta": {"id": 7, "tags": ["x"]}, "priority": 5}')
    assert req == CrawlRequest(
        "http://example.com/a?a=1&b=2", "POST",
        (("X-Token", "t"), ("Content-Type", "application/json")),
        '{"q":[1,2]}', {"id": 7, "tags": ["x"]}, 5)


def test_a_body_makes_post_the_default_and_keeps_its_content_type() -> None:
    req = parse_object({"url": "http://a.example/", "body": "a=1",
                        "headers": {"content-type": "application/x-www-form-urlencoded"}})
    assert (req.method, req.body) == ("POST", "a=1")
    assert req.headers == (("content-type", "application/x-www-form-urlencoded"),)
    # json with its own Content-Type: not added twice
    req = parse_object({"url": "http://a.example/", "json": 1,
                        "headers": {"Content-Type": "application/vnd+json"}})
    assert req.headers == (("Content-Type", "application/vnd+json"),)


@pytest.mark.parametrize(("obj", "message"), [
    ([1], "a JSON line must be an object"),
    ({}, "'url' is missing"),
    ({"url": 3}, "'url' must be a string"),
    ({"url": "http://a/", "body": "x", "json": {}}, "give 'body' or 'json', not both"),
    ({"url": "http://a/", "method": "PUT"}, "'method' must be one of GET, HEAD, POST"),
    ({"url": "http://a/", "method": "GET", "body": "x"}, "a body needs method POST, not GET"),
    ({"url": "http://a/", "body": {"a": 1}}, "'body' must be a string"),
    ({"url": "http://a/", "headers": ["X: y"]}, "'headers' must be an object"),
    ({"url": "http://a/", "headers": {"Bad Name": "y"}}, "is not a valid token"),
    ({"url": "http://a/", "headers": {"Host": "evil"}}, "header 'Host' is set by the crawler"),
    ({"url": "http://a/", "headers": {"X": "line\nbreak"}}, "printable ASCII"),
    ({"url": "http://a/", "priority": 1.5}, "'priority' must be an integer"),
    ({"url": "http://a/", "priority": 101}, "'priority' must be an integer from -100 to 100"),
    ({"url": "http://a/", "priority": True}, "'priority' must be an integer"),
    ({"url": "http://a/", "colour": "red"}, "unknown field 'colour'"),
])
def test_bad_objects_say_why(obj: Any, message: str) -> None:
    with pytest.raises(BadRequest, match=message.replace("(", r"\(")):
        parse_object(obj)


def test_bad_url_in_a_line_has_the_url_reason() -> None:
    with pytest.raises(InvalidURL) as info:
        parse_object({"url": "ftp://a.example/"})
    assert info.value.reason is RejectReason.BAD_SCHEME


# --- identity and entries ----------------------------------------------------------------------


def test_plain_get_is_the_url_itself() -> None:
    req = parse_object({"url": "http://a.example/x"})
    assert req.plain and req.entry == "http://a.example/x" == req.key
    assert decode(req.entry) == req
    # Only headers, meta or priority: a JSON entry, but the same identity as the URL line.
    req = parse_object({"url": "http://a.example/x", "meta": {"k": 1}, "headers": {"A": "b"}})
    assert req.entry.startswith("{") and req.key == "http://a.example/x"
    assert entry_key(req.entry) == "http://a.example/x"


def test_identity_is_method_url_and_body() -> None:
    keys = {parse_object(o).key for o in (
        {"url": "http://a.example/"},
        {"url": "http://a.example/", "method": "HEAD"},
        {"url": "http://a.example/", "body": "a=1"},
        {"url": "http://a.example/", "body": "a=2"},
        {"url": "http://a.example/", "method": "POST"},
    )}
    assert len(keys) == 5
    same = {parse_object(o).key for o in (
        {"url": "http://a.example/", "json": {"a": 1}},
        {"url": "http://a.example/", "json": {"a": 1}, "meta": 1, "priority": 3,
         "headers": {"X": "y"}},
    )}
    assert len(same) == 1


def test_entries_round_trip() -> None:
    req = parse_object({"url": "http://a.example/", "json": {"ü": [1, None]}, "meta": [1, "ü"],
                        "priority": -3, "headers": {"X": "1"}})
    assert decode(req.entry) == req
    assert json.loads(req.entry)["meta"] == [1, "ü"]


# --- intake ------------------------------------------------------------------------------------


def test_mixed_input_with_reasons() -> None:
    text = "\n".join([
        "http://a.example/1",
        '{"url": "http://a.example/2", "meta": {"row": 2}}',
        '{"url": "http://a.example/3", "method": "DELETE"}',
        '{"url": "mailto:x@y"}',
        "{not json",
        '  {"url": "http://a.example/4", "method": "HEAD"}  ',
    ]).encode()
    stats = IntakeStats()
    entries = list(iter_urls(io.BytesIO(text), stats))
    assert [decode(e).url for e in entries] == [
        "http://a.example/1", "http://a.example/2", "http://a.example/4"]
    assert decode(entries[1]).meta == {"row": 2} and decode(entries[2]).method == "HEAD"
    assert stats.by_reason == {RejectReason.BAD_REQUEST: 2, RejectReason.BAD_SCHEME: 1}
    summary = stats.summary()
    assert "line 3: bad_request: 'method' must be one of GET, HEAD, POST, not 'DELETE'" in summary
    assert "line 4: bad_scheme: url: " in summary
    assert "line 5: bad_request: not valid JSON" in summary


def test_json_lines_may_be_long_but_not_endless() -> None:
    body = "x" * (MAX_REQUEST_LINE - 100)
    ok = json.dumps({"url": "http://a.example/", "body": body})
    too = json.dumps({"url": "http://a.example/", "body": body + "y" * 200})
    stats = IntakeStats()
    entries = list(iter_urls(io.BytesIO(f"{ok}\n{too}\nhttp://b.example/\n".encode()), stats))
    assert [decode(e).url for e in entries] == ["http://a.example/", "http://b.example/"]
    assert decode(entries[0]).body == body
    assert stats.by_reason == {RejectReason.TOO_LONG: 1}
    assert "at most 65536 bytes" in stats.summary()


def test_python_objects_are_accepted_like_lines() -> None:
    from crawler.urls import accept_urls

    stats = IntakeStats()
    got = list(accept_urls([{"url": "http://a.example/", "json": {"x": 1}},
                            "http://b.example/", {"url": "http://c.example/", "meta": object()}],
                           stats))
    assert len(got) == 2 and decode(got[0]).body == '{"x":1}'
    assert stats.by_reason == {RejectReason.BAD_REQUEST: 1}
    assert "'meta' is not JSON-serialisable" in stats.summary()


# --- redirects -------------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "method", "after"), [
    (301, "POST", "GET"), (302, "POST", "GET"), (303, "POST", "GET"), (307, "POST", "POST"),
    (308, "POST", "POST"), (303, "HEAD", "HEAD"), (301, "HEAD", "HEAD"), (302, "GET", "GET"),
])
def test_redirected_method(status: int, method: str, after: str) -> None:
    assert redirected_method(status, method) == after


# --- both engines send them ----------------------------------------------------------------------


def cfg(**kw: Any) -> FetchConfig:
    return FetchConfig(**({"concurrency": 4, "timeout": 5.0, "allow_private_networks": True,
                           "keep_body": True, "headers": (("X-Job", "j"),)} | kw))


@both
async def test_post_with_headers_and_body(mode: str, http_server: HTTPServer) -> None:
    req = parse_object({"url": http_server.url("/echo"), "json": {"q": "ü"},
                        "headers": {"X-Job": "mine", "X-Req": "r"}})
    async with make_engine(mode, cfg()) as engine:
        res = await engine.fetch(req.url, method=req.method, headers=req.headers, body=req.body)
    assert res.status == 200 and res.body is not None
    seen = json.loads(res.body)
    assert seen["method"] == "POST" and json.loads(seen["body"]) == {"q": "ü"}
    assert seen["headers"]["X-Job"] == "mine" and seen["headers"]["X-Req"] == "r"
    assert seen["headers"]["Content-Type"] == "application/json"


@both
async def test_body_without_content_type_gets_none(mode: str, http_server: HTTPServer) -> None:
    async with make_engine(mode, cfg()) as engine:
        res = await engine.fetch(http_server.url("/echo"), method="POST", body="a=1")
    seen = json.loads(res.body or b"{}")
    assert seen["body"] == "a=1" and "Content-Type" not in seen["headers"]


@both
async def test_head_reads_no_body(mode: str, http_server: HTTPServer) -> None:
    async with make_engine(mode, cfg()) as engine:
        res = await engine.fetch(http_server.url("/ok"), method="HEAD")
        again = await engine.fetch(http_server.url("/ok"))  # the connection is still usable
    assert (res.status, res.bytes, res.error) == (200, 0, None)
    assert again.status == 200 and again.bytes > 0
    assert [a.method for a in http_server.arrivals()] == ["HEAD", "GET"]


@both
@pytest.mark.parametrize(("status", "method", "body"), [
    (303, "GET", ""), (302, "GET", ""), (307, "POST", "a=1"), (308, "POST", "a=1")])
async def test_post_redirects(mode: str, status: int, method: str, body: str,
                              http_server: HTTPServer) -> None:
    start = http_server.url(f"/redirect-to?url=/echo&status={status}")
    async with make_engine(mode, cfg()) as engine:
        res = await engine.fetch(start, method="POST", body="a=1",
                                 headers=(("Content-Type", "text/plain"),))
    seen = json.loads(res.body or b"{}")
    assert (seen["method"], seen["body"]) == (method, body)
    assert ("Content-Type" in seen["headers"]) == (method == "POST")


# --- the embedded crawl --------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_crawl_of_json_lines_returns_meta_and_method(
    http_server: HTTPServer, tmp_path: Any, fmt: str
) -> None:
    import csv
    import subprocess
    import sys

    src = tmp_path / "in.jsonl"
    src.write_text("\n".join([
        http_server.url("/ok"),
        json.dumps({"url": http_server.url("/echo"), "json": {"a": [1]}, "meta": {"k": "ü"}}),
        json.dumps({"url": http_server.url("/ok"), "method": "HEAD", "meta": [1, 2]}),
        json.dumps({"url": http_server.url("/ok"), "meta": "a GET again: a duplicate"}),
    ]) + "\n")
    out = tmp_path / f"out.{fmt}"
    proc = subprocess.run([sys.executable, "-m", "crawler", "crawl", str(src), "-o", str(out),
                           "--no-progress", "--allow-private-networks"],
                          capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    assert "4 accepted, 0 rejected" in proc.stderr.decode()
    if fmt == "jsonl":
        recs = [json.loads(line) for line in out.read_text().splitlines()]
        got = {(r["method"], r["url"], json.dumps(r["meta"])) for r in recs}
        assert all(r["data"] is None for r in recs)
    else:
        rows = list(csv.DictReader(io.StringIO(out.read_text(encoding="utf-8"))))
        got = {(r["method"], r["url"], json.dumps(json.loads(r["meta"] or "null")))
               for r in rows}
    assert got == {
        ("GET", http_server.url("/ok"), "null"),
        ("POST", http_server.url("/echo"), json.dumps({"k": "ü"})),
        ("HEAD", http_server.url("/ok"), "[1, 2]"),
    }
    assert sorted((a.method, a.path, a.body) for a in http_server.arrivals()) == [
        ("GET", "/ok", b""), ("HEAD", "/ok", b""), ("POST", "/echo", b'{"a":[1]}')]


def test_a_batch_label_names_the_hosts_of_json_requests() -> None:
    from crawler.broker import task_label

    entries = [parse_object({"url": "http://b.example/x", "method": "HEAD"}).entry,
               "http://a.example/", parse_object({"url": "http://b.example/y"}).entry]
    assert task_label("j", 3, "submitted", entries) == (
        "job=j batch=3", "why=submitted urls=3 hosts=b.example,a.example")


def test_crawl_takes_higher_priority_lines_first(http_server: HTTPServer, tmp_path: Any) -> None:
    import subprocess
    import sys

    lines = [http_server.url("/page/0"),
             json.dumps({"url": http_server.url("/page/1"), "priority": 5}),
             json.dumps({"url": http_server.url("/page/2"), "priority": -1}),
             json.dumps({"url": http_server.url("/page/3"), "priority": 5}),
             json.dumps({"url": http_server.url("/page/4"), "priority": 9})]
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(lines) + "\n")
    proc = subprocess.run([sys.executable, "-m", "crawler", "crawl", str(src), "-o",
                           str(tmp_path / "out.jsonl"), "--no-progress", "--concurrency", "1",
                           "--allow-private-networks"], capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    order = [a.path for a in sorted(http_server.arrivals(), key=lambda a: a.at)]
    assert order == ["/page/4", "/page/1", "/page/3", "/page/0", "/page/2"]
