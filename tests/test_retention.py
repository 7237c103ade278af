"""Job key lifetimes (crawler.retention) on fakeredis, a real Redis and a real cluster."""

from __future__ import annotations

import time

import redis.asyncio as aioredis

from crawler.jobs import JobControl
from crawler.keys import jobs_index
from crawler.retention import expire_crawl, expire_job, job_keys, purge_job

P = "crawler"


async def ended_job(client: aioredis.Redis, job: str, state: str = "finished") -> int:
    jobs = JobControl(client, P)
    await jobs.create(job, {})
    finished = int(time.time() * 1000)
    await client.hset(jobs.key(job, "meta"), mapping={"state": state, "finished": finished})
    await client.sadd(jobs.key(job, "seen"), "a")
    await client.xadd(jobs.key(job, "results"), {"r": "{}"})
    await client.rpush(jobs.key(job, "batch:7"), "http://x/")
    await client.set(jobs.key(job, "claim:abc"), "1", ex=3600)
    return finished


async def test_an_ended_jobs_every_key_expires_ttl_after_its_end(
        client: aioredis.Redis) -> None:
    finished = await ended_job(client, "j1")
    await client.sadd("crawler:job:{other}:seen", "x")  # another job's keys are not touched
    at = await expire_job(client, P, "j1", ttl=3600)
    assert at == finished + 3_600_000
    keys = await job_keys(client, P, "j1")
    assert len(keys) == 5
    for key in keys:
        assert 3_500_000 < await client.pttl(key) <= 3_600_000
    assert await client.pttl("crawler:job:{other}:seen") == -1
    assert await expire_job(client, P, "j1", ttl=3600) == at  # again: the same expiry


async def test_a_running_job_gets_no_expiry(client: aioredis.Redis) -> None:
    jobs = JobControl(client, P)
    await jobs.create("j2", {})
    assert await expire_job(client, P, "j2", ttl=1) is None
    assert await client.pttl(jobs.key("j2", "meta")) == -1


async def test_purge_deletes_every_key_and_the_index_entry(client: aioredis.Redis) -> None:
    await ended_job(client, "j3", state="cancelled")
    assert await purge_job(client, P, "j3") == 5
    assert await job_keys(client, P, "j3") == []
    assert await client.zscore(jobs_index(P), "j3") is None


async def test_an_embedded_crawls_keys_expire_from_now(client: aioredis.Redis) -> None:
    await client.sadd("crawler:job:{e1}:seen", "a")
    await expire_crawl(client, P, "e1", ttl=60)
    assert 0 < await client.pttl("crawler:job:{e1}:seen") <= 60_000


async def test_a_late_live_report_does_not_outlive_the_jobs_expiry(
        client: aioredis.Redis) -> None:
    jobs = JobControl(client, P)
    await jobs.create("j4", {})
    await jobs.report_live("j4", "w1", inflight=3, hosts={})
    live = jobs.key("j4", "live")
    assert 0 < await client.pttl(live) <= 60_000  # a running job's report: 60 s
    await client.hset(jobs.key("j4", "meta"), mapping={
        "state": "finished", "finished": int(time.time() * 1000)})
    await expire_job(client, P, "j4", ttl=5)
    await jobs.report_live("j4", "w1", inflight=0, hosts={})  # the batch's last report
    assert 0 < await client.pttl(live) <= 5_000
