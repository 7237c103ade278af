"""Leases on running batches, against a real Redis: who may run a batch, when it comes back."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from crawler.jobs import JobControl
from crawler.leases import Leases, LeaseTiming

JOB = "job1"
LEASE_MS = 60_000


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    c = aioredis.Redis.from_url(redis_url)
    yield c
    await c.aclose()


async def new_job(client: aioredis.Redis, batches: int = 2) -> JobControl:
    jobs = JobControl(client)
    await jobs.create(JOB, {})
    store = jobs.store(JOB)
    pipe = client.pipeline(transaction=False)
    for n in range(batches):
        urls = [f"http://h/{n}/{i}" for i in range(3)]
        await store.claim(urls)
        jobs.add_batch(pipe, JOB, n, urls)
    await pipe.execute()
    return jobs


async def start(jobs: JobControl, batch_no: int, worker: str, token: str) -> str:
    verdict, _live, _depth = await jobs.batch_start(JOB, batch_no, worker, token=token,
                                                    lease_ms=LEASE_MS)
    return verdict


async def expire(client: aioredis.Redis, batch_no: int) -> None:
    """Make a lease run out now (as if its owner stopped renewing long ago)."""
    await client.zadd(f"crawler:job:{{{JOB}}}:leases", {str(batch_no): 0})


async def test_a_running_batch_is_not_run_twice(client: aioredis.Redis) -> None:
    jobs = await new_job(client)
    assert await jobs.batch_start(JOB, 0, "w1", token="a", lease_ms=LEASE_MS) == ("run", 1, 0)
    # A redelivered or resent message for the same batch, on any worker: refused.
    assert await start(jobs, 0, "w2", "b") == "leased"
    # Another batch is independent.
    assert await jobs.batch_start(JOB, 1, "w2", token="b", lease_ms=LEASE_MS) == ("run", 2, 0)


async def test_an_expired_lease_is_taken_over_and_the_old_owner_is_told(
    client: aioredis.Redis,
) -> None:
    jobs = await new_job(client)
    leases = Leases(client, "crawler", LeaseTiming(60))
    await leases.mark([JOB])
    assert await start(jobs, 0, "w1", "a") == "run"
    assert await leases.reap(JOB) == (False, [])  # live lease: nothing to reap
    await expire(client, 0)
    over, batches = await leases.reap(JOB)
    assert (over, batches) == (False, [0])
    assert await leases.reap(JOB) == (False, [])  # claimed for one resend, not two
    # The resent message is taken by another worker...
    assert await start(jobs, 0, "w2", "b") == "run"
    # ...the old owner's heartbeat learns it lost the batch, and its hand-back changes nothing.
    live, lost = await leases.renew(JOB, "w1", {0: "a"})
    assert lost == [0] and live == 2
    assert await jobs.batch_end(JOB, 0, ["http://h/0/2"], token="a", lease_ms=LEASE_MS) == "lost"
    assert await client.llen(f"crawler:job:{{{JOB}}}:batch:0") == 3
    # The new owner renews and finishes normally.
    assert (await leases.renew(JOB, "w2", {0: "b"}))[1] == []
    assert await jobs.batch_end(JOB, 0, [], token="b", lease_ms=LEASE_MS) == "done"
    assert await start(jobs, 0, "w3", "c") == "gone"


async def test_a_handed_back_batch_is_free_to_take_and_reaped_if_its_message_is_lost(
    client: aioredis.Redis,
) -> None:
    jobs = await new_job(client)
    leases = Leases(client, "crawler", LeaseTiming(60))
    assert await start(jobs, 0, "w1", "a") == "run"
    # Stopped (time limit, shutdown) with two URLs left: handed back, a message is on its way.
    assert await jobs.batch_end(JOB, 0, ["u1", "u2"], token="a",
                                lease_ms=LEASE_MS) == "requeue"
    assert await client.lrange(f"crawler:job:{{{JOB}}}:batch:0", 0, -1) == [b"u1", b"u2"]
    assert await start(jobs, 0, "w2", "b") == "run"
    assert await jobs.batch_end(JOB, 0, ["u2"], token="b", lease_ms=LEASE_MS) == "requeue"
    # That message never arrives (the worker died before sending): the reaper resends.
    await leases.mark([JOB])
    await expire(client, 0)
    assert await leases.reap(JOB) == (False, [0])


async def test_the_reap_list_keeps_a_job_until_it_is_over(client: aioredis.Redis) -> None:
    jobs = await new_job(client, batches=1)
    leases = Leases(client, "crawler", LeaseTiming(60))
    await leases.mark([JOB])
    assert await leases.reap(JOB) == (False, [])  # running, no lease yet: stays listed
    assert await start(jobs, 0, "w1", "a") == "run"
    await jobs.store(JOB).client.hset(f"crawler:job:{{{JOB}}}:counters", "done", 3)
    await jobs.mark_submitted(JOB, rejected=0)  # everything recorded: finishes at batch end
    assert await jobs.batch_end(JOB, 0, [], token="a", lease_ms=LEASE_MS) == "done"
    assert (await jobs.status(JOB)).state == "finished"
    assert await leases.reap(JOB) == (True, [])
    await leases.forget(JOB)
    assert await leases.jobs() == []


async def test_paused_and_cancelled_batches_hold_no_lease(client: aioredis.Redis) -> None:
    jobs = await new_job(client)
    await jobs.control(JOB, "pause")
    assert await start(jobs, 0, "w1", "a") == "paused"
    await jobs.control(JOB, "cancel")
    assert await start(jobs, 1, "w1", "a") == "cancelled"
    assert await client.zcard(f"crawler:job:{{{JOB}}}:leases") == 0


def test_timing_derives_from_the_lease() -> None:
    t = LeaseTiming(20)
    assert (t.lease_ms, t.heartbeat, t.reap_every) == (20_000, 5.0, 5.0)


async def test_a_batch_sent_twice_is_stored_once(client: aioredis.Redis) -> None:
    # The reply of the pipeline storing a batch was lost and the client sent it again.
    jobs = JobControl(client)
    await jobs.create(JOB, {})
    for _ in range(2):
        pipe = client.pipeline(transaction=False)
        jobs.add_batch(pipe, JOB, 0, ["http://h/a", "http://h/b"])
        await pipe.execute()
    assert await client.lrange(f"crawler:job:{{{JOB}}}:batch:0", 0, -1) == [
        b"http://h/a", b"http://h/b"]
    assert (await jobs.status(JOB)).batches == 1
