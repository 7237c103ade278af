"""The results store: exactly one record per URL, matching counters, streaming export."""

from __future__ import annotations

import csv
import io

import orjson
import redis.asyncio as aioredis

from crawler.export import export, format_for_path
from crawler.records import ErrorClass, FetchResult, Record
from crawler.store import PendingRecord, ResultStore, url_digest


def rec(url: str, status: int | None = 200, error: ErrorClass | None = None, n: int = 10):
    res = FetchResult(url=url, final_url=url, status=status, error=error, bytes=n)
    return PendingRecord(Record.from_result(res, attempts=1, job="j1"))


async def test_claim_drops_duplicates(client: aioredis.Redis) -> None:
    store = ResultStore(client, "j1")
    assert await store.claim(["http://a/", "http://b/", "http://a/"]) == ["http://a/", "http://b/"]
    assert await store.claim(["http://b/", "http://c/"]) == ["http://c/"]
    c = await store.counters()
    assert c["total"] == 3 and c["duplicates"] == 2


async def test_write_is_idempotent_and_counts(client: aioredis.Redis) -> None:
    store = ResultStore(client, "j1")
    batch = [
        rec("http://a/"),
        rec("http://b/", status=404),
        rec("http://c/", status=None, error=ErrorClass.TIMEOUT, n=0),
    ]
    assert await store.write(batch) == 3
    # The same batch again (a redelivered task) and a partial overlap add nothing twice.
    assert await store.write(batch) == 0
    assert await store.write([rec("http://a/"), rec("http://d/", status=503)]) == 1
    c = await store.counters()
    assert c["done"] == 4 and c["ok"] == 1 and c["failed"] == 3
    assert c["bytes"] == 30
    assert c["error:timeout"] == 1
    assert c["status:2xx"] == 1 and c["status:4xx"] == 1 and c["status:5xx"] == 1
    assert c["status:none"] == 1
    urls = [r["url"] async for r in store.iter_records()]
    assert urls == ["http://a/", "http://b/", "http://c/", "http://d/"]
    errors = [r["url"] async for r in store.iter_records(errors_only=True)]
    assert errors == ["http://b/", "http://c/", "http://d/"]


async def test_jobs_are_separate(client: aioredis.Redis) -> None:
    await ResultStore(client, "j1").write([rec("http://a/")])
    assert await ResultStore(client, "j2").write([rec("http://a/")]) == 1


async def test_body_is_compressed_and_round_trips(client: aioredis.Redis) -> None:
    store = ResultStore(client, "j1")
    body = b"<html>" + b"x" * 10_000 + b"</html>"
    item = rec("http://a/")
    item.body = body
    await store.write([item])
    assert await store.body("http://a/") == body
    [digest] = await client.hkeys(store.keys["bodies"])
    raw = await client.hget(store.keys["bodies"], digest)
    assert len(raw) < 200  # stored compressed
    [r] = [r async for r in store.iter_records()]
    assert r["body_stored"] is True


async def test_export_pages_through_the_stream(client: aioredis.Redis) -> None:
    store = ResultStore(client, "big")
    n = 2500  # more than two export pages
    for start in range(0, n, 500):
        await store.write([rec(f"http://h/{i}") for i in range(start, start + 500)])
    out = io.BytesIO()
    assert await export(store.iter_records(), out, "jsonl") == n
    lines = out.getvalue().splitlines()
    assert [orjson.loads(x)["url"] for x in lines] == [f"http://h/{i}" for i in range(n)]

    out = io.BytesIO()
    assert await export(store.iter_records(), out, "csv") == n
    rows = list(csv.DictReader(io.StringIO(out.getvalue().decode())))
    assert len(rows) == n and rows[0]["url"] == "http://h/0" and rows[0]["status"] == "200"
    assert not out.closed


def test_format_for_path() -> None:
    assert format_for_path("x.csv", None) == "csv"
    assert format_for_path("x.CSV", "jsonl") == "jsonl"
    assert format_for_path("x.jsonl", None) == "jsonl"
    assert format_for_path(None, None) == "jsonl"


async def test_a_retried_claim_gets_the_same_answer(client: aioredis.Redis) -> None:
    # The reply of a claim was lost (connection cut after Redis ran it): the client retries
    # the same call, which must not turn its new URLs into "seen before" (never fetched).
    store = ResultStore(client, "j1")
    keys = [store.keys["queued"], store.keys["counters"], "crawler:job:{j1}:claim:call1"]
    args = [0, 0, "", 0, 0, 0, *(url_digest(u) for u in ("http://a/", "http://b/"))]
    first = await store._claim_script(keys=keys, args=args)
    again = await store._claim_script(keys=keys, args=args)
    assert first == again == b"11"
    assert (await store.counters())["total"] == 2
    assert await client.ttl("crawler:job:{j1}:claim:call1") > 3000
