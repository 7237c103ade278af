"""How long a job's keys live: every key of a job expires `ttl` seconds after its end, and
`purge` deletes them at once.

The keys are found by their shared hash tag (SCAN MATCH `{prefix}:job:{<id>}:*`, every node
of a cluster), so batch lists, intake claims and any key added later are covered without a
list to keep in step. The expiry is an absolute time (the job's `finished` stamp + ttl,
PEXPIREAT), so applying it again changes nothing: it is applied when a job is cancelled or
submitted empty (by the producer), and when the reapers drop a finished or cancelled job that
no batch holds any more (by a worker), after which no script writes to the job. A key written
later keeps the TTL it had (Redis keeps a TTL across HSET, SADD, XADD). README "Redis keys".
"""

from __future__ import annotations

from typing import Any

from crawler.keys import job_key, jobs_index, leased_jobs

UNLINK_CHUNK = 500  # keys per UNLINK (one hash tag: one slot, so one command on a cluster too)


async def job_keys(client: Any, prefix: str, job_id: str) -> list[bytes]:
    """Every key of a job (one SCAN over the keyspace: for ends and purges, not hot paths)."""
    return [k async for k in client.scan_iter(match=job_key(prefix, job_id, "*"), count=1000)]


async def expire_job(client: Any, prefix: str, job_id: str, ttl: float) -> int | None:
    """Make every key of an ended job expire `ttl` s after its end; the expiry time in ms
    (None when the job has not ended or is gone)."""
    state, finished = await client.hmget(job_key(prefix, job_id, "meta"), "state", "finished")
    if state not in (b"finished", b"cancelled") or finished is None:
        return None
    at_ms = int(finished) + int(ttl * 1000)
    pipe = client.pipeline(transaction=False)
    for key in await job_keys(client, prefix, job_id):
        pipe.pexpireat(key, at_ms)
    await pipe.execute()
    return at_ms


async def expire_crawl(client: Any, prefix: str, job_id: str, ttl: float) -> None:
    """The same for an embedded crawl on a shared Redis (it has no job state): its keys
    expire `ttl` s from now, its end."""
    pipe = client.pipeline(transaction=False)
    for key in await job_keys(client, prefix, job_id):
        pipe.pexpire(key, int(ttl * 1000))
    await pipe.execute()


async def purge_job(client: Any, prefix: str, job_id: str) -> int:
    """Delete every key of a job now (and its entries in the job index and the reapers'
    list); the number of keys deleted."""
    keys = await job_keys(client, prefix, job_id)
    deleted = 0
    for i in range(0, len(keys), UNLINK_CHUNK):
        deleted += await client.unlink(*keys[i:i + UNLINK_CHUNK])
    await client.zrem(jobs_index(prefix), job_id)
    await client.srem(leased_jobs(prefix), job_id)
    return deleted
