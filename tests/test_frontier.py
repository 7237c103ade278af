"""The frontier's scripts and policy: claims with a cap and a batch, link levels, the barrier.

Against fakeredis and a real redis-server (the same Lua must hold on both).
"""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from crawler.frontier import LinkPolicy, QueueFrontier
from crawler.jobs import LINK_BATCH_BASE, JobControl
from crawler.keys import job_key
from crawler.options import CrawlOptions
from crawler.records import FetchResult, Record
from crawler.store import BatchTarget, PendingRecord, ResultStore

JOB = "jf"
PENDING_MS = 300_000


def key(name: str) -> str:
    return job_key("crawler", JOB, name)


def target(n: int) -> BatchTarget:
    return BatchTarget(n, key(f"batch:{n}"), key("leases"), key("owners"), key("depths"),
                       PENDING_MS)


def page(url: str, depth: int) -> PendingRecord:
    res = FetchResult(url=url, final_url=url, status=200, bytes=1)
    return PendingRecord(Record.from_result(res, attempts=1, depth=depth, job=JOB))


async def test_claim_caps_the_job_at_max_pages(client: aioredis.Redis) -> None:
    store = ResultStore(client, JOB)
    assert await store.claim(["http://a/1", "http://a/2"], cap=3) == ["http://a/1", "http://a/2"]
    # One more fits; the rest are over the cap; a repeat is a duplicate, not over the cap
    assert await store.claim(["http://a/1", "http://a/3", "http://a/4", "http://a/5"],
                             cap=3) == ["http://a/3"]
    c = await store.counters()
    assert c["total"] == 3 and c["over_limit"] == 2 and c["duplicates"] == 1
    assert store.over_limit == 2


async def test_claim_into_a_batch_queues_it_with_a_pending_lease(client: aioredis.Redis
                                                                  ) -> None:
    store = ResultStore(client, JOB)
    await store.claim(["http://a/0"])
    n = LINK_BATCH_BASE + 1
    fresh = await store.claim(["http://a/0", "http://a/1", "http://a/2", "http://a/1"], depth=2,
                              batch=target(n))
    assert fresh == ["http://a/1", "http://a/2"]
    assert await client.lrange(key(f"batch:{n}"), 0, -1) == [b"http://a/1", b"http://a/2"]
    assert await client.hget(key("owners"), str(n)) == b""  # handed over: anyone may run it
    expiry = await client.zscore(key("leases"), str(n))
    now_ms = (await client.time())[0] * 1000
    assert expiry is not None and PENDING_MS - 5_000 < expiry - now_ms <= PENDING_MS + 1_000
    assert await client.hget(key("depths"), str(n)) == b"2"
    c = await store.counters()
    assert c["total"] == 3 and c["lvl:a:0"] == 1 and c["lvl:a:2"] == 2
    assert c["link_duplicates"] == 2  # a/0 seen before, a/1 twice in the call


async def test_a_claim_with_nothing_new_queues_no_batch(client: aioredis.Redis) -> None:
    store = ResultStore(client, JOB)
    await store.claim(["http://a/0"])
    n = LINK_BATCH_BASE + 2
    assert await store.claim(["http://a/0"], depth=1, batch=target(n)) == []
    assert not await client.exists(key(f"batch:{n}"))
    assert await client.zscore(key("leases"), str(n)) is None


async def test_a_write_says_when_it_completes_a_level(client: aioredis.Redis) -> None:
    store = ResultStore(client, JOB)
    await store.claim(["http://a/1", "http://a/2"], depth=1)
    assert await store.write([page("http://a/1", 1)]) == 1
    assert not store.level_completed
    assert await store.write([page("http://a/2", 1)]) == 1
    assert store.level_completed
    # A duplicate write completes nothing and counts nothing
    assert await store.write([page("http://a/2", 1)]) == 0
    assert not store.level_completed


async def test_the_barrier_holds_a_deeper_batch_until_its_levels_are_done(
    client: aioredis.Redis,
) -> None:
    # Given a job whose seed (depth 0) is recorded and one depth-1 URL is not
    jobs = JobControl(client)
    await jobs.create(JOB, {})
    store = jobs.store(JOB)
    await store.claim(["http://a/"])
    await client.hset(key("meta"), "submitted", 1)
    await store.write([page("http://a/", 0)])
    await store.claim(["http://a/x", "http://a/y"], depth=1, batch=target(LINK_BATCH_BASE))
    deep = LINK_BATCH_BASE + 1
    await store.claim(["http://a/x/z"], depth=2, batch=target(deep))

    async def start(n: int) -> str:
        verdict, _live, _depth = await jobs.batch_start(
            JOB, n, "w", token=f"t{n}", lease_ms=20_000, barrier=True)
        return verdict

    # When a worker takes the depth-2 batch: it is held (level 1 still has URLs to fetch)
    assert await start(deep) == "held"
    assert await client.smembers(key("held")) == {str(deep).encode()}
    assert await client.zscore(key("leases"), str(deep)) is None  # no reaper resends it
    # The depth-1 batch runs; a release before its level is done lets the held one in again
    assert await start(LINK_BATCH_BASE) == "run"
    assert await jobs.release_held(JOB, lease_ms=PENDING_MS) == [deep]
    assert await start(deep) == "held"
    # Once level 1 is recorded, the released batch runs
    await store.write([page("http://a/x", 1), page("http://a/y", 1)])
    assert store.level_completed
    assert await jobs.release_held(JOB, lease_ms=PENDING_MS) == [deep]
    assert await client.hget(key("owners"), str(deep)) == b""
    assert await start(deep) == "run"
    assert await jobs.release_held(JOB, lease_ms=PENDING_MS) == []


async def test_no_barrier_before_the_job_is_fully_submitted(client: aioredis.Redis) -> None:
    jobs = JobControl(client)
    await jobs.create(JOB, {})
    store = jobs.store(JOB)
    await store.claim(["http://a/"])
    await store.write([page("http://a/", 0)])
    await store.claim(["http://a/x"], depth=1, batch=target(LINK_BATCH_BASE))
    verdict, _live, depth = await jobs.batch_start(
        JOB, LINK_BATCH_BASE, "w", token="t", lease_ms=20_000, barrier=True)
    assert (verdict, depth) == ("held", 1)  # more seeds may still come
    await jobs.mark_submitted(JOB, rejected=0)
    assert await jobs.release_held(JOB, lease_ms=PENDING_MS) == [LINK_BATCH_BASE]
    verdict, _live, _depth = await jobs.batch_start(
        JOB, LINK_BATCH_BASE, "w", token="t", lease_ms=20_000, barrier=True)
    assert verdict == "run"
    # Without a depth limit there is no barrier at all
    await store.claim(["http://a/x/y"], depth=2, batch=target(LINK_BATCH_BASE + 1))
    verdict, _live, _depth = await jobs.batch_start(
        JOB, LINK_BATCH_BASE + 1, "w", token="u", lease_ms=20_000, barrier=False)
    assert verdict == "run"


@pytest.mark.parametrize(("scope", "kept"), [
    ("host", ["http://a.example.com/2"]),
    ("domain", ["http://a.example.com/2", "http://b.example.com/"]),
    ("any", ["http://a.example.com/2", "http://b.example.com/", "http://other.org/"]),
])
async def test_the_policy_keeps_links_in_the_seeds_scope(
    client: aioredis.Redis, scope: str, kept: list[str]
) -> None:
    options = CrawlOptions(scope=scope)  # type: ignore[arg-type]
    policy = LinkPolicy(client, "crawler", JOB, options)
    await policy.add_seeds(["http://a.example.com/"])
    links = ["http://a.example.com/2", "http://b.example.com/", "http://other.org/"]
    assert await policy.keep(links) == kept
    # Another worker (a fresh policy) judges alike, from the job's scope set in Redis
    assert await LinkPolicy(client, "crawler", JOB, options).keep(links) == kept


async def test_the_policy_applies_allow_and_deny(client: aioredis.Redis) -> None:
    options = CrawlOptions(scope="any", allow=[r"/docs/", r"\.pdf$"], deny=[r"/docs/old/"])
    policy = LinkPolicy(client, "crawler", JOB, options)
    links = ["http://a/docs/x", "http://a/docs/old/y", "http://a/f.pdf", "http://a/blog/"]
    assert await policy.keep(links) == ["http://a/docs/x", "http://a/f.pdf"]


async def test_a_queue_frontier_sends_one_batch_per_depth_with_new_links(
    client: aioredis.Redis,
) -> None:
    jobs = JobControl(client)
    await jobs.create(JOB, {})
    store = jobs.store(JOB)
    options = CrawlOptions(depth=-1)
    policy = LinkPolicy(client, "crawler", JOB, options)
    await policy.add_seeds(["http://a/"])
    await store.claim(["http://a/"])
    sent: list[int] = []
    labels: list[tuple[str, list[str] | None]] = []

    async def send(batches: list[int], why: str, urls: list[str] | None) -> None:
        sent.extend(batches)
        labels.append((why, urls))

    async def release() -> list[int]:
        return []

    frontier = QueueFrontier(store, policy, options, new_batch=lambda: jobs.new_link_batch(JOB),
                             key=key,
                             pending_lease_ms=PENDING_MS, send=send, release=release)
    # Links of two pages at depth 0 and one at depth 1; one link off scope, one repeated
    assert await frontier.add([(0, ["http://a/1", "http://b/"]), (0, ["http://a/1", "http://a/2"]),
                               (1, ["http://a/3"])]) == []
    assert len(sent) == 2 and all(n >= LINK_BATCH_BASE for n in sent)
    assert await jobs.batch_urls(JOB, sent[0]) == ["http://a/1", "http://a/2"]
    assert await jobs.batch_urls(JOB, sent[1]) == ["http://a/3"]
    assert labels == [("links", ["http://a/1", "http://a/2"]), ("links", ["http://a/3"])]
    # Nothing new: no batch
    assert await frontier.add([(0, ["http://a/1"])]) == []
    assert len(sent) == 2


async def test_delayed_batches_run_when_due(client: aioredis.Redis) -> None:
    jobs = JobControl(client)
    await jobs.create(JOB, {})
    soon, later = await jobs.new_link_batch(JOB), await jobs.new_link_batch(JOB)
    assert later == soon + 1 >= LINK_BATCH_BASE
    await jobs.delay_batch(JOB, soon, ["http://a/1", "http://a/2"], 1, 0.0)
    await jobs.delay_batch(JOB, later, ["http://a/3"], 1, 3600.0)
    assert await jobs.batch_urls(JOB, soon) == ["http://a/1", "http://a/2"]
    assert await client.hget(key("depths"), str(later)) == b"1"
    # Only the due one is promoted, with a pending lease so a reaper covers a lost message
    assert await jobs.promote_delayed(JOB, lease_ms=PENDING_MS) == [soon]
    assert await client.hget(key("owners"), str(soon)) == b""
    assert await jobs.promote_delayed(JOB, lease_ms=PENDING_MS) == []
    assert await client.zcard(key("delayed")) == 1
