"""Jobs: identity, stored spec, batches and states, shared by the CLI, the API and workers.

States: queued -> running -> finished, with paused <-> running/queued and cancelled at any
point before finished. Every transition that races with workers is one Lua script
(`lua/job_*.lua`), so pause/resume/cancel never lose or strand a batch.

Keys (besides the results store's, see `crawler.store`):

    {prefix}:jobs                 sorted set: job id by creation time (ms)
    {prefix}:job:{id}:meta        hash: state, spec (JSON), created, started, finished,
                                  submitted (1 when every batch is enqueued), batches
    {prefix}:job:{id}:batch:<n>   list: the URLs of batch n, deleted when it is done
    {prefix}:job:{id}:parked      set: batch numbers held while the job is paused
    {prefix}:job:{id}:workers     hash: worker name -> last seen (ms)
    {prefix}:job:{id}:leases      sorted set: running batch -> lease expiry (ms), see leases.py
    {prefix}:job:{id}:owners      hash: running batch -> owner token ('' = handed back)
    {prefix}:job:{id}:depths      hash: batch of found links -> their link depth
    {prefix}:job:{id}:held        set: batches waiting at the level barrier (frontier.py)
    {prefix}:job:{id}:delayed     sorted set: batches of deferred hosts -> due time (ms)
    {prefix}:job:{id}:scope       set: the seeds' hosts or registered domains (frontier.py)
    {prefix}:job:{id}:robots      hash: origin -> robots.txt answer (robots.py)
    {prefix}:job:{id}:live        hash: worker -> its report (JSON: time, in flight, queued
                                  URLs by host), written once a second; gone LIVE_TTL s after
                                  the last report
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from enum import StrEnum
from importlib import resources
from typing import Any

import orjson

from crawler.errors import InputError, JobNotFound
from crawler.keys import job_key, jobs_index
from crawler.options import CrawlOptions
from crawler.store import ResultStore, fields_from_counters

LINK_BATCH_BASE = 1 << 40  # numbers of batches workers make: never those of submitted batches
_ALPHABET = "0123456789abcdefghijkmnpqrstvwxyz"  # no l/o/u: readable aloud, no look-alikes
JOB_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
LIVE_FRESH_MS = 5_000  # a worker's live report counts this long (workers report every second)
LIVE_TTL_MS = 60_000  # the live hash goes this long after its last report
LIVE_HOSTS = 10  # hosts a worker reports, by URLs queued


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    PAUSED = "paused"
    CANCELLED = "cancelled"
    FINISHED = "finished"


TERMINAL = frozenset({JobState.FINISHED, JobState.CANCELLED})


def new_job_id() -> str:
    """A short printable id, unique across machines: milliseconds, then 30 random bits."""
    n = (int(time.time() * 1000) << 30) | int.from_bytes(os.urandom(4), "big") >> 2
    out = []
    while n:
        n, r = divmod(n, len(_ALPHABET))
        out.append(_ALPHABET[r])
    return "".join(reversed(out))


def check_job_id(job_id: str) -> str:
    if not JOB_ID_RE.fullmatch(job_id):  # `$` alone lets a trailing newline through
        raise InputError(f"invalid job id {job_id!r}: use 1-64 letters, digits, '-' or '_'")
    return job_id


def lua_script(client: Any, name: str) -> Any:
    """A packaged `crawler/lua/<name>` registered on `client` (EVALSHA, reloaded on NOSCRIPT)."""
    return client.register_script(resources.files("crawler").joinpath(f"lua/{name}").read_text())


@dataclass
class JobStatus:
    """Everything `crawler status` shows; `to_dict()` is its --json form."""

    job_id: str
    state: JobState
    total: int = 0
    done: int = 0
    ok: int = 0
    failed: int = 0
    cancelled: int = 0
    rejected: int = 0
    duplicates: int = 0
    link_duplicates: int = 0  # links found again (crawls)
    over_limit: int = 0  # URLs dropped beyond max_pages
    depth: int = 0  # the job's link depth: 0 = its input only, -1 = any
    bytes: int = 0
    rate_10s: float = 0.0
    submitted: bool = False
    batches: int = 0
    created: int | None = None  # epoch ms
    started: int | None = None
    finished: int | None = None
    errors: dict[str, int] = field(default_factory=dict)
    statuses: dict[str, int] = field(default_factory=dict)
    workers: dict[str, int] = field(default_factory=dict)  # name -> last seen (epoch ms)
    # From the workers' live reports of the last LIVE_FRESH_MS:
    inflight: int = 0  # requests in flight, summed
    queued_hosts: dict[str, int] = field(default_factory=dict)  # host -> URLs held by workers
    worker_inflight: dict[str, int] = field(default_factory=dict)  # worker -> in flight
    spec: dict[str, Any] = field(default_factory=dict)

    @property
    def pending(self) -> int:
        return max(self.total - self.done - self.cancelled, 0)

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "spec"}
        d["state"] = str(self.state)
        d["pending"] = self.pending
        return d


def _rate_window(started_ms: int | None) -> int:
    """Whole seconds the recent rate is taken over: 10, or fewer in a job's first 10 s (a
    10-s average would count the seconds before it started as idle)."""
    if started_ms is None:
        return 10
    return max(1, min(10, int(time.time() - started_ms / 1000)))


def _live(raw: dict[bytes, bytes], now_ms: float
          ) -> tuple[int, dict[str, int], dict[str, int]]:
    """(in flight, queued URLs by host, in flight by worker) from the fresh live reports."""
    hosts: dict[str, int] = {}
    by_worker: dict[str, int] = {}
    for name, blob in raw.items():
        try:
            report = orjson.loads(blob)
            if now_ms - float(report["t"]) > LIVE_FRESH_MS:
                continue
            by_worker[name.decode()] = int(report["inflight"])
            for host, n in report["hosts"].items():
                hosts[host] = hosts.get(host, 0) + int(n)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
            continue  # a report this version cannot read is no reason to fail a status
    return sum(by_worker.values()), hosts, by_worker


class JobControl:
    """Job state in Redis. Async: the CLI, the API facade and the workers all run a loop."""

    def __init__(self, client: Any, prefix: str = "crawler") -> None:
        self.client = client
        self.prefix = prefix
        self._start = lua_script(client, "job_batch_start.lua")
        self._end = lua_script(client, "job_batch_end.lua")
        self._control = lua_script(client, "job_control.lua")
        self._release = lua_script(client, "release_held.lua")
        self._delay = lua_script(client, "delay_batch.lua")
        self._promote = lua_script(client, "promote_delayed.lua")
        self._live = lua_script(client, "job_live.lua")

    def key(self, job_id: str, name: str) -> str:
        return job_key(self.prefix, job_id, name)

    def store(self, job_id: str, options: CrawlOptions | None = None) -> ResultStore:
        """The job's results store; claiming URLs needs the job's `options` (its dedupe)."""
        bloom = options.bloom_params() if options is not None else None
        return ResultStore(self.client, job_id, prefix=self.prefix, bloom=bloom)

    # --- producer side -------------------------------------------------------------------

    async def create(self, job_id: str, spec: dict[str, Any]) -> None:
        """Register a new job in state `queued`; an existing id is refused."""
        now_ms = int(time.time() * 1000)
        meta = self.key(job_id, "meta")
        if not await self.client.hsetnx(meta, "state", str(JobState.QUEUED)):
            raise InputError(f"job {job_id} already exists")
        await self.client.hset(meta, mapping={
            "spec": orjson.dumps(spec), "created": now_ms, "submitted": 0, "batches": 0})
        await self.client.zadd(jobs_index(self.prefix), {job_id: now_ms})

    def add_batch(self, pipe: Any, job_id: str, batch_no: int, urls: list[str], *,
                  priority: int = 0) -> None:
        """Queue the commands storing one batch on `pipe` (the caller sends many at once).

        Safe to send twice (a retry after a lost reply): the list is written whole and the
        count set, not incremented. No worker has the batch yet: its message goes after.
        `priority`: its input lines' own priority, kept for when it is sent again."""
        key = self.key(job_id, f"batch:{batch_no}")
        pipe.delete(key)
        pipe.rpush(key, *urls)
        pipe.hset(self.key(job_id, "meta"), "batches", batch_no + 1)
        if priority:
            pipe.hset(self.key(job_id, "prio"), batch_no, priority)

    async def mark_submitted(self, job_id: str, *, rejected: int) -> None:
        """Every batch is enqueued: from now on the job can finish."""
        await self.client.hincrby(self.key(job_id, "counters"), "rejected", rejected)
        await self.client.hset(self.key(job_id, "meta"), "submitted", 1)
        # An empty job, or one whose batches all ended before this: finish it now.
        await self._end(keys=[*self._batch_keys(job_id, -1), *self._lease_keys(job_id)],
                        args=[-1, "", 0])

    # --- reading ----------------------------------------------------------------------------

    async def spec(self, job_id: str) -> dict[str, Any]:
        raw = await self.client.hget(self.key(job_id, "meta"), "spec")
        if raw is None:
            raise JobNotFound(f"no job {job_id!r}")
        return dict(orjson.loads(raw))

    async def status(self, job_id: str) -> JobStatus:
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(self.key(job_id, "meta"))
        pipe.hgetall(self.key(job_id, "counters"))
        pipe.hgetall(self.key(job_id, "workers"))
        pipe.hgetall(self.key(job_id, "live"))
        meta_raw, counters_raw, workers_raw, live_raw = await pipe.execute()
        if not meta_raw:
            raise JobNotFound(f"no job {job_id!r}")
        meta = {k.decode(): v.decode() for k, v in meta_raw.items()}
        c = {k.decode(): int(v) for k, v in counters_raw.items()}

        def opt_int(name: str) -> int | None:
            return int(meta[name]) if name in meta else None

        spec = orjson.loads(meta["spec"]) if "spec" in meta else {}
        inflight, hosts, by_worker = _live(live_raw, time.time() * 1000)
        return JobStatus(
            job_id=job_id, state=JobState(meta["state"]),
            total=c.get("total", 0), done=c.get("done", 0), ok=c.get("ok", 0),
            failed=c.get("failed", 0), cancelled=c.get("cancelled", 0),
            rejected=c.get("rejected", 0), duplicates=c.get("duplicates", 0),
            link_duplicates=c.get("link_duplicates", 0), over_limit=c.get("over_limit", 0),
            depth=int(spec.get("depth", 0)),
            bytes=c.get("bytes", 0),
            rate_10s=await self.store(job_id).recent_rate(_rate_window(opt_int("started"))),
            submitted=meta.get("submitted") == "1", batches=int(meta.get("batches", 0)),
            created=opt_int("created"), started=opt_int("started"), finished=opt_int("finished"),
            errors=fields_from_counters(c, "error"), statuses=fields_from_counters(c, "status"),
            workers={k.decode(): int(v) for k, v in workers_raw.items()},
            inflight=inflight, queued_hosts=hosts, worker_inflight=by_worker,
            spec=spec,
        )

    async def claim_finish_notice(self, job_id: str) -> bool:
        """True for exactly one caller per job: the one that sends its finish hooks."""
        return bool(await self.client.hsetnx(self.key(job_id, "meta"), "notified",
                                             int(time.time() * 1000)))

    async def report_live(self, job_id: str, worker: str, *, inflight: int,
                          hosts: dict[str, int]) -> None:
        """A worker's once-a-second report for live views (`crawler status --watch`)."""
        report = {"t": int(time.time() * 1000), "inflight": inflight, "hosts": hosts}
        await self._live(keys=[self.key(job_id, "live"), self.key(job_id, "meta")],
                         args=[worker, orjson.dumps(report), LIVE_TTL_MS])

    async def recent(self, limit: int = 20) -> list[JobStatus]:
        ids = await self.client.zrevrange(jobs_index(self.prefix), 0, limit - 1)
        out = []
        for raw in ids:
            try:
                out.append(await self.status(raw.decode()))
            except JobNotFound:  # its keys expired or were purged: the index entry goes too
                await self.client.zrem(jobs_index(self.prefix), raw)
                continue
        return out

    # --- control ----------------------------------------------------------------------------

    async def control(self, job_id: str, op: str) -> tuple[JobState, JobState, list[int]]:
        """pause / resume / cancel. Returns (state after, state before, batches to enqueue)."""
        parked: list[int] = []
        if op == "cancel":
            parked = [int(n) for n in await self.client.smembers(self.key(job_id, "parked"))]
        keys = [self.key(job_id, n) for n in ("meta", "parked", "counters")]
        keys += [self.key(job_id, f"batch:{n}") for n in parked]
        reply = await self._control(keys=keys, args=[op, *parked])
        after, before = reply[0].decode(), reply[1].decode()
        if after == "missing":
            raise JobNotFound(f"no job {job_id!r}")
        if op == "cancel" and await self.client.scard(self.key(job_id, "parked")):
            return await self.control(job_id, op)  # a batch parked meanwhile: clean it too
        return JobState(after), JobState(before or after), [int(n) for n in reply[2:]]

    # --- worker side ----------------------------------------------------------------------

    def _batch_keys(self, job_id: str, batch_no: int) -> list[str]:
        return [self.key(job_id, n) for n in ("meta", "parked", f"batch:{batch_no}", "counters")]

    def _lease_keys(self, job_id: str) -> list[str]:
        return [self.key(job_id, "leases"), self.key(job_id, "owners")]

    async def batch_start(
        self, job_id: str, batch_no: int, worker: str, *, token: str, lease_ms: int,
        recent_ms: int = 60_000, barrier: bool = False,
    ) -> tuple[str, int, int]:
        """May this worker run the batch? 'run' also gives it a lease of `lease_ms`. Returns
        (verdict, workers seen on the job within `recent_ms`, the batch's link depth)."""
        keys = [*self._batch_keys(job_id, batch_no), self.key(job_id, "workers"),
                *self._lease_keys(job_id), self.key(job_id, "depths"), self.key(job_id, "held")]
        verdict, live, depth = await self._start(
            keys=keys, args=[batch_no, worker, token, lease_ms, recent_ms, int(barrier)])
        return verdict.decode(), int(live), int(depth)

    async def delay_batch(self, job_id: str, batch_no: int, urls: list[str], depth: int,
                          delay: float) -> None:
        """Store URLs as a batch that may run only `delay` s from now (delay_batch.lua)."""
        await self._delay(
            keys=[self.key(job_id, f"batch:{batch_no}"), self.key(job_id, "depths"),
                  self.key(job_id, "delayed")],
            args=[batch_no, depth, max(int(delay * 1000), 0), *urls])

    async def promote_delayed(self, job_id: str, *, lease_ms: int, limit: int = 100
                              ) -> list[int]:
        """Delayed batches now due, given pending leases: the caller sends them."""
        due = await self._promote(
            keys=[self.key(job_id, "delayed"), *self._lease_keys(job_id)],
            args=[lease_ms, limit])
        return [int(n) for n in due]

    async def new_link_batch(self, job_id: str) -> int:
        """A batch number of its own for URLs a worker queues (never a submitted batch's)."""
        return LINK_BATCH_BASE + int(await self.client.hincrby(
            self.key(job_id, "meta"), "link_batches", 1))

    async def release_held(self, job_id: str, *, lease_ms: int) -> list[int]:
        """Batches held at the level barrier, given pending leases: the caller sends them."""
        held = await self._release(
            keys=[self.key(job_id, "held"), *self._lease_keys(job_id)], args=[lease_ms])
        return [int(n) for n in held]

    async def batch_urls(self, job_id: str, batch_no: int) -> list[str]:
        return [u.decode() for u in await self.client.lrange(
            self.key(job_id, f"batch:{batch_no}"), 0, -1)]

    async def batch_end(
        self, job_id: str, batch_no: int, leftover: list[str], *, token: str, lease_ms: int
    ) -> str:
        """Hand back a batch: 'done', 'parked', 'cancelled', 'requeue' (send it again) or
        'lost' (the lease was reaped: another worker owns the batch now)."""
        reply = await self._end(keys=[*self._batch_keys(job_id, batch_no),
                                      *self._lease_keys(job_id)],
                                args=[batch_no, token, lease_ms, *leftover])
        return str(reply.decode())

    async def current_states(self, job_ids: list[str]) -> dict[str, str | None]:
        pipe = self.client.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hget(self.key(job_id, "meta"), "state")
        states = await pipe.execute()
        return {j: s.decode() if s else None for j, s in zip(job_ids, states, strict=True)}
