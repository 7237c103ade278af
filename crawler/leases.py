"""Leases on running batches: how a killed worker's batch comes back within seconds.

With the Redis broker an unacknowledged Celery message returns only after the transport's
visibility timeout, and a short timeout would re-deliver batches that are still running. So
recovery does not rest on the broker. A worker that starts a batch takes a lease (an expiry in
Redis time, and an owner token) in the same script that says 'run'; while the batch runs, the
worker's heartbeat extends the lease every `lease/4` seconds. Every worker also reaps: a lease
that ran out belongs to a worker that died (or froze, or lost Redis for a whole lease), so its
batch is sent again. The new run fetches only the URLs without a record, and records are
written once per URL whatever happens (`store_records.lua`), so a batch that runs twice costs
fetches, never a second record. A worker that comes back after its lease was reaped learns it
from its next heartbeat and stops that run.

Timeline of a `kill -9` with the default lease of 20 s: the lease runs out at most 20 s after
the last heartbeat, the next reap pass (every lease/4 = 5 s) sends the batch again, a free
worker takes it: the URLs are fetching again within about 25 s.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from crawler.jobs import lua_script
from crawler.keys import job_key, leased_jobs


@dataclass(frozen=True)
class LeaseTiming:
    """The lease and the two periods derived from it."""

    lease: float = 20.0  # s a lease lasts without renewal

    @property
    def lease_ms(self) -> int:
        return int(self.lease * 1000)

    @property
    def heartbeat(self) -> float:
        """Seconds between renewals: three may fail before the lease runs out."""
        return self.lease / 4

    @property
    def reap_every(self) -> float:
        return self.lease / 4

    @property
    def pending_ms(self) -> int:
        """The lease of a batch whose message is on the queue (found links, a reaped or
        released batch): long enough that a backlogged queue is not flooded with resends,
        short enough that a message lost with its sender comes back within minutes."""
        return max(15 * self.lease_ms, 300_000)

    @property
    def recent_ms(self) -> int:
        """A worker seen this recently counts as alive (for the fallback limiter's share)."""
        return 3 * self.lease_ms


class Leases:
    """The heartbeat and reaper operations; one script call per job each."""

    def __init__(self, client: Any, prefix: str, timing: LeaseTiming) -> None:
        self.client = client
        self.prefix = prefix
        self.timing = timing
        self._renew = lua_script(client, "lease_renew.lua")
        self._reap = lua_script(client, "lease_reap.lua")

    def _key(self, job_id: str, name: str) -> str:
        return job_key(self.prefix, job_id, name)

    async def renew(
        self, job_id: str, worker: str, owned: dict[int, str]
    ) -> tuple[int, list[int]]:
        """Extend this worker's leases of `job_id` ({batch: token}); returns (workers seen
        recently, batches whose lease was reaped)."""
        args: list[Any] = [self.timing.lease_ms, worker, self.timing.recent_ms]
        for batch_no, token in owned.items():
            args += [batch_no, token]
        keys = [self._key(job_id, n) for n in ("leases", "owners", "workers")]
        reply = await self._renew(keys=keys, args=args)
        return int(reply[0]), [int(n) for n in reply[1:]]

    async def reap(self, job_id: str) -> tuple[bool, list[int]]:
        """Claim the batches of `job_id` whose lease ran out; returns (the job is over and
        holds no lease, batches to send again)."""
        keys = [self._key(job_id, n) for n in ("leases", "owners", "meta")]
        reply = await self._reap(keys=keys, args=[self.timing.pending_ms])
        return reply[0] == 1, [int(n) for n in reply[1:]]

    async def mark(self, job_ids: list[str]) -> None:
        """Put jobs on the reapers' list (before a batch runs, and at every heartbeat)."""
        if job_ids:
            await self.client.sadd(leased_jobs(self.prefix), *job_ids)

    async def jobs(self) -> list[str]:
        return [j.decode() for j in await self.client.smembers(leased_jobs(self.prefix))]

    async def forget(self, job_id: str) -> None:
        await self.client.srem(leased_jobs(self.prefix), job_id)
