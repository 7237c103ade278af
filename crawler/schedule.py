"""The shared line of work: which batch a worker runs next, by priority, across all jobs.

A broker queue is first in, first out: a job submitted after a big one would wait for all of
it. So a task message is a *ticket*, not an order: a worker holding one takes the first batch
in this line (a sorted set in Redis) and runs that; only when the line is empty does it run
the batch its message names (messages from before this line existed, and stray duplicates).
Every batch put in line gets a message (callers add, then send), and a message takes at most
one batch, so no batch waits without a message to take it.

The rule (sched_add.lua): a batch's place is the time it was put in line minus `aging`
seconds per priority point, its priority being the job's `--priority` plus its input line's
`priority`. Higher priority goes first; a lower one waits at most `aging` seconds per point of
difference beyond its turn in arrival order, so nothing starves. Ties go in arrival order.

Crash safety: taking a batch claims it (sched_pop.lua) until the worker's batch start, which
takes the batch's own lease (crawler/leases.py), releases the claim (`done`). A claim that
runs out (the worker died in between) is put back at its old place by a reaper
(sched_reap.lua), which sends a message for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from crawler.jobs import lua_script
from crawler.keys import job_key, sched_key

CLAIM_MS = 60_000  # a taken batch's claim: ample for a batch start, even through a Redis blip
REAP_MAX = 1000  # claims put back per reaper call


class Schedule:
    """One deployment's line of batches. Async; one per process (the scripts are shared)."""

    def __init__(self, client: Any, prefix: str, aging: float) -> None:
        self.client = client
        self.prefix = prefix
        self.aging_ms = round(aging * 1000)
        self.keys = [sched_key(prefix, n) for n in ("ready", "claimed", "scores")]
        self._add = lua_script(client, "sched_add.lua")
        self._pop = lua_script(client, "sched_pop.lua")
        self._reap = lua_script(client, "sched_reap.lua")

    async def add(self, job_id: str, batches: Sequence[tuple[int, int]]) -> int:
        """Put (batch number, priority) pairs of a job in line; batches in line stay put."""
        if not batches:
            return 0
        args: list[Any] = [self.aging_ms]
        for n, priority in batches:
            args += [f"{job_id}/{n}", priority]
        return int(await self._add(keys=self.keys[:1], args=args))

    async def pop(self) -> tuple[str, int] | None:
        """The first batch in line, claimed for this worker; None when the line is empty."""
        member = await self._pop(keys=self.keys, args=[CLAIM_MS])
        return None if member is None else _parse(member)

    async def done(self, job_id: str, batch_no: int) -> None:
        """The batch started (or was refused): its claim goes, its lease rules from now."""
        member = f"{job_id}/{batch_no}"
        pipe = self.client.pipeline(transaction=True)
        pipe.zrem(self.keys[1], member)
        pipe.hdel(self.keys[2], member)
        await pipe.execute()

    async def reap(self) -> dict[str, list[int]]:
        """Claims that ran out, back in line: by job, for the caller to send messages."""
        out: dict[str, list[int]] = {}
        for member in await self._reap(keys=self.keys, args=[REAP_MAX]):
            job_id, n = _parse(member)
            out.setdefault(job_id, []).append(n)
        return out

    async def line_priorities(self, job_id: str, batch_nos: Sequence[int]) -> list[int]:
        """The input-line priority of each batch (0 unless submit stored one)."""
        if not batch_nos:
            return []
        raw = await self.client.hmget(job_key(self.prefix, job_id, "prio"), list(batch_nos))
        return [int(v) if v is not None else 0 for v in raw]

    async def length(self) -> int:
        return int(await self.client.zcard(self.keys[0]))


def _parse(member: bytes | str) -> tuple[str, int]:
    text = member.decode() if isinstance(member, bytes) else member
    job_id, _, n = text.rpartition("/")
    return job_id, int(n)
